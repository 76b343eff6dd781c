"""Who is calling, and what they may reach.

Every route but `/healthz`, `/readyz` and `/schema` needs `Authorization: Bearer <token>`. An
admin token reaches everything, a user token that user's sessions, a session token (what an
agent holds) its one session. Reaching for something else answers 404, exactly as for an id that
does not exist, so a token never learns what it does not own; what a token reaches but its scope
may not do (delete its session, mint tokens) answers 403. A client address that keeps sending
wrong tokens is answered 429 for a while (`AuthThrottle`).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import structlog
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace

from agentdb.runtime import Runtime
from agentdb.services import (
    Actor,
    InvalidInput,
    Principal,
    SessionNotFound,
    SessionView,
    UserNotFound,
)
from agentdb.wire import AGENT_CONTEXT_HEADERS, MAX_AGENT_CONTEXT, MAX_PROMPT_EXCERPT
from meta_schema import ActorScope, TokenMode, TokenScope

from ._limits import TokenLimits, is_expensive
from ._problems import Forbidden, TooManyRequests, Unauthorized

AnyRequest = Request[Any, Any, Any]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: A session's routes: its id goes on every log line of the request.
_SESSION_PATH = re.compile(r"^/v1/sessions/([0-9a-fA-F-]{36})(?:/|$)")
#: What a 403 says when a session token asks for something only its owner may do.
NEEDS_OWNER = "needs a user or admin token: a session token cannot do this"
log = structlog.get_logger("agentdb.api")


def runtime_of(scope: Scope) -> Runtime:
    runtime: Runtime = scope["litestar_app"].state.runtime
    return runtime


class RequestIdMiddleware(ASGIMiddleware):
    """Takes the caller's `X-Request-ID` (if sane) or makes one; it is bound to every log line
    and audit event of the request and echoed in the response."""

    scopes = ("http",)  # type: ignore[assignment]

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        given = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None
        )
        rid = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", rid.encode())]
            await send(message)

        ids = {"request_id": rid}
        if match := _SESSION_PATH.match(scope["path"]):
            ids["session_id"] = match.group(1).lower()
        # The request's server span (when traces are on: `agentdb._tracing`) carries them too,
        # and is named by its route's template (it starts before routing, named by the path).
        span = trace.get_current_span()
        span.set_attributes({f"agentdb.{k}": v for k, v in ids.items()})
        if template := scope.get("path_template"):
            span.update_name(f"{scope.get('method', '')} {template}")
            span.set_attribute("http.route", str(template))
        with structlog.contextvars.bound_contextvars(**ids):
            await next_app(scope, receive, send_with_id)


class AuthThrottle:
    """Counts wrong tokens per client address in moving windows (`limits`, in memory): an
    address over `limits` is answered 429 with `Retry-After` without its token being looked
    up, so guessing is slowed and costs agentdb nothing. Each address has its own count, and a
    token that authenticated within `remember_good` passes even from a throttled address, so
    a burst of wrong tokens starves no working client."""

    #: How many recently good tokens are remembered (the oldest are forgotten first).
    MAX_GOOD = 10_000

    def __init__(self, limits: str, *, remember_good: float = 3600.0) -> None:
        self.limits: list[RateLimitItem] = parse_many(limits) if limits.strip() else []
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._remember_good = remember_good
        self._good: OrderedDict[str, float] = OrderedDict()

    @staticmethod
    def digest(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()

    def retry_after(self, address: str, digest: str) -> int | None:
        """Seconds until `address` may try again, or None when this request may go on."""
        if not self.limits:
            return None
        seen = self._good.get(digest)
        if seen is not None and time.monotonic() - seen < self._remember_good:
            return None
        waits = [
            self._limiter.get_window_stats(item, "auth-failures", address).reset_time - time.time()
            for item in self.limits
            if not self._limiter.test(item, "auth-failures", address)
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, address: str) -> None:
        for item in self.limits:
            self._limiter.hit(item, "auth-failures", address)

    def succeeded(self, digest: str) -> None:
        if not self.limits:
            return
        self._good[digest] = time.monotonic()
        self._good.move_to_end(digest)
        while len(self._good) > self.MAX_GOOD:
            self._good.popitem(last=False)


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AuthMiddleware(ASGIMiddleware):
    """Resolves the bearer token to a `Principal` in `scope["user"]`, or answers 401 (429 for
    an address that sent too many wrong tokens)."""

    scopes = ("http",)  # type: ignore[assignment]

    @staticmethod
    def should_bypass_for_scope(scope: Scope) -> bool:
        path: str = scope["path"]
        # /metrics checks its own token (the scraper's, or the admin's: `_metrics`).
        return path in {"/healthz", "/readyz", "/metrics", "/schema"} or path.startswith("/schema/")

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        header = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), ""
        )
        trusted: Principal | None = scope["litestar_app"].state.trusted
        scheme, _, token = header.partition(" ")
        if not header and trusted is not None:
            principal: Principal = trusted
        elif scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send 'Authorization: Bearer <token>'")
        else:
            principal = await _authenticate(scope, token.strip())
        scope["user"] = principal
        with structlog.contextvars.bound_contextvars(token_id=str(principal.token_id)):
            await next_app(scope, receive, send)


async def _authenticate(scope: Scope, token: str) -> Principal:
    throttle: AuthThrottle = scope["litestar_app"].state.auth_throttle
    address, digest = _client_address(scope), throttle.digest(token)
    wait = throttle.retry_after(address, digest)
    if wait is not None:
        log.warning("api.auth_throttled", client=address, retry_after=wait)
        raise TooManyRequests(
            f"too many requests with a wrong token from this address; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    limits: TokenLimits = scope["litestar_app"].state.token_limits
    expensive = is_expensive(str(scope.get("method", "")), scope["path"])
    # A token already at its limits is refused before its lookup: floods cost no database work.
    limits.refuse_early(digest, expensive=expensive)
    principal = await runtime_of(scope).tokens.authenticate(token)
    if principal is None:
        throttle.failed(address)
        raise Unauthorized("the token is not valid (unknown, revoked or expired)")
    throttle.succeeded(digest)
    limits.remember(digest, principal)
    return principal


async def authenticate_bearer(scope: Scope, token: str) -> Principal:
    """The principal of a bearer token, with the same throttling of wrong tokens and early
    refusal of limited ones as every authenticated route (for a route that checks its own)."""
    return await _authenticate(scope, token)


def principal_of(request: AnyRequest) -> Principal:
    principal: Principal = request.scope["user"]
    return principal


def actor_of(request: AnyRequest) -> Actor:
    principal = principal_of(request)
    return Actor(
        str(principal.token_id),
        ActorScope(principal.scope.value),
        request_id=request.scope.get("state", {}).get("request_id"),
        token_name=principal.name,
        context=agent_context(request.headers),
    )


def _control(char: str) -> bool:
    return ord(char) < 32 or ord(char) == 127  # noqa: PLR2004 - ASCII's control characters


def agent_context(headers: Mapping[str, str]) -> dict[str, str]:
    """What the agent said it was doing (`AGENT_CONTEXT_HEADERS`, percent-encoded UTF-8):
    the prompt cleaned of control characters and cut to an excerpt; a tool, call id or model
    too long or holding control characters is refused (400 naming the header)."""
    found: dict[str, str] = {}
    for key, header in AGENT_CONTEXT_HEADERS.items():
        raw = headers.get(header)
        if raw is None or not raw.strip():
            continue
        try:
            value = unquote(raw.strip(), errors="strict")
        except UnicodeDecodeError:
            raise InvalidInput(header, "must be percent-encoded UTF-8") from None
        if key == "prompt":
            # An excerpt of text a person or model wrote: line breaks kept (CRLF as one),
            # other control characters as spaces.
            value = value.replace("\r\n", "\n").replace("\r", "\n")
            value = "".join(" " if _control(char) and char != "\n" else char for char in value)
            value = value[:MAX_PROMPT_EXCERPT]
        elif any(_control(char) for char in value):
            raise InvalidInput(header, "must not hold control characters")
        elif len(value) > MAX_AGENT_CONTEXT:
            raise InvalidInput(header, f"must be at most {MAX_AGENT_CONTEXT} characters")
        found[key] = value
    return found


def require_user(request: AnyRequest, user_id: uuid.UUID) -> None:
    """The caller must be the admin or that user; anyone else is told the user does not
    exist."""
    _reach_user(principal_of(request), user_id)


async def reachable_session(request: AnyRequest, session_id: uuid.UUID) -> SessionView:
    """The session, if the caller's token reaches it; SessionNotFound otherwise."""
    return await _reach_session(request.scope, principal_of(request), session_id)


def sees_secrets(request: AnyRequest) -> bool:
    """Connection URIs go to the platform (admin and user tokens), never to an agent's session
    token: an agent runs SQL through agentdb instead of holding credentials."""
    return principal_of(request).scope != TokenScope.SESSION


def require_owner(request: AnyRequest) -> None:
    """Routes that mint credentials or destroy what an agent cannot get back (its session,
    checkpoints, its app's users) are for the platform, not for an agent: a session token gets
    403, saying which token can."""
    _owner(principal_of(request))


def _reach_user(principal: Principal, user_id: uuid.UUID) -> None:
    if principal.scope == TokenScope.SESSION or not principal.can_reach_user(user_id):
        raise UserNotFound(user_id)


async def _reach_session(scope: Scope, principal: Principal, session_id: uuid.UUID) -> SessionView:
    if principal.scope == TokenScope.SESSION and principal.session_id != session_id:
        raise SessionNotFound(session_id)  # decided without a lookup
    view = await runtime_of(scope).sessions.get(session_id)
    if not principal.can_reach_session(view.user_id, view.id):
        raise SessionNotFound(session_id)
    return view


def _owner(principal: Principal) -> None:
    if principal.scope == TokenScope.SESSION:
        raise Forbidden(NEEDS_OWNER)


# --- guards: who may reach a route, decided before its handler runs ----------------------------

AnyConnection = ASGIConnection[Any, Any, Any, Any]


def _path_id(connection: AnyConnection, name: str) -> uuid.UUID:
    value = connection.path_params[name]
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


async def session_guard(connection: AnyConnection, _: BaseRouteHandler) -> None:
    """The path's session must be one the token reaches (404 otherwise, as for no session);
    its view is kept for the handler (`session_of`)."""
    session_id = _path_id(connection, "session_id")
    view = await _reach_session(connection.scope, connection.scope["user"], session_id)
    connection.scope.setdefault("state", {})["session"] = view


def session_of(request: AnyRequest) -> SessionView:
    """The session `session_guard` let through."""
    view: SessionView = request.scope["state"]["session"]
    return view


def user_guard(connection: AnyConnection, _: BaseRouteHandler) -> None:
    """The path's user must be the token's own (or any, for the admin token)."""
    _reach_user(connection.scope["user"], _path_id(connection, "user_id"))


def admin_guard(connection: AnyConnection, _: BaseRouteHandler) -> None:
    principal: Principal = connection.scope["user"]
    if principal.scope != TokenScope.ADMIN:
        raise Forbidden("this route needs the admin token")


def owner_guard(connection: AnyConnection, handler: BaseRouteHandler) -> None:
    """See `require_owner`: after `session_guard`, so a session not reached is still 404. A
    route marked `opt={"mode": "full"}` is open to a `full` session token too."""
    principal: Principal = connection.scope["user"]
    if handler.opt.get("mode") == TokenMode.FULL and principal.mode == TokenMode.FULL:
        return
    _owner(principal)


def mode_guard(connection: AnyConnection, handler: BaseRouteHandler) -> None:
    """A session token does what its mode allows: a route needs the mode its handler names
    (`opt={"mode": ...}`), else `read_only` to read (GET) and `read_write` to change anything.
    User and admin tokens are `full`. Runs on every route (the app's guard)."""
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal) or principal.scope != TokenScope.SESSION:
        return
    named = connection.path_params.get("session_id")
    if named is not None and str(named).lower() != str(principal.session_id):
        return  # not its session: `session_guard` answers 404, as for no session
    method = connection.scope.get("method", "GET")
    default = TokenMode.READ_ONLY if method in {"GET", "HEAD"} else TokenMode.READ_WRITE
    needed = TokenMode(handler.opt.get("mode", default))
    if not principal.mode.allows(needed):
        raise Forbidden(
            f"this session token is {principal.mode.value}: {method} {connection.scope['path']}"
            f" needs a {needed.value} session token, or a user or admin token"
        )
