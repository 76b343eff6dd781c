"""HTTP face of the local control plane: the Litestar app serving `_routes` under `/api/v2`,
with bearer-token checks, fault injection and Neon-shaped `{code, message, request_id}` errors
(never a bare 500 for bad input)."""

from __future__ import annotations

import asyncio
import hmac
import random
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import structlog
from litestar import Litestar, Request, Response, Router
from litestar.exceptions import HTTPException
from psycopg_pool import PoolTimeout
from pydantic import ValidationError

from agentdb.pg import ServerInfo, open_server
from agentdb.settings import Settings

from . import _tls as tls
from ._addon_routes import NEON_ROUTES
from ._auth_service import AUTH_SERVICE
from ._data_api_service import DATA_API
from ._errors import LocalPlaneError
from ._faults import Faults, KillSwitch
from ._governance import Limits
from ._plane import LocalPlane, ProxyOptions
from ._routes import ROUTES
from ._tls import TlsFiles

JSON = dict[str, Any]
AnyRequest = Request[Any, Any, Any]
log = structlog.get_logger(__name__)

_MESSAGES = {
    401: ("UNAUTHORIZED", "authentication required: send 'Authorization: Bearer <api key>'"),
    423: (
        "LOCKED",
        "project already has running conflicting operations, scheduling of new ones is prohibited",
    ),
    429: ("RATE_LIMITED", "too many requests"),
    500: ("INTERNAL_ERROR", "internal error (injected by AGENTDB_LOCALPLANE_FAULTS)"),
    503: ("SERVICE_UNAVAILABLE", "service unavailable (injected by AGENTDB_LOCALPLANE_FAULTS)"),
}


def _request_id(request: AnyRequest) -> str:
    state = request.scope.setdefault("state", {})
    return str(state.setdefault("request_id", request.headers.get("x-request-id") or uuid.uuid4()))


def _error(request: AnyRequest, status: int, code: str, message: str) -> Response[JSON]:
    rid = _request_id(request)
    return Response(
        {"code": code, "message": message, "request_id": rid},
        status_code=status,
        headers={"X-Request-ID": rid},
    )


# --- cross-cutting: auth, faults, errors ------------------------------------------------------


def _gatekeeper(settings: Settings) -> Callable[[AnyRequest], Any]:
    faults = Faults.parse(settings.localplane_faults)
    api_key = (
        settings.localplane_api_key.get_secret_value() if settings.localplane_api_key else None
    )
    rng = random.Random()  # noqa: S311 - fault injection, not security

    async def before_request(request: AnyRequest) -> Response[JSON] | None:
        _request_id(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(request, 401, *_MESSAGES[401])
        if api_key is not None and not hmac.compare_digest(token.strip(), api_key):
            return _error(request, 401, "UNAUTHORIZED", "the API key is not valid")
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        status = faults.pick(request.method, rng)
        if status is not None:
            return _error(request, status, *_MESSAGES[status])
        return None

    return before_request


def _on_plane_error(request: AnyRequest, exc: LocalPlaneError) -> Response[JSON]:
    return _error(request, exc.status, exc.code, exc.message)


def _on_validation_error(request: AnyRequest, exc: ValidationError) -> Response[JSON]:
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(part) for part in err["loc"]) or "body"
        problems.append(f"{where}: {err['msg']}")
    return _error(request, 400, "BAD_REQUEST", "; ".join(problems))


def _on_http_error(request: AnyRequest, exc: HTTPException) -> Response[JSON]:
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "BAD_REQUEST")
    message = f"no such path: {request.url.path}" if code == "NOT_FOUND" else exc.detail
    return _error(request, exc.status_code, code, message)


def _on_server_lost(request: AnyRequest, exc: Exception) -> Response[JSON]:
    """PostgreSQL went away under the request (a restart, a crash): a transient outage, not a
    bug, so no traceback. A read answers 503, which Neon's clients retry; a change may have
    been committed as the connection broke, so it answers 500 (Neon's "may have run")."""
    log.warning("localplane.server_lost", path=request.url.path, error=type(exc).__name__)
    if request.method in {"GET", "HEAD"}:
        return _error(request, 503, "SERVICE_UNAVAILABLE", "PostgreSQL is unavailable; retry")
    return _error(request, 500, "INTERNAL_ERROR", "PostgreSQL went away during the request")


def _on_unexpected(request: AnyRequest, exc: Exception) -> Response[JSON]:
    log.error("localplane.unhandled", path=request.url.path, error=type(exc).__name__, exc_info=exc)
    return _error(request, 500, "INTERNAL_ERROR", "internal error in the local control plane")


#: Where the app serves the add-ons it turns on (Neon Auth, the Data API): outside `/api/v2`,
#: without the API key. `agentdb serve` forwards these to the in-process plane.
ADDON_PATHS = ("/neon-auth/", "/data-api/")


def create_app(
    settings: Settings | None = None,
    *,
    server: ServerInfo | None = None,
    organizations: Sequence[str] = (),
) -> Litestar:
    """The local control plane as an ASGI app. Without `server` it starts (or attaches to) the
    PostgreSQL that `settings` describe, in the app's lifespan. The plane starts with its
    default organization, `organizations` and `settings.localplane_organizations`."""
    settings = settings or Settings()
    org_ids = [
        *organizations,
        *(o for o in settings.localplane_organizations.split(",") if o),
    ]
    Faults.parse(settings.localplane_faults)  # fail at construction, not on the first request
    KillSwitch(settings.localplane_kill_at)
    limits = Limits(
        role_connections=settings.localplane_role_connection_limit,
        temp_file_limit_mb=settings.localplane_temp_file_limit_mb,
        statement_max_s=settings.localplane_statement_max_s,
        idle_in_transaction_s=settings.localplane_idle_in_transaction_s,
        guard_interval_s=settings.localplane_guard_interval_s,
        size_watch_interval_s=settings.localplane_size_watch_interval_s,
        min_free_disk_mb=settings.localplane_min_free_disk_mb,
        backend_memory_max_mb=settings.localplane_backend_memory_max_mb,
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with (
            _server_for(settings, server) as info,
            LocalPlane.open(
                info,
                operation_delay_s=settings.localplane_operation_delay_ms / 1000,
                organizations=org_ids,
                meter_interval_s=settings.localplane_meter_interval_s,
                limits=limits,
                kill_at=settings.localplane_kill_at,
                proxy=ProxyOptions(
                    host=settings.localplane_proxy_host,
                    port=settings.localplane_proxy_port,
                    tls_dir=settings.data_dir / "tls",
                )
                if settings.localplane_proxy
                else None,
            ) as plane,
        ):
            app.state.plane = plane
            app.state.server = info
            app.state.public_url = settings.public_url
            yield

    api = Router(
        path="/api/v2",
        route_handlers=[*ROUTES, *NEON_ROUTES],
        before_request=_gatekeeper(settings),
    )
    return Litestar(
        route_handlers=[api, AUTH_SERVICE, DATA_API],
        lifespan=[lifespan],
        exception_handlers={
            LocalPlaneError: _on_plane_error,
            ValidationError: _on_validation_error,
            HTTPException: _on_http_error,
            psycopg.OperationalError: _on_server_lost,
            PoolTimeout: _on_server_lost,
            Exception: _on_unexpected,
        },
        openapi_config=None,
        # Litestar's default would replace the redacting root handler (agentdb._logging) with
        # its own, so uvicorn's and the libraries' lines would go out unredacted.
        logging_config=None,
        debug=False,
    )


def tls_files(settings: Settings) -> TlsFiles:
    """The connection proxy's CA and certificate under the data directory, made on first use."""
    return tls.ensure(settings.data_dir / "tls", [settings.localplane_proxy_host])


@asynccontextmanager
async def _server_for(settings: Settings, server: ServerInfo | None) -> AsyncIterator[ServerInfo]:
    if server is not None:
        yield server
        return
    async with open_server(settings) as info:
        yield info
