"""leapasgi: one OpenAI-compatible front door to many LLM providers.

Public names are imported on first use, so ``import leapasgi`` stays cheap; everything below
is also importable from its own module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ._logging import (
        ContentGuard,
        guard_handlers,
    )
    from .access import (
        AccessPolicy,
        Role,
    )
    from .accumulate import (
        ChatCompletionAccumulator,
        collect,
    )
    from .asgi import (
        Gateway,
        LeapMiddleware,
    )
    from .balancing import (
        Strategy,
    )
    from .cache import (
        ResponseCache,
    )
    from .clock import (
        Clock,
        FakeClock,
        SystemClock,
        sleep_until,
    )
    from .config import (
        AliasConfig,
        BatchesConfig,
        BudgetConfig,
        CacheConfig,
        ConnectionLimits,
        GatewayConfig,
        HealthConfig,
        HookConfig,
        OAuthConfig,
        PolicyConfig,
        PriceConfig,
        ProviderConfig,
        RateLimitConfig,
        ResponsesConfig,
        RoutingConfig,
        StateConfig,
        TenantsConfig,
        load_config,
        parse_config,
    )
    from .conversations import (
        MemoryResponseStore,
        ResponseStore,
        StoredResponse,
    )
    from .deadline import (
        Deadline,
    )
    from .exceptions import (
        AuthenticationError,
        BudgetExceededError,
        ConfigurationError,
        ConflictError,
        ConnectRefusedError,
        ConnectResetError,
        ConnectTimeoutError,
        DeadlineExceededError,
        FirstByteTimeoutError,
        HookError,
        IdleTimeoutError,
        InvalidRequestError,
        LeapError,
        LeapTimeoutError,
        MalformedResponseError,
        MalformedStreamError,
        MisdirectedRequestError,
        ModelNotFoundError,
        NameResolutionError,
        NoProviderAvailableError,
        NotFoundError,
        PermissionDeniedError,
        ProviderBusyError,
        RateLimitError,
        RequestTooLargeError,
        ResponseTooLargeError,
        StoreUnavailableError,
        StreamError,
        StreamInterruptedError,
        UnprocessableEntityError,
        UnsupportedFeatureError,
        UnsupportedParameterError,
        UpstreamConnectionError,
        UpstreamStreamError,
        UpstreamTimeoutError,
        UpstreamUnavailableError,
    )
    from .features import (
        Feature,
        required_features,
    )
    from .gateway import (
        GatewayCore,
    )
    from .health import (
        BreakerPolicy,
    )
    from .hooks import (
        Hook,
        HookContext,
        ModelPolicy,
        PiiRedactor,
    )
    from .managed_stream import (
        ManagedStream,
    )
    from .manager import (
        HealthResult,
        ProviderManager,
    )
    from .native import (
        EventBatch,
        NativeCall,
        NativeEvent,
        NativeReply,
        ProtocolRequest,
    )
    from .outcome import (
        Outcome,
    )
    from .params import (
        ParamPolicy,
        ParamRules,
    )
    from .providers import (
        PRESETS,
        Capabilities,
        Fault,
        MockProvider,
        NativeProvider,
        OpenAICompatibleProvider,
        Preset,
        Provider,
        ProviderSettings,
        Retrying,
        Timeouts,
        WireProtocol,
        get_preset,
    )
    from .redact import (
        Redactor,
    )
    from .registry import (
        ProviderSnapshot,
        ProviderStatus,
        Registry,
        RouteSettings,
    )
    from .retry import (
        RetryPolicy,
    )
    from .server import (
        GuardedHttpToolsProtocol,
        run_server,
    )
    from .state import (
        MemoryState,
        StateBackend,
        StateStatus,
    )
    from .state.redis import (
        RedisState,
    )
    from .stats import (
        Quantiles,
    )
    from .streaming import (
        ChunkBatch,
        batches_of,
        chunks_of,
    )
    from .tenants.base import (
        VirtualKey,
    )
    from .tenants.identity import (
        Authenticate,
        tenant_of_scope,
    )
    from .tenants.policy import (
        Budget,
        Period,
        Tenant,
        TenantPolicy,
    )
    from .tenants.tenancy import (
        Tenancy,
    )
    from .trail import (
        Attempt,
        RoutingTrail,
    )
    from .types import (
        ChatCompletion,
        ChatCompletionChunk,
        ChatCompletionRequest,
        Model,
        ModelList,
        Usage,
        parse_chat_request,
    )

__all__ = [
    "PRESETS",
    "AccessPolicy",
    "AliasConfig",
    "Attempt",
    "Authenticate",
    "AuthenticationError",
    "BatchesConfig",
    "BreakerPolicy",
    "Budget",
    "BudgetConfig",
    "BudgetExceededError",
    "CacheConfig",
    "Capabilities",
    "ChatCompletion",
    "ChatCompletionAccumulator",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChunkBatch",
    "Clock",
    "ConfigurationError",
    "ConflictError",
    "ConnectRefusedError",
    "ConnectResetError",
    "ConnectTimeoutError",
    "ConnectionLimits",
    "ContentGuard",
    "Deadline",
    "DeadlineExceededError",
    "EventBatch",
    "FakeClock",
    "Fault",
    "Feature",
    "FirstByteTimeoutError",
    "Gateway",
    "GatewayConfig",
    "GatewayCore",
    "GuardedHttpToolsProtocol",
    "HealthConfig",
    "HealthResult",
    "Hook",
    "HookConfig",
    "HookContext",
    "HookError",
    "IdleTimeoutError",
    "InvalidRequestError",
    "LeapError",
    "LeapMiddleware",
    "LeapTimeoutError",
    "MalformedResponseError",
    "MalformedStreamError",
    "ManagedStream",
    "MemoryResponseStore",
    "MemoryState",
    "MisdirectedRequestError",
    "MockProvider",
    "Model",
    "ModelList",
    "ModelNotFoundError",
    "ModelPolicy",
    "NameResolutionError",
    "NativeCall",
    "NativeEvent",
    "NativeProvider",
    "NativeReply",
    "NoProviderAvailableError",
    "NotFoundError",
    "OAuthConfig",
    "OpenAICompatibleProvider",
    "Outcome",
    "ParamPolicy",
    "ParamRules",
    "Period",
    "PermissionDeniedError",
    "PiiRedactor",
    "PolicyConfig",
    "Preset",
    "PriceConfig",
    "ProtocolRequest",
    "Provider",
    "ProviderBusyError",
    "ProviderConfig",
    "ProviderManager",
    "ProviderSettings",
    "ProviderSnapshot",
    "ProviderStatus",
    "Quantiles",
    "RateLimitConfig",
    "RateLimitError",
    "Redactor",
    "RedisState",
    "Registry",
    "RequestTooLargeError",
    "ResponseCache",
    "ResponseStore",
    "ResponseTooLargeError",
    "ResponsesConfig",
    "RetryPolicy",
    "Retrying",
    "Role",
    "RouteSettings",
    "RoutingConfig",
    "RoutingTrail",
    "StateBackend",
    "StateConfig",
    "StateStatus",
    "StoreUnavailableError",
    "StoredResponse",
    "Strategy",
    "StreamError",
    "StreamInterruptedError",
    "SystemClock",
    "Tenancy",
    "Tenant",
    "TenantPolicy",
    "TenantsConfig",
    "Timeouts",
    "UnprocessableEntityError",
    "UnsupportedFeatureError",
    "UnsupportedParameterError",
    "UpstreamConnectionError",
    "UpstreamStreamError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "Usage",
    "VirtualKey",
    "WireProtocol",
    "__version__",
    "batches_of",
    "chunks_of",
    "collect",
    "get_preset",
    "guard_handlers",
    "load_config",
    "parse_chat_request",
    "parse_config",
    "required_features",
    "run_server",
    "sleep_until",
    "tenant_of_scope",
]

_EXPORTS: dict[str, str] = {
    "AccessPolicy": ".access",
    "AliasConfig": ".config",
    "BatchesConfig": ".config",
    "Attempt": ".trail",
    "Authenticate": ".tenants.identity",
    "AuthenticationError": ".exceptions",
    "BreakerPolicy": ".health",
    "Budget": ".tenants.policy",
    "BudgetConfig": ".config",
    "BudgetExceededError": ".exceptions",
    "CacheConfig": ".config",
    "Capabilities": ".providers",
    "ChatCompletion": ".types",
    "ChatCompletionAccumulator": ".accumulate",
    "ChatCompletionChunk": ".types",
    "ChatCompletionRequest": ".types",
    "ChunkBatch": ".streaming",
    "Clock": ".clock",
    "ConfigurationError": ".exceptions",
    "ConflictError": ".exceptions",
    "ConnectRefusedError": ".exceptions",
    "ConnectResetError": ".exceptions",
    "ConnectTimeoutError": ".exceptions",
    "ConnectionLimits": ".config",
    "ContentGuard": "._logging",
    "Deadline": ".deadline",
    "DeadlineExceededError": ".exceptions",
    "EventBatch": ".native",
    "FakeClock": ".clock",
    "Fault": ".providers",
    "Feature": ".features",
    "FirstByteTimeoutError": ".exceptions",
    "Gateway": ".asgi",
    "GatewayConfig": ".config",
    "GatewayCore": ".gateway",
    "GuardedHttpToolsProtocol": ".server",
    "HealthConfig": ".config",
    "HealthResult": ".manager",
    "Hook": ".hooks",
    "HookConfig": ".config",
    "HookContext": ".hooks",
    "HookError": ".exceptions",
    "IdleTimeoutError": ".exceptions",
    "InvalidRequestError": ".exceptions",
    "LeapError": ".exceptions",
    "LeapMiddleware": ".asgi",
    "LeapTimeoutError": ".exceptions",
    "MalformedResponseError": ".exceptions",
    "MalformedStreamError": ".exceptions",
    "ManagedStream": ".managed_stream",
    "MemoryResponseStore": ".conversations",
    "MemoryState": ".state",
    "MisdirectedRequestError": ".exceptions",
    "MockProvider": ".providers",
    "Model": ".types",
    "ModelList": ".types",
    "ModelNotFoundError": ".exceptions",
    "ModelPolicy": ".hooks",
    "NameResolutionError": ".exceptions",
    "NativeCall": ".native",
    "NativeEvent": ".native",
    "NativeProvider": ".providers",
    "NativeReply": ".native",
    "NoProviderAvailableError": ".exceptions",
    "NotFoundError": ".exceptions",
    "OAuthConfig": ".config",
    "OpenAICompatibleProvider": ".providers",
    "Outcome": ".outcome",
    "PRESETS": ".providers",
    "ParamPolicy": ".params",
    "ParamRules": ".params",
    "Period": ".tenants.policy",
    "PermissionDeniedError": ".exceptions",
    "PiiRedactor": ".hooks",
    "PolicyConfig": ".config",
    "Preset": ".providers",
    "PriceConfig": ".config",
    "ProtocolRequest": ".native",
    "Provider": ".providers",
    "ProviderBusyError": ".exceptions",
    "ProviderConfig": ".config",
    "ProviderManager": ".manager",
    "ProviderSettings": ".providers",
    "ProviderSnapshot": ".registry",
    "ProviderStatus": ".registry",
    "Quantiles": ".stats",
    "RateLimitConfig": ".config",
    "RateLimitError": ".exceptions",
    "Redactor": ".redact",
    "RedisState": ".state.redis",
    "Registry": ".registry",
    "RequestTooLargeError": ".exceptions",
    "ResponseCache": ".cache",
    "ResponseStore": ".conversations",
    "ResponseTooLargeError": ".exceptions",
    "ResponsesConfig": ".config",
    "RetryPolicy": ".retry",
    "Retrying": ".providers",
    "Role": ".access",
    "RouteSettings": ".registry",
    "RoutingConfig": ".config",
    "RoutingTrail": ".trail",
    "StateBackend": ".state",
    "StateConfig": ".config",
    "StateStatus": ".state",
    "StoreUnavailableError": ".exceptions",
    "StoredResponse": ".conversations",
    "Strategy": ".balancing",
    "StreamError": ".exceptions",
    "StreamInterruptedError": ".exceptions",
    "SystemClock": ".clock",
    "Tenancy": ".tenants.tenancy",
    "Tenant": ".tenants.policy",
    "TenantPolicy": ".tenants.policy",
    "TenantsConfig": ".config",
    "Timeouts": ".providers",
    "UnprocessableEntityError": ".exceptions",
    "UnsupportedFeatureError": ".exceptions",
    "UnsupportedParameterError": ".exceptions",
    "UpstreamConnectionError": ".exceptions",
    "UpstreamStreamError": ".exceptions",
    "UpstreamTimeoutError": ".exceptions",
    "UpstreamUnavailableError": ".exceptions",
    "Usage": ".types",
    "VirtualKey": ".tenants.base",
    "WireProtocol": ".providers",
    "batches_of": ".streaming",
    "chunks_of": ".streaming",
    "collect": ".accumulate",
    "get_preset": ".providers",
    "guard_handlers": "._logging",
    "load_config": ".config",
    "parse_chat_request": ".types",
    "parse_config": ".config",
    "required_features": ".features",
    "run_server": ".server",
    "sleep_until": ".clock",
    "tenant_of_scope": ".tenants.identity",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'leapasgi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
