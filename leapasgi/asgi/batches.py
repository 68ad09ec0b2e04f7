"""``/v1/batches``: create, retrieve, list and cancel batches, and the wiring of ``[batches]``:
the store, the executor answering lines through the gateway's dispatcher, the runner (a
service of the gateway) and the routes, Files API included. Each batch is its creator's
(``owner_of``): anyone else gets a 404."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..access import owner_of
from ..batches import (
    BatchRecord,
    BatchRunner,
    BatchStore,
    DispatchExecutor,
    SqliteBatchStore,
    TenantOf,
    TenantRecord,
)
from ..batches.native import NativeExecutor, SettingsOf
from ..batches.objects import COMPLETION_WINDOW, ENDPOINTS, WINDOW_SECONDS, batch_id
from ..config import BatchesConfig, PolicyConfig
from ..exceptions import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    LeapError,
    NotFoundError,
    RateLimitError,
)
from ..providers.compatible import OpenAICompatibleProvider
from ..providers.settings import ProviderSettings
from ..tenants.identity import tenant_of_scope
from ..tenants.policy import ANONYMOUS, Tenant
from ._http import read_body
from .batch_lines import line_handlers
from .files import FilesAPI, expiry_seconds, list_page, page_limit
from .routes import error_response

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = ["BatchesAPI", "batch_routes", "batch_store", "batch_tenants"]

# A batch create body is small: ids, a window, metadata.
_MAX_CREATE_BODY = 64 * 1024
_CREATE_FIELDS = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)
MAX_METADATA = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_BATCH_LIST = 100
# The gateway notes how it ran a batch in its metadata under keys with this prefix.
RESERVED_METADATA = "leapasgi_"


def batch_routes(gateway: GatewayCore) -> list[Route]:
    """The Files and Batch API routes, with their runner started and stopped with
    ``gateway``."""
    config = gateway.config.batches
    executor = DispatchExecutor(
        line_handlers(gateway),
        sink=gateway.recorder,
        concurrency=config.concurrency,
        max_delay=config.retry_max_delay,
    )
    manager = gateway.manager
    native = NativeExecutor(
        executor,
        enabled=config.native,
        routes=manager.routes,
        registry=manager.registry,
        prices=gateway.tenancy.prices,
        settings_of=_settings_of(gateway),
        account=gateway.tenancy.answered_elsewhere,
        sink=gateway.recorder,
        clock=manager.registry.clock,
    )
    gateway.add_service(native)  # closed after the runner, which stops first
    runner = BatchRunner(
        batch_store(gateway),
        [native, executor],
        tenant_of=batch_tenants(gateway),
        clock=gateway.manager.registry.clock,
        file_ttl=config.file_ttl,
        poll_interval=config.poll_interval,
        max_line_bytes=config.max_line_bytes,
        max_running=config.max_running,
    )
    gateway.add_service(runner)
    files = FilesAPI(gateway, runner, config)
    batches = BatchesAPI(gateway, runner, config)
    return [
        Route("/v1/files", files.files, methods=["GET", "POST"]),
        Route("/v1/files/{file_id}", files.file, methods=["GET", "DELETE"]),
        Route("/v1/files/{file_id}/content", files.content, methods=["GET"]),
        Route("/v1/batches", batches.batches, methods=["GET", "POST"]),
        Route("/v1/batches/{batch_id}", batches.retrieve, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", batches.cancel, methods=["POST"]),
    ]


def _settings_of(gateway: GatewayCore) -> SettingsOf:
    registry = gateway.manager.registry

    def settings_of(name: str) -> ProviderSettings | None:
        provider = registry.get(name).provider
        return provider.settings if isinstance(provider, OpenAICompatibleProvider) else None

    return settings_of


def batch_store(gateway: GatewayCore) -> BatchStore:
    """Where batches are kept: with the Redis state backend, in Redis (records) and the shared
    ``[batches] directory`` (bytes); else in the directory's SQLite file."""
    config = gateway.config.batches
    state = gateway.state
    if state.kind != "redis":
        return SqliteBatchStore(config.directory)
    from ..batches.redis import OP_TIMEOUT, RedisBatchStore
    from ..state.redis import RedisState

    assert isinstance(state, RedisState)
    if config.directory is None:
        raise ConfigurationError(
            "batches.directory: with the Redis state backend, set it to a mount every "
            "replica shares (the files' bytes live there)"
        )
    timeout = max(state.link.op_timeout, OP_TIMEOUT)
    client = state.connect(timeout=timeout)
    return RedisBatchStore(client, state.prefix, config.directory, op_timeout=timeout)


def batch_tenants(gateway: GatewayCore) -> TenantOf:
    """A batch's tenant as it may call now: a virtual key's current policy (refused once the
    key was revoked or expired), else the policy kept with the batch."""
    keys = gateway.tenancy.keys
    clock = gateway.manager.registry.clock

    async def tenant_of(record: TenantRecord) -> Tenant:
        if record.source == "virtual_key" and record.key_id is not None:
            key = await keys.get(record.key_id)
            if key is None or key.revoked_at is not None:
                raise AuthenticationError(
                    "The API key this batch was created with was revoked", code="key_revoked"
                )
            if not key.active(clock.time()):
                raise AuthenticationError(
                    "The API key this batch was created with has expired", code="key_expired"
                )
            return Tenant(
                key.tenant,
                key.policy,
                source="virtual_key",
                key_id=key.id,
                tags=key.tags,
                metadata=key.metadata,
            )
        policy = PolicyConfig.model_validate(record.policy).build()
        return Tenant(record.id, policy, source=record.source, tags=record.tags)

    return tenant_of


def _metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) > MAX_METADATA:
        raise InvalidRequestError(
            f"metadata must be an object of at most {MAX_METADATA} pairs", param="metadata"
        )
    for key, item in value.items():
        if not isinstance(key, str) or len(key) > MAX_METADATA_KEY:
            raise InvalidRequestError(
                f"metadata keys are strings of at most {MAX_METADATA_KEY} characters",
                param="metadata",
            )
        if key.startswith(RESERVED_METADATA):
            raise InvalidRequestError(
                f"metadata keys starting with {RESERVED_METADATA!r} are the gateway's own",
                param="metadata",
            )
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE:
            raise InvalidRequestError(
                f"metadata values are strings of at most {MAX_METADATA_VALUE} characters",
                param="metadata",
            )
    return dict(value)


def _output_ttl(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or value.get("anchor") != "created_at":
        raise InvalidRequestError(
            "output_expires_after: {'anchor': 'created_at', 'seconds': ...}",
            param="output_expires_after",
        )
    return expiry_seconds(value.get("seconds"), "output_expires_after.seconds")


def _missing(wanted: str) -> NotFoundError:
    shown = wanted if len(wanted) <= 64 and wanted.isprintable() else "..."
    return NotFoundError(f"No batch found with id '{shown}'.", param="batch_id")


class BatchesAPI:
    """The Batch API of one gateway."""

    def __init__(self, gateway: GatewayCore, runner: BatchRunner, config: BatchesConfig) -> None:
        self._gateway = gateway
        self._runner = runner
        self._store = runner.store
        self._config = config

    async def _owner(self, request: Request) -> str | None:
        refused = await self._gateway.refusal(request.scope)
        if refused is not None:
            raise refused
        await self._runner.start()
        return owner_of(request.scope)

    async def batches(self, request: Request) -> Response:
        """``POST`` (create) or ``GET`` (list) ``/v1/batches``."""
        try:
            owner = await self._owner(request)
            if request.method == "POST":
                return await self._create(request, owner)
            return await self._list(request, owner)
        except LeapError as error:
            return error_response(error)

    async def retrieve(self, request: Request) -> Response:
        """``GET /v1/batches/{batch_id}``."""
        try:
            owner = await self._owner(request)
            wanted = request.path_params["batch_id"]
            batch = await self._store.get_batch(wanted, owner=owner)
            if batch is None:
                raise _missing(wanted)
        except LeapError as error:
            return error_response(error)
        return JSONResponse(batch.to_json())

    async def cancel(self, request: Request) -> Response:
        """``POST /v1/batches/{batch_id}/cancel``."""
        try:
            owner = await self._owner(request)
            wanted = request.path_params["batch_id"]
            batch = await self._runner.cancel(wanted, owner=owner)
            if batch is None:
                raise _missing(wanted)
        except LeapError as error:
            return error_response(error)
        return JSONResponse(batch.to_json())

    async def _create(self, request: Request, owner: str | None) -> Response:
        raw = await read_body(request.receive, request.scope, _MAX_CREATE_BODY)
        try:
            body = json.loads(raw)
        except ValueError:
            raise InvalidRequestError(
                "The request body is not valid JSON", code="invalid_json"
            ) from None
        if not isinstance(body, dict):
            raise InvalidRequestError("The request body must be a JSON object")
        unknown = sorted(set(body) - _CREATE_FIELDS)
        if unknown:
            raise InvalidRequestError(
                f"Unknown parameter: {unknown[0][:64]!r}", param=unknown[0][:64]
            )
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise InvalidRequestError(
                f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint"
            )
        if body.get("completion_window") != COMPLETION_WINDOW:
            raise InvalidRequestError(
                f"completion_window must be '{COMPLETION_WINDOW}'", param="completion_window"
            )
        metadata = _metadata(body.get("metadata"))
        output_ttl = _output_ttl(body.get("output_expires_after"))
        wanted = body.get("input_file_id")
        if not isinstance(wanted, str) or not wanted:
            raise InvalidRequestError("input_file_id must be a file id", param="input_file_id")
        now = self._runner.now()
        file = await self._store.get_file(wanted, owner=owner)
        if file is None or (file.expires_at is not None and file.expires_at <= now):
            shown = wanted if len(wanted) <= 64 and wanted.isprintable() else "..."
            raise NotFoundError(
                f"No such File object: {shown}", param="input_file_id", code="file_not_found"
            )
        if file.purpose != "batch":
            raise InvalidRequestError(
                "The input file must be uploaded with purpose 'batch'", param="input_file_id"
            )
        most = self._config.max_active_per_tenant
        if await self._store.active(owner) >= most:
            raise RateLimitError(
                f"At most {most} batches may be unfinished at once; wait for one to end",
                code="too_many_batches",
                retry_after=60.0,
                retryable=False,
            )
        tenant = tenant_of_scope(request.scope) or ANONYMOUS
        batch = BatchRecord(
            id=batch_id(),
            owner=owner,
            tenant=TenantRecord(
                tenant.id, tenant.source, tenant.key_id, tenant.policy.to_json(), tenant.tags
            ),
            endpoint=endpoint,
            input_file_id=file.id,
            created_at=now,
            expires_at=now + WINDOW_SECONDS,
            total=file.lines,
            metadata=metadata,
            output_ttl=output_ttl,
        )
        await self._runner.submit(batch)
        return JSONResponse(batch.to_json())

    async def _list(self, request: Request, owner: str | None) -> Response:
        query = request.query_params
        limit = page_limit(query.get("limit"), default=20, most=MAX_BATCH_LIST)
        records = await self._store.list_batches(
            owner=owner, after=query.get("after"), limit=limit + 1
        )
        page: dict[str, Any] = list_page([r.to_json() for r in records], limit)
        return JSONResponse(page)
