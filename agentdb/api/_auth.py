"""Who is calling, and what they may reach.

Every route but `/healthz` and `/schema` needs `Authorization: Bearer <token>`. An admin token
reaches everything, a user token that user's sessions, a session token (what an agent holds) its
one session. Reaching for something else answers 404, exactly as for an id that does not exist,
so a token never learns what it does not own.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import structlog
from litestar import Request
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from agentdb.runtime import Runtime
from agentdb.services import Actor, Principal, SessionNotFound, SessionView, UserNotFound
from meta_schema import ActorScope, TokenScope

from ._problems import Forbidden, Unauthorized

AnyRequest = Request[Any, Any, Any]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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

        with structlog.contextvars.bound_contextvars(request_id=rid):
            await next_app(scope, receive, send_with_id)


class AuthMiddleware(ASGIMiddleware):
    """Resolves the bearer token to a `Principal` in `scope["user"]`, or answers 401."""

    scopes = ("http",)  # type: ignore[assignment]

    @staticmethod
    def should_bypass_for_scope(scope: Scope) -> bool:
        path: str = scope["path"]
        return path in {"/healthz", "/schema"} or path.startswith("/schema/")

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        header = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), ""
        )
        trusted: Principal | None = scope["litestar_app"].state.trusted
        scheme, _, token = header.partition(" ")
        if not header and trusted is not None:
            principal: Principal | None = trusted
        elif scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send 'Authorization: Bearer <token>'")
        else:
            principal = await runtime_of(scope).tokens.authenticate(token.strip())
        if principal is None:
            raise Unauthorized("the token is not valid (unknown, revoked or expired)")
        scope["user"] = principal
        with structlog.contextvars.bound_contextvars(token_id=str(principal.token_id)):
            await next_app(scope, receive, send)


def principal_of(request: AnyRequest) -> Principal:
    principal: Principal = request.scope["user"]
    return principal


def actor_of(request: AnyRequest) -> Actor:
    principal = principal_of(request)
    return Actor(
        str(principal.token_id),
        ActorScope(principal.scope.value),
        request_id=request.scope.get("state", {}).get("request_id"),
    )


def require_admin(request: AnyRequest) -> Principal:
    principal = principal_of(request)
    if principal.scope != TokenScope.ADMIN:
        raise Forbidden("this route needs the admin token")
    return principal


def require_user(request: AnyRequest, user_id: uuid.UUID) -> Principal:
    """The caller must be the admin or that user; anyone else is told the user does not
    exist."""
    principal = principal_of(request)
    if principal.scope == TokenScope.SESSION or not principal.can_reach_user(user_id):
        raise UserNotFound(user_id)
    return principal


async def reachable_session(request: AnyRequest, session_id: uuid.UUID) -> SessionView:
    """The session, if the caller's token reaches it; SessionNotFound otherwise."""
    principal = principal_of(request)
    if principal.scope == TokenScope.SESSION and principal.session_id != session_id:
        raise SessionNotFound(session_id)  # decided without a lookup
    view = await runtime_of(request.scope).sessions.get(session_id)
    if not principal.can_reach_session(view.user_id, view.id):
        raise SessionNotFound(session_id)
    return view


def sees_secrets(request: AnyRequest) -> bool:
    """Connection URIs go to the platform (admin and user tokens), never to an agent's session
    token: an agent runs SQL through agentdb instead of holding credentials."""
    return principal_of(request).scope != TokenScope.SESSION


def require_owner(request: AnyRequest) -> Principal:
    """Routes that mint credentials are for the platform, not for an agent."""
    principal = principal_of(request)
    if principal.scope == TokenScope.SESSION:
        raise Forbidden("a session token cannot do this; use the user's or the admin token")
    return principal
