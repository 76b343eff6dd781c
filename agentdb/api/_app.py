"""The REST API as a Litestar app over a running `Runtime`."""

from __future__ import annotations

from importlib.metadata import version

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

from agentdb.runtime import Runtime
from agentdb.services import Principal

from ._auth import AuthMiddleware, AuthThrottle, RequestIdMiddleware, mode_guard
from ._deps import DEPENDENCIES
from ._idempotency import IdempotencyMiddleware
from ._limits import TokenLimits, TokenLimitsMiddleware
from ._metrics import ApiMetrics, MetricsMiddleware, metrics
from ._openapi import declare_problems
from ._problems import EXCEPTION_HANDLERS, ApiRequest
from ._routes import ROUTES


def create_app(runtime: Runtime, *, trusted: Principal | None = None) -> Litestar:
    """The `/v1` API with its OpenAPI document at `/schema`. The runtime's lifetime is the
    caller's: the app neither opens nor closes it.

    `trusted` is who a request without an `Authorization` header acts as: only for an app that
    is reached in-process and never served on a socket (the SDK's embedded mode)."""
    app = Litestar(
        route_handlers=[*ROUTES, metrics],
        dependencies=DEPENDENCIES,
        # A session token's mode (read_only, read_write, full) is checked on every route.
        guards=[mode_guard],
        # Outermost first: the request id covers everything, auth runs before the token's
        # limits and idempotency (both are per token).
        middleware=[
            MetricsMiddleware(),
            RequestIdMiddleware(),
            AuthMiddleware(),
            TokenLimitsMiddleware(),
            IdempotencyMiddleware(),
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        state=State(
            {
                "runtime": runtime,
                "trusted": trusted,
                "auth_throttle": AuthThrottle(runtime.settings.auth_failure_limit),
                "token_limits": TokenLimits.from_settings(runtime.settings),
                "metrics": ApiMetrics(runtime.neon.stats),
            }
        ),
        request_class=ApiRequest,
        openapi_config=OpenAPIConfig(
            title="agentdb",
            version=version("agentdb"),
            description="Isolated, checkpointable Postgres for every AI-agent session.",
            path="/schema",
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
            security=[{"bearer": []}],
        ),
        logging_config=None,
        debug=False,
        plugins=_tracing(runtime),
    )
    declare_problems(app)
    return app


def _tracing(runtime: Runtime) -> list[OpenTelemetryPlugin]:
    """A server span per request when the runtime has traces on (`agentdb._tracing`), named by
    route template; probes and scrapes make none. No header is recorded."""
    if runtime.tracer_provider is None:
        return []
    config = OpenTelemetryConfig(
        tracer_provider=runtime.tracer_provider,
        exclude=["^/healthz$", "^/readyz$", "^/metrics$"],
        exclude_spans=["receive", "send"],
    )
    return [OpenTelemetryPlugin(config)]
