"""`NeonClient`: the one way agentdb talks to a control plane, Neon cloud or the local plane."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack

import httpx
from opentelemetry import trace

from ._account import AccountMixin
from ._auth import AuthMixin
from ._branches import BranchesMixin
from ._compute import ComputeMixin
from ._projects import ProjectsMixin
from ._retry import RetryPolicy
from ._snapshots import SnapshotsMixin

NEON_API_URL = "https://console.neon.tech/api/v2"
#: Where `for_app` mounts the local plane; any host works, the app only sees the path.
LOCAL_APP_URL = "http://localplane/api/v2"
ASGIApp = Callable[[Any, Any, Any], Coroutine[None, None, None]]


class ClientOptions(TypedDict, total=False):
    """`NeonClient`'s tuning options, as `for_app` passes them on."""

    timeout: float
    operation_poll_interval: float
    operation_timeout: float
    rate_limit_per_min: int
    consumption_rate_per_min: int
    burst_per_s: int | None
    retry: RetryPolicy
    event_hooks: Mapping[str, list[Callable[..., Any]]] | None
    tracer_provider: trace.TracerProvider | None


class NeonClient(
    ProjectsMixin, BranchesMixin, ComputeMixin, SnapshotsMixin, AuthMixin, AccountMixin
):
    """Async client of the Neon API v2 (or the local control plane, which speaks its subset).

    One instance per process: it holds the connection pool and the rate limiters. Use it as
    `async with NeonClient(api_key=...) as neon: ...`.

    - Mutations take `wait=True` by default: they return once every operation they started has
      `finished` (or was `skipped`), with the final operations in the result. Pass `wait=False`
      to record the operation ids first, then call `wait_for_operations`.
    - Retries (`retry`): 423, 429 and 503 always, with backoff, jitter and Neon's `Retry-After`;
      other 5xx and timeouts after sending only for GET and DELETE (a DELETE sent twice
      answers 404 the second time: done); connection failures before sending
      always. A failed mutation that may have run carries `maybe_applied=True`: the caller
      looks (`find_project`, `find_branch`, `find_snapshot`, branches' `restored_from`), waits
      (`wait_for_project_operations`) and only then creates again. The client does not do this
      itself: only the caller knows the name or annotation that identifies its resource.
    - Limits: at most `rate_limit_per_min` requests start per minute (Neon: 700), at most
      `burst_per_s` per second (Neon: 40 per route), and `consumption_rate_per_min` on the
      consumption endpoints (Neon: 30).
    - Every request carries a fresh `X-Request-ID`; errors and logs carry it too.
    - Each request is a client span of `tracer_provider` (default: the process's), and
      `stats` counts answers by path template and status, retries and rate-limit waits.
    """

    def __init__(
        self,
        base_url: str = NEON_API_URL,
        *,
        api_key: str,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        operation_poll_interval: float = 1.0,
        operation_timeout: float = 600.0,
        rate_limit_per_min: int = 700,
        consumption_rate_per_min: int = 30,
        burst_per_s: int | None = 40,
        retry: RetryPolicy | None = None,
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            transport=transport,
            timeout=timeout,
            operation_poll_interval=operation_poll_interval,
            operation_timeout=operation_timeout,
            rate_limit_per_min=rate_limit_per_min,
            consumption_rate_per_min=consumption_rate_per_min,
            burst_per_s=burst_per_s,
            retry=retry or RetryPolicy(),
            event_hooks=event_hooks,
            tracer_provider=tracer_provider,
        )

    @classmethod
    def for_app(cls, app: ASGIApp, *, api_key: str, **options: Unpack[ClientOptions]) -> Self:
        """A client of an in-process ASGI app (the local control plane) through
        `httpx.ASGITransport`: no socket. The app's lifespan must already be running. Its
        operations take milliseconds, so polling defaults to every 20 ms."""
        options.setdefault("operation_poll_interval", 0.02)
        return cls(
            LOCAL_APP_URL, api_key=api_key, transport=httpx.ASGITransport(app=app), **options
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
