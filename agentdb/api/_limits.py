"""How much one token, and one user, may ask of agentdb at once and over time.

Each user or session token has a request rate (`AGENTDB_TOKEN_RATE_LIMIT`), a stricter one for
the routes that run control-plane operations (`AGENTDB_TOKEN_EXPENSIVE_RATE_LIMIT`), and a number
of requests it may have in flight (`AGENTDB_TOKEN_MAX_CONCURRENT`); all of one user's tokens
together have a number in flight too (`AGENTDB_USER_MAX_CONCURRENT`), so a user cannot multiply
their share by minting session tokens. The admin token is the platform: it has only
`AGENTDB_ADMIN_RATE_LIMIT` (none by default). Over a limit the answer is 429 problem+json with
`Retry-After` and `retry_after`, naming the limit.

Rates are moving windows of `limits`, in memory; in-flight requests are plain counters. Both are
per agentdb process: several replicas behind a balancer each enforce their own.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections import Counter

import structlog
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from agentdb.services import Principal
from agentdb.settings import Settings
from meta_schema import TokenScope

from ._problems import TooManyRequests

log = structlog.get_logger("agentdb.api")

#: Requests that make the control plane work (a project, a snapshot, a branch): what a token
#: may ask for at the stricter `AGENTDB_TOKEN_EXPENSIVE_RATE_LIMIT`.
_EXPENSIVE = re.compile(
    r"^/v1/sessions/?$"
    r"|^/v1/sessions/[^/]+/checkpoints/?$"
    r"|^/v1/sessions/[^/]+/checkpoints/[^/]+/(restore|preview)/?$"
    r"|^/v1/sessions/[^/]+/branches/?$"
    r"|^/v1/sessions/[^/]+/branches/[^/]+/reset/?$"
)
#: What a 429 for too many requests in flight asks the caller to wait, in seconds.
BUSY_RETRY_AFTER = 1
#: Recently authenticated tokens remembered for early refusals.
_RECENT_TOKENS = 100_000
#: A refused token's warning is logged at most this often per limit.
_LOG_EVERY_S = 10.0


def is_expensive(method: str, path: str) -> bool:
    return method == "POST" and _EXPENSIVE.match(path) is not None


def _parse(limits: str) -> list[RateLimitItem]:
    return parse_many(limits) if limits.strip() else []


def _describe(items: list[RateLimitItem]) -> str:
    return "; ".join(str(item) for item in items)


class TokenLimits:
    """The rates and in-flight counts of every token and user this process has seen."""

    def __init__(
        self,
        *,
        rate: str,
        expensive_rate: str = "",
        admin_rate: str = "",
        token_max_concurrent: int,
        user_max_concurrent: int,
    ) -> None:
        self.rate = _parse(rate)
        self.expensive_rate = _parse(expensive_rate)
        self.admin_rate = _parse(admin_rate)
        self.token_max_concurrent = token_max_concurrent
        self.user_max_concurrent = user_max_concurrent
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        #: Requests in flight per token and per user; a key leaves when its count is 0.
        self.tokens_in_flight: Counter[uuid.UUID] = Counter()
        self.users_in_flight: Counter[uuid.UUID] = Counter()
        #: Tokens that authenticated recently, by digest: only ever used to refuse a request
        #: early (`refuse_early`), never to accept one.
        self._recent: dict[str, Principal] = {}
        self._logged: dict[tuple[uuid.UUID, str], float] = {}  # (token, limit) -> when

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenLimits:
        return cls(
            rate=settings.token_rate_limit,
            expensive_rate=settings.token_expensive_rate_limit,
            admin_rate=settings.admin_rate_limit,
            token_max_concurrent=settings.token_max_concurrent,
            user_max_concurrent=settings.user_max_concurrent,
        )

    def check_rate(self, principal: Principal, *, expensive: bool) -> None:
        """Counts the request against its token's rates, or raises TooManyRequests (a refused
        request is not counted)."""
        checks = self._rate_checks(principal, expensive=expensive)
        self._test_rates(principal, checks)
        # Nothing awaits between the tests and the hits: no other request interleaves.
        token = str(principal.token_id)
        for _, bucket, items in checks:
            for item in items:
                self._limiter.hit(item, bucket, token)

    def _rate_checks(
        self, principal: Principal, *, expensive: bool
    ) -> list[tuple[str, str, list[RateLimitItem]]]:
        """(setting, bucket, limits) that apply to the request."""
        if principal.scope == TokenScope.ADMIN:
            return [("AGENTDB_ADMIN_RATE_LIMIT", "requests", self.admin_rate)]
        checks = [("AGENTDB_TOKEN_RATE_LIMIT", "requests", self.rate)]
        if expensive:
            checks.append(("AGENTDB_TOKEN_EXPENSIVE_RATE_LIMIT", "expensive", self.expensive_rate))
        return checks

    def _test_rates(
        self, principal: Principal, checks: list[tuple[str, str, list[RateLimitItem]]]
    ) -> None:
        """Raises TooManyRequests, naming the limit, if the token is over one of `checks`."""
        token = str(principal.token_id)
        for setting, bucket, items in checks:
            over = [item for item in items if not self._limiter.test(item, bucket, token)]
            if over:
                wait = max(
                    self._limiter.get_window_stats(item, bucket, token).reset_time - time.time()
                    for item in over
                )
                seconds = max(1, math.ceil(wait))
                what = "control-plane operations" if bucket == "expensive" else "requests"
                raise self._refused(
                    principal,
                    f"this token sent too many {what} ({setting}: {_describe(over)}); "
                    f"retry in {seconds} s",
                    seconds,
                    setting,
                )

    def remember(self, digest: str, principal: Principal) -> None:
        """Notes that the token with `digest` stands for `principal` (it just authenticated)."""
        if len(self._recent) >= _RECENT_TOKENS and digest not in self._recent:
            self._recent.clear()  # a crude bound: the next requests re-learn what they need
        self._recent[digest] = principal

    def refuse_early(self, digest: str, *, expensive: bool) -> None:
        """Raises TooManyRequests, before the token is looked up, for a token seen recently
        that is at its in-flight limit or over its rate: a flood of requests is then answered
        without touching the database. Passing here decides nothing: the request is still
        authenticated, then counted, as any other."""
        principal = self._recent.get(digest)
        if principal is None or principal.scope == TokenScope.ADMIN:
            return
        self._check_in_flight(principal)
        self._test_rates(principal, self._rate_checks(principal, expensive=expensive))

    def _check_in_flight(self, principal: Principal) -> None:
        token, user = principal.token_id, principal.user_id
        if self.tokens_in_flight[token] >= self.token_max_concurrent:
            raise self._refused(
                principal,
                f"this token has {self.token_max_concurrent} requests in flight "
                f"(AGENTDB_TOKEN_MAX_CONCURRENT); wait for one to finish",
                BUSY_RETRY_AFTER,
                "AGENTDB_TOKEN_MAX_CONCURRENT",
            )
        if user is not None and self.users_in_flight[user] >= self.user_max_concurrent:
            raise self._refused(
                principal,
                f"this user's tokens have {self.user_max_concurrent} requests in flight "
                f"(AGENTDB_USER_MAX_CONCURRENT); wait for one to finish",
                BUSY_RETRY_AFTER,
                "AGENTDB_USER_MAX_CONCURRENT",
            )

    def enter(self, principal: Principal) -> None:
        """Counts the request in flight for its token and user, or raises TooManyRequests;
        every successful `enter` must be paired with `leave`."""
        if principal.scope == TokenScope.ADMIN:
            return
        token, user = principal.token_id, principal.user_id
        self._check_in_flight(principal)
        self.tokens_in_flight[token] += 1
        if user is not None:
            self.users_in_flight[user] += 1

    def leave(self, principal: Principal) -> None:
        if principal.scope == TokenScope.ADMIN:
            return
        _decrement(self.tokens_in_flight, principal.token_id)
        if principal.user_id is not None:
            _decrement(self.users_in_flight, principal.user_id)

    def _refused(
        self, principal: Principal, detail: str, seconds: int, limit: str
    ) -> TooManyRequests:
        # One line per token and limit every `_LOG_EVERY_S`: a flood must not become a flood
        # of log lines (disk, and CPU of agentdb's own loop).
        key = (principal.token_id, limit)
        now = time.monotonic()
        if now - self._logged.get(key, -math.inf) >= _LOG_EVERY_S:
            if len(self._logged) >= _RECENT_TOKENS:
                self._logged.clear()
            self._logged[key] = now
            log.warning(
                "api.token_limited",
                limit=limit,
                scope=principal.scope.value,
                user_id=str(principal.user_id) if principal.user_id else None,
                retry_after=seconds,
            )
        return TooManyRequests(detail, headers={"Retry-After": str(seconds)})


def _decrement(counts: Counter[uuid.UUID], key: uuid.UUID) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


class TokenLimitsMiddleware(ASGIMiddleware):
    """Applies `TokenLimits` to every authenticated request (after `AuthMiddleware`): the
    in-flight count covers the whole call, response body included, and is released however
    the call ends (an error answer, an exception, a client that went away)."""

    scopes = ("http",)  # type: ignore[assignment]

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        principal: Principal | None = scope.get("user")
        if principal is None:  # a route without authentication (/healthz, /schema)
            await next_app(scope, receive, send)
            return
        limits: TokenLimits = scope["litestar_app"].state.token_limits
        limits.check_rate(
            principal, expensive=is_expensive(str(scope.get("method", "")), scope["path"])
        )
        limits.enter(principal)
        try:
            await next_app(scope, receive, send)
        finally:
            limits.leave(principal)
