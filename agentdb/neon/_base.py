"""The client's engine: one HTTP call with rate limits, retries, request ids and error mapping,
and the waiting on operations that every mutation needs. Endpoint methods live in mixins."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import stamina
import structlog
from opentelemetry import trace
from pydantic import BaseModel, SecretStr, ValidationError

from ._errors import (
    NeonError,
    NeonOperationFailed,
    NeonTimeout,
    NeonTransportError,
    NeonUnexpectedResponse,
    error_class,
)
from ._limits import SlidingWindowLimiter
from ._models import NeonModel, Operation, WithOperations
from ._retry import RetryPolicy, parse_retry_after, retry_hook

log = structlog.get_logger("agentdb.neon")

M = TypeVar("M", bound=BaseModel)
W = TypeVar("W", bound=WithOperations)
#: Query values as the client sends them; None values are left out.
Query = Mapping[str, str | int | bool | None]
_ERROR_STATUS = 400
_NO_CONTENT = 204
_MAX_TEXT = 200
# A rate limit that held a request back longer than this counts as a wait in `NeonStats`.
_NOTICEABLE_WAIT_S = 0.001


class _BearerAuth(httpx.Auth):
    """Adds the API key to each request; holds it where no repr or log can show it."""

    def __init__(self, api_key: str) -> None:
        self._key = SecretStr(api_key)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(api_key='**********')"


def segment_path(*segments: str) -> str:
    """`/a/b/c` with every segment percent-encoded (role and database names may hold `/`)."""
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


def drop_none(**fields: object) -> dict[str, object]:
    """A JSON body from keyword arguments: None left out, models dumped, times in RFC 3339."""
    return {name: _jsonable(value) for name, value in fields.items() if value is not None}


def _jsonable(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, datetime):
        return rfc3339(value)
    return value


T = TypeVar("T")


async def follow_cursor(
    fetch: Callable[[str | None], Awaitable[tuple[Sequence[T], str | None]]],
    *,
    page_size: int | None = None,
) -> AsyncIterator[T]:
    """The items of every page, each fetched with the previous page's cursor. Stops on an
    empty page, on a short one when `page_size` is known (Neon's project cursor is the last id
    even on the last page), on no cursor, or on a cursor seen before."""
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        items, cursor = await fetch(cursor)
        for item in items:
            yield item
        short = page_size is not None and len(items) < page_size
        if not items or short or not cursor or cursor in seen:
            return
        seen.add(cursor)


def rfc3339(value: datetime) -> str:
    """An aware datetime as Neon wants it in query strings: `2026-06-09T12:00:00Z`."""
    if value.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone; Neon needs an absolute time")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Path segments that follow these name one resource: templates replace them with `{id}`, so a
# figure per template stays one series however many projects there are.
_NAMED_BY_NEXT = frozenset(
    {
        "projects", "branches", "endpoints", "operations", "snapshots", "databases", "roles",
        "data-api", "oauth_providers", "organizations", "users", "domains",
    }
)  # fmt: skip


def path_template(path: str) -> str:
    """`/projects/p-1/branches/br-2` -> `/projects/{id}/branches/{id}`."""
    parts = path.split("?", 1)[0].split("/")
    for index in range(1, len(parts)):
        if parts[index - 1] in _NAMED_BY_NEXT and parts[index] not in {"", "me"}:
            parts[index] = "{id}"
    return "/".join(parts)


@dataclass
class NeonStats:
    """What the client did since it was made, for `/metrics`: answers by method, path template
    and status (0: no answer), retried attempts, and the waits its rate limits imposed."""

    answers: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    retries: Counter[tuple[str, str]] = field(default_factory=Counter)
    rate_limit_waits: int = 0
    rate_limit_wait_seconds: float = 0.0


class ClientCore:
    """State and plumbing shared by all endpoint mixins (see `NeonClient` for the options)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str,
        transport: httpx.AsyncBaseTransport | None,
        timeout: float,
        operation_poll_interval: float,
        operation_timeout: float,
        rate_limit_per_min: int,
        consumption_rate_per_min: int,
        burst_per_s: int | None,
        retry: RetryPolicy,
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None,
        tracer_provider: trace.TracerProvider | None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key: a Neon API key (or any token for the local plane) is needed")
        self.base_url = base_url.rstrip("/")
        self.operation_poll_interval = operation_poll_interval
        self.operation_timeout = operation_timeout
        self.retry = retry
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            timeout=timeout,
            auth=_BearerAuth(api_key),
            headers={"Accept": "application/json", "User-Agent": "agentdb-neon"},
            event_hooks=event_hooks,
        )
        self._limiters = [SlidingWindowLimiter(rate_limit_per_min, 60.0)]
        if burst_per_s is not None:
            self._limiters.append(SlidingWindowLimiter(burst_per_s, 1.0))
        self._consumption_limiter = SlidingWindowLimiter(consumption_rate_per_min, 60.0)
        self.stats = NeonStats()
        # A span per request; without a provider, the process's (a no-op unless configured).
        self._tracer = trace.get_tracer("agentdb.neon", tracer_provider=tracer_provider)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    @property
    def consumption_rate_per_min(self) -> int:
        """At most this many consumption requests start in any minute (Neon's limit: 30)."""
        return self._consumption_limiter.limit

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- one call ------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Query | None = None,
        body: object = None,
        consumption: bool = False,
    ) -> object:
        """The decoded JSON answer (None for an empty one), retried as `RetryPolicy` says."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        policy = self.retry
        async for attempt in stamina.retry_context(
            on=retry_hook(method, policy),
            attempts=policy.attempts,
            timeout=policy.timeout,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
            wait_jitter=policy.wait_jitter,
            wait_exp_base=policy.wait_exp_base,
        ):
            with attempt:
                return await self._send(
                    method, path, query, body, consumption=consumption, attempt=attempt.num
                )
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, str | int | bool],
        body: object,
        *,
        consumption: bool,
        attempt: int,
    ) -> object:
        template = path_template(path)
        if attempt > 1:
            self.stats.retries[method, template] += 1
        waited = time.perf_counter()
        for limiter in (*self._limiters, *([self._consumption_limiter] if consumption else [])):
            await limiter.acquire()
        waited = time.perf_counter() - waited
        if waited > _NOTICEABLE_WAIT_S:
            self.stats.rate_limit_waits += 1
            self.stats.rate_limit_wait_seconds += waited
        request_id = str(uuid.uuid4())
        with self._tracer.start_as_current_span(
            f"neon {method} {template}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "url.template": template,
                "neon.request_id": request_id,
                "neon.attempt": attempt,
            },
        ) as span:
            response = await self._exchange(method, path, query, body, request_id, template)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= _ERROR_STATUS:
                span.set_status(trace.StatusCode.ERROR)
        return self._answer(response, method, path, request_id, attempt)

    async def _exchange(  # noqa: PLR0917 - one request's parts
        self,
        method: str,
        path: str,
        query: Mapping[str, str | int | bool],
        body: object,
        request_id: str,
        template: str,
    ) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await self._http.request(
                method,
                path,
                params=query,
                json=body,
                headers={"X-Request-ID": request_id},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self.stats.answers[method, template, 0] += 1
            # Nothing reached Neon: safe to retry whatever the method.
            raise NeonTransportError(
                method=method, path=path, sent=False, reason=f"{type(exc).__name__}: {exc}"
            ) from exc
        except httpx.TransportError as exc:
            self.stats.answers[method, template, 0] += 1
            raise NeonTransportError(
                method=method, path=path, sent=True, reason=f"{type(exc).__name__}: {exc}"
            ) from exc
        self.stats.answers[method, template, response.status_code] += 1
        response.extensions["agentdb_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return response

    def _answer(
        self, response: httpx.Response, method: str, path: str, request_id: str, attempt: int
    ) -> object:
        log.debug(
            "neon.request",
            method=method,
            path=path,
            status=response.status_code,
            # Neon's id of the call (its support asks for it); request_id is agentdb's own.
            neon_request_id=request_id,
            attempt=attempt,
            ms=response.extensions.get("agentdb_ms"),
        )
        if response.status_code >= _ERROR_STATUS:
            raise self._http_error(response, method, path, request_id)
        if response.status_code == _NO_CONTENT or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            text = response.text[:_MAX_TEXT]
            raise NeonUnexpectedResponse(
                f"{method} {path} -> {response.status_code}: not JSON: {text!r}"
            ) from exc

    @staticmethod
    def _http_error(response: httpx.Response, method: str, path: str, request_id: str) -> NeonError:
        try:
            data: object = response.json()
        except ValueError:
            data = None
        fields: Mapping[str, object] = data if isinstance(data, dict) else {}
        code = fields.get("code")
        message = fields.get("message")
        sent_back = fields.get("request_id") or response.headers.get("x-request-id")
        error = error_class(response.status_code)(
            status=response.status_code,
            code=code if isinstance(code, str) else "",
            message=message
            if isinstance(message, str)
            else (response.text[:_MAX_TEXT] or response.reason_phrase),
            request_id=sent_back if isinstance(sent_back, str) else request_id,
            method=method,
            path=path,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            body=data,
        )
        log.info(
            "neon.error_answer",
            method=method,
            path=path,
            status=error.status,
            code=error.code,
            neon_request_id=error.request_id,
            retry_after=error.retry_after,
        )
        return error

    async def _call(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        params: Query | None = None,
        body: object = None,
        consumption: bool = False,
    ) -> M:
        data = await self._request(method, path, params=params, body=body, consumption=consumption)
        return _parse(model, data, method, path)

    async def _mutate(
        self,
        model: type[W],
        method: str,
        path: str,
        *,
        project_id: str,
        wait: bool,
        params: Query | None = None,
        body: object = None,
    ) -> W:
        """A call that returns operations; with `wait`, returns once all have succeeded."""
        result = await self._call(model, method, path, params=params, body=body)
        return await self._settle(result, project_id, wait=wait)

    async def _delete(
        self,
        model: type[W],
        path: str,
        *,
        project_id: str,
        wait: bool,
        params: Query | None = None,
    ) -> W | None:
        """A DELETE that Neon may answer with 204 (already gone): None then."""
        data = await self._request("DELETE", path, params=params)
        if data is None:
            return None
        return await self._settle(_parse(model, data, "DELETE", path), project_id, wait=wait)

    async def _settle(self, result: W, project_id: str, *, wait: bool) -> W:
        if wait and result.operations:
            final = await self.wait_for_operations(project_id, result.operations)
            result = result.model_copy(update={"operations": final})
        return result

    # --- operations ----------------------------------------------------------------------------

    async def get_operation(self, project_id: str, operation_id: str) -> Operation:
        data = await self._request(
            "GET", segment_path("projects", project_id, "operations", operation_id)
        )
        return _parse(_OperationEnvelope, data, "GET", "operation").operation

    async def wait_for_operations(
        self,
        project_id: str,
        operations: Sequence[Operation],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
    ) -> list[Operation]:
        """Polls every operation until each `finished` or was `skipped`; returns their final
        states in the order given.

        `failed` is not terminal on Neon (it is retried), so it is polled like `running`.
        Raises `NeonOperationFailed` on `error` or `cancelled`, `NeonTimeout` at the deadline
        (`timeout`, default `operation_timeout`).
        """
        limit = self.operation_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        latest = {op.id: op for op in operations}
        for op in operations:
            if op.failed_for_good:
                raise NeonOperationFailed(op)
        pending = [op.id for op in operations if not op.succeeded]
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NeonTimeout([latest[op_id] for op_id in pending], limit)
            await asyncio.sleep(min(self.operation_poll_interval, remaining))
            still = []
            for op_id in pending:
                op = await self.get_operation(project_id, op_id)
                if op.status == "failed" and latest[op_id].status != "failed":
                    log.warning(
                        "neon.operation_failed_will_retry",
                        project_id=project_id,
                        operation_id=op_id,
                        action=op.action,
                        failures_count=op.failures_count,
                        error=op.error,
                    )
                latest[op_id] = op
                if op.failed_for_good:
                    raise NeonOperationFailed(op)
                if not op.succeeded:
                    still.append(op_id)
            pending = still
        return [latest[op.id] for op in operations]


class _OperationEnvelope(NeonModel):
    operation: Operation


def _parse(model: type[M], data: object, method: str, path: str) -> M:
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise NeonUnexpectedResponse(
            f"{method} {path}: the answer does not fit {model.__name__}: "
            f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']} "
            f"at {'.'.join(str(p) for p in exc.errors()[0]['loc'])}"
        ) from exc
