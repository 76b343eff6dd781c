"""`/metrics` in Prometheus' text format (prometheus_client), for the platform team's scraper.

Each app has a registry of its own (several apps in one process never mix figures). Recorded as
requests pass: requests by method, route template and status, with a latency histogram per
route (a checkpoint's, a restore's, a session create's and an SQL call's durations are their
routes'). Read at scrape time: background jobs' runs, failures and last duration, sessions by
status and tier, the warm pool's ready projects per tier, the meta-DB pool's connections in
use, the kept SQL connections, and the control-plane client's requests by path template and
status, its retries and its rate-limit waits.

The route needs the admin token, or `AGENTDB_METRICS_TOKEN` (a token for the scraper alone,
good for `/metrics` and nothing else).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from litestar import Request, Response, get
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlmodel import col

from agentdb.neon import NeonStats
from agentdb.runtime import Runtime
from meta_schema import AgentSession

from ._auth import authenticate_bearer, runtime_of
from ._problems import Forbidden, Unauthorized

AnyRequest = Request[Any, Any, Any]
#: Seconds: from a cached GET to a 1 GiB checkpoint.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _ControlPlaneCollector(Collector):
    """The control-plane client's own counts (`NeonStats`), read at scrape time."""

    def __init__(self, stats: NeonStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        answers = CounterMetricFamily(
            "agentdb_control_plane_requests",
            "Requests to the control plane (Neon or the local plane) by method, path template "
            "and status (0: no answer).",
            labels=["method", "path", "status"],
        )
        for (method, path, status), count in sorted(stats.answers.items()):
            answers.add_metric([method, path, str(status)], count)
        retries = CounterMetricFamily(
            "agentdb_control_plane_retries",
            "Control-plane requests sent again (423, 429, 503, timeouts), by method and path.",
            labels=["method", "path"],
        )
        for (method, path), count in sorted(stats.retries.items()):
            retries.add_metric([method, path], count)
        waits = CounterMetricFamily(
            "agentdb_control_plane_rate_limit_waits",
            "Control-plane requests held back by the client's rate limits.",
        )
        waits.add_metric([], stats.rate_limit_waits)
        waited = CounterMetricFamily(
            "agentdb_control_plane_rate_limit_wait_seconds",
            "Time control-plane requests spent held back by the client's rate limits.",
        )
        waited.add_metric([], stats.rate_limit_wait_seconds)
        yield from (answers, retries, waits, waited)


class ApiMetrics:
    """One app's figures; `control_plane` is its runtime's Neon client's counts."""

    def __init__(self, control_plane: NeonStats | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if control_plane is not None:
            r.register(_ControlPlaneCollector(control_plane))
        self.requests = Counter(
            "agentdb_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "agentdb_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.job_runs = Gauge(
            "agentdb_job_runs", "Runs of each background job since start.", ["job"], registry=r
        )
        self.job_failures = Gauge(
            "agentdb_job_failures", "Failed runs of each background job.", ["job"], registry=r
        )
        self.job_seconds = Gauge(
            "agentdb_job_last_duration_seconds",
            "How long each background job's last run took.",
            ["job"],
            registry=r,
        )
        self.sessions = Gauge(
            "agentdb_sessions", "Sessions by status and tier.", ["status", "tier"], registry=r
        )
        self.warm = Gauge(
            "agentdb_warm_pool_ready",
            "Ready projects in each tier's warm pool.",
            ["tier"],
            registry=r,
        )
        self.meta_pool = Gauge(
            "agentdb_meta_pool_connections_in_use",
            "Meta-database connections checked out of agentdb's pool.",
            registry=r,
        )
        self.kept_sql = Gauge(
            "agentdb_sql_kept_connections",
            "Connections of finished SQL calls kept open for their session's next call.",
            registry=r,
        )

    async def scrape(self, runtime: Runtime) -> bytes:
        """Reads what is read at scrape time, then renders every figure."""
        for name, job in runtime.jobs.status().items():
            self.job_runs.labels(name).set(job.runs)
            self.job_failures.labels(name).set(job.failures)
            if job.last_started_at is not None and job.last_finished_at is not None:
                took = (job.last_finished_at - job.last_started_at).total_seconds()
                self.job_seconds.labels(name).set(max(took, 0.0))
        async with runtime.meta() as db:
            counted = await db.execute(
                sa.select(col(AgentSession.status), col(AgentSession.tier), sa.func.count())
                .where(col(AgentSession.status) != "deleted")
                .group_by(col(AgentSession.status), col(AgentSession.tier))
            )
            rows = counted.tuples().all()
        self.sessions.clear()
        for status, tier, count in rows:
            self.sessions.labels(str(status), tier).set(count)
        self.warm.clear()
        for tier, count in (await runtime.warm.sizes()).items():
            self.warm.labels(tier).set(count)
        pool = runtime.meta.kw["bind"].pool if "bind" in runtime.meta.kw else None
        checked_out = getattr(pool, "checkedout", None)
        if callable(checked_out):
            self.meta_pool.set(checked_out())
        self.kept_sql.set(runtime.sql.kept_connections)
        return generate_latest(self.registry)


class MetricsMiddleware(ASGIMiddleware):
    """Counts each answered request and times it, by its route's template (never its path:
    ids would make a series per session)."""

    scopes = ("http",)  # type: ignore[assignment]

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        metrics: ApiMetrics = scope["litestar_app"].state.metrics
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await next_app(scope, receive, sending)
        finally:
            route = str(scope.get("path_template") or "unrouted")
            method = str(scope.get("method", ""))
            metrics.requests.labels(method, route, str(status)).inc()
            metrics.latency.labels(method, route).observe(time.perf_counter() - started)


@get("/metrics", include_in_schema=False)
async def metrics(request: AnyRequest) -> Response[bytes]:
    """Prometheus' text format; the admin token or `AGENTDB_METRICS_TOKEN`."""
    runtime = runtime_of(request.scope)
    await _check_scraper(request, runtime)
    figures: ApiMetrics = request.app.state.metrics
    body = await figures.scrape(runtime)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _check_scraper(request: AnyRequest, runtime: Runtime) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send 'Authorization: Bearer <token>' (the metrics or admin token)")
    wanted = runtime.settings.metrics_token
    if wanted is not None and hmac.compare_digest(
        token.encode(), wanted.get_secret_value().encode()
    ):
        return
    principal = await authenticate_bearer(request.scope, token)
    if not principal.is_admin:
        raise Forbidden("/metrics needs the metrics token or the admin token")


__all__ = ["ApiMetrics", "MetricsMiddleware", "metrics"]
