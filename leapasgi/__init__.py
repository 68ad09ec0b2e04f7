"""leapasgi: one OpenAI-compatible front door to many LLM providers.

Public names are imported on first use, so ``import leapasgi`` stays cheap; everything below
is also importable from its own module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .accumulate import (
        ChatCompletionAccumulator,
        collect,
    )
    from .asgi import (
        LeapMiddleware,
    )
    from .balancing import (
        Strategy,
    )
    from .clock import (
        Clock,
        FakeClock,
        SystemClock,
    )
    from .config import (
        AliasConfig,
        GatewayConfig,
        HealthConfig,
        ProviderConfig,
        RoutingConfig,
        load_config,
        parse_config,
    )
    from .exceptions import (
        AuthenticationError,
        ConfigurationError,
        ConflictError,
        ConnectRefusedError,
        ConnectResetError,
        ConnectTimeoutError,
        DeadlineExceededError,
        FirstByteTimeoutError,
        IdleTimeoutError,
        InvalidRequestError,
        LeapError,
        LeapTimeoutError,
        MalformedResponseError,
        MalformedStreamError,
        ModelNotFoundError,
        NameResolutionError,
        NoProviderAvailableError,
        NotFoundError,
        PermissionDeniedError,
        ProviderBusyError,
        RateLimitError,
        RequestTooLargeError,
        StreamError,
        StreamInterruptedError,
        UnprocessableEntityError,
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
        Gateway,
    )
    from .health import (
        BreakerPolicy,
    )
    from .manager import (
        HealthResult,
        ManagedStream,
        ProviderManager,
    )
    from .providers import (
        PRESETS,
        Fault,
        MockProvider,
        OpenAICompatibleProvider,
        Preset,
        Provider,
        ProviderSettings,
        Timeouts,
        get_preset,
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
    "AliasConfig",
    "Attempt",
    "AuthenticationError",
    "BreakerPolicy",
    "ChatCompletion",
    "ChatCompletionAccumulator",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "Clock",
    "ConfigurationError",
    "ConflictError",
    "ConnectRefusedError",
    "ConnectResetError",
    "ConnectTimeoutError",
    "DeadlineExceededError",
    "FakeClock",
    "Fault",
    "Feature",
    "FirstByteTimeoutError",
    "Gateway",
    "GatewayConfig",
    "HealthConfig",
    "HealthResult",
    "IdleTimeoutError",
    "InvalidRequestError",
    "LeapError",
    "LeapMiddleware",
    "LeapTimeoutError",
    "MalformedResponseError",
    "MalformedStreamError",
    "ManagedStream",
    "MockProvider",
    "Model",
    "ModelList",
    "ModelNotFoundError",
    "NameResolutionError",
    "NoProviderAvailableError",
    "NotFoundError",
    "OpenAICompatibleProvider",
    "PermissionDeniedError",
    "Preset",
    "Provider",
    "ProviderBusyError",
    "ProviderConfig",
    "ProviderManager",
    "ProviderSettings",
    "ProviderSnapshot",
    "ProviderStatus",
    "RateLimitError",
    "Registry",
    "RequestTooLargeError",
    "RetryPolicy",
    "RouteSettings",
    "RoutingConfig",
    "RoutingTrail",
    "Strategy",
    "StreamError",
    "StreamInterruptedError",
    "SystemClock",
    "Timeouts",
    "UnprocessableEntityError",
    "UpstreamConnectionError",
    "UpstreamStreamError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "Usage",
    "__version__",
    "collect",
    "get_preset",
    "load_config",
    "parse_chat_request",
    "parse_config",
    "required_features",
]

_EXPORTS: dict[str, str] = {
    "AliasConfig": ".config",
    "Attempt": ".trail",
    "AuthenticationError": ".exceptions",
    "BreakerPolicy": ".health",
    "ChatCompletion": ".types",
    "ChatCompletionAccumulator": ".accumulate",
    "ChatCompletionChunk": ".types",
    "ChatCompletionRequest": ".types",
    "Clock": ".clock",
    "ConfigurationError": ".exceptions",
    "ConflictError": ".exceptions",
    "ConnectRefusedError": ".exceptions",
    "ConnectResetError": ".exceptions",
    "ConnectTimeoutError": ".exceptions",
    "DeadlineExceededError": ".exceptions",
    "FakeClock": ".clock",
    "Fault": ".providers",
    "Feature": ".features",
    "FirstByteTimeoutError": ".exceptions",
    "Gateway": ".gateway",
    "GatewayConfig": ".config",
    "HealthConfig": ".config",
    "HealthResult": ".manager",
    "IdleTimeoutError": ".exceptions",
    "InvalidRequestError": ".exceptions",
    "LeapError": ".exceptions",
    "LeapMiddleware": ".asgi",
    "LeapTimeoutError": ".exceptions",
    "MalformedResponseError": ".exceptions",
    "MalformedStreamError": ".exceptions",
    "ManagedStream": ".manager",
    "MockProvider": ".providers",
    "Model": ".types",
    "ModelList": ".types",
    "ModelNotFoundError": ".exceptions",
    "NameResolutionError": ".exceptions",
    "NoProviderAvailableError": ".exceptions",
    "ProviderBusyError": ".exceptions",
    "NotFoundError": ".exceptions",
    "OpenAICompatibleProvider": ".providers",
    "PRESETS": ".providers",
    "PermissionDeniedError": ".exceptions",
    "Preset": ".providers",
    "Provider": ".providers",
    "ProviderConfig": ".config",
    "ProviderManager": ".manager",
    "ProviderSettings": ".providers",
    "ProviderSnapshot": ".registry",
    "ProviderStatus": ".registry",
    "RateLimitError": ".exceptions",
    "Registry": ".registry",
    "RequestTooLargeError": ".exceptions",
    "RetryPolicy": ".retry",
    "RouteSettings": ".registry",
    "RoutingConfig": ".config",
    "RoutingTrail": ".trail",
    "Strategy": ".balancing",
    "StreamError": ".exceptions",
    "StreamInterruptedError": ".exceptions",
    "SystemClock": ".clock",
    "Timeouts": ".providers",
    "UnprocessableEntityError": ".exceptions",
    "UpstreamConnectionError": ".exceptions",
    "UpstreamStreamError": ".exceptions",
    "UpstreamTimeoutError": ".exceptions",
    "UpstreamUnavailableError": ".exceptions",
    "Usage": ".types",
    "collect": ".accumulate",
    "get_preset": ".providers",
    "load_config": ".config",
    "parse_chat_request": ".types",
    "parse_config": ".config",
    "required_features": ".features",
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
