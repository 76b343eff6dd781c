"""The `/v1` routes. Each handler parses, authorizes, calls one service and renders: no logic
of its own beyond who may see what."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler
from pydantic import JsonValue

from agentdb.runtime import Runtime
from agentdb.services import (
    MAX_PAGE,
    BranchView,
    CheckpointView,
    Conflict,
    DiffView,
    IssuedToken,
    Principal,
    SessionView,
    SqlResult,
    TokenView,
    UserNotFound,
    UserView,
)
from agentdb.services._errors import TokenNotFound
from agentdb.wire import (
    BranchList,
    BranchOut,
    CheckpointList,
    CreateBranch,
    CreateCheckpoint,
    CreatePreview,
    CreateSession,
    CreateToken,
    CreateUser,
    EventList,
    Health,
    RunSql,
    SessionList,
    SessionOut,
    TokenList,
    TokenOut,
    UserList,
)
from meta_schema import SessionStatus, TokenScope

from ._addon_routes import ADDON_ROUTES
from ._auth import (
    actor_of,
    principal_of,
    reachable_session,
    require_admin,
    require_owner,
    require_user,
    runtime_of,
    sees_secrets,
)
from ._problems import BadRequest
from ._usage_routes import USAGE_ROUTES

AnyRequest = Request[Any, Any, Any]
#: A background job failing this many times in a row makes /healthz say "degraded".
FAILING_JOB = 3
#: Largest value of a bigint id in the meta DB (a larger `after` would not fit PostgreSQL).
MAX_EVENT_ID = 2**63 - 1
PageSize = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="At most this many.")]
AfterToken = Annotated[
    uuid.UUID | None,
    QueryParameter(description="Start after this token id (the last one of the previous page)."),
]
IncludeInactive = Annotated[
    bool, QueryParameter(description="Also the revoked and expired tokens.")
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        description="Retries with the same key get the first answer.",
    ),
]


def rt(request: AnyRequest) -> Runtime:
    return runtime_of(request.scope)


def _scoped(request: AnyRequest, key: str | None) -> str | None:
    """The services' idempotency key for a caller's `Idempotency-Key`: keys are per token, as
    the replay store keeps them, so two callers never share a key by accident."""
    if key is None:
        return None
    token = principal_of(request).token_id
    return hashlib.sha256(f"{token}\n{key}".encode()).hexdigest()


def _ttl(seconds: int | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def _token_out(issued: IssuedToken) -> TokenOut:
    view = issued.view
    return TokenOut(
        id=view.id,
        token=issued.token.get_secret_value(),
        scope=view.scope,
        user_id=view.user_id,
        session_id=view.session_id,
        name=view.name,
        prefix=view.prefix,
        created_at=view.created_at,
        expires_at=view.expires_at,
    )


def _token_page(views: list[TokenView], limit: int) -> TokenList:
    return TokenList(tokens=views, next_after=views[-1].id if len(views) == limit else None)


def _reaches_token(principal: Principal, view: TokenView) -> bool:
    """The admin reaches every token, a user token its user's and their sessions' tokens, a
    session token only itself (an agent may give up its own token, nothing more)."""
    if principal.is_admin:
        return True
    if principal.scope == TokenScope.USER:
        return view.scope != TokenScope.ADMIN and view.user_id == principal.user_id
    return view.id == principal.token_id


async def _session_out(request: AnyRequest, view: SessionView) -> SessionOut:
    uri = None
    if sees_secrets(request) and view.status.value in {"ready", "checkpointing", "restoring"}:
        uri = await rt(request).sessions.connection_uri(view.id)
    return SessionOut(**view.model_dump(), connection_uri=uri)


async def _branch_out(request: AnyRequest, view: BranchView) -> BranchOut:
    uri = None
    if sees_secrets(request) and view.status.value == "ready":
        uri = await rt(request).branches.connection_uri(view.session_id, view.id)
    return BranchOut(**view.model_dump(), connection_uri=uri)


# --- health ---------------------------------------------------------------------------------


@get(
    "/healthz",
    tags=["health"],
    summary="Liveness: PostgreSQL, the control plane and background jobs",
    responses={503: ResponseSpec(Health, description="PostgreSQL is unreachable (`database`).")},
)
async def healthz(request: AnyRequest) -> Response[Health]:
    runtime = rt(request)
    jobs: dict[str, JsonValue] = {}
    degraded = False
    for name, job in runtime.jobs.status().items():
        degraded |= job.consecutive_failures >= FAILING_JOB
        jobs[name] = {
            "every_seconds": job.every.total_seconds(),
            "runs": job.runs,
            "failures": job.failures,
            "consecutive_failures": job.consecutive_failures,
            "last_succeeded_at": _iso(job.last_succeeded_at),
            "last_error": job.last_error,
        }
    database = await runtime.database_health()
    status = "down" if database is not None else "degraded" if degraded else "ok"
    health = Health(
        status=status, control_plane=runtime.control_plane, database=database, jobs=jobs
    )
    return Response(health, status_code=503 if database is not None else 200)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


# --- users ----------------------------------------------------------------------------------


class Users(Controller):
    path = "/v1/users"
    tags = ["users"]  # noqa: RUF012 - Litestar's declaration style

    @post("/", summary="Create a user (admin)")
    async def create(self, request: AnyRequest, data: JSONBody[CreateUser]) -> UserView:
        require_admin(request)
        return await rt(request).users.create(
            data.email, data.name, data.tier, actor=actor_of(request)
        )

    @get("/", summary="List users (admin)")
    async def index(
        self,
        request: AnyRequest,
        limit: PageSize = 100,
        after: Annotated[uuid.UUID | None, QueryParameter()] = None,
    ) -> UserList:
        require_admin(request)
        return UserList(users=await rt(request).users.list(limit=limit, after=after))

    @get("/{user_id:uuid}", summary="Get a user")
    async def show(self, request: AnyRequest, user_id: FromPath[uuid.UUID]) -> UserView:
        require_user(request, user_id)
        return await rt(request).users.get(user_id)

    @post("/{user_id:uuid}/tokens", summary="Issue a user token")
    async def token(
        self,
        request: AnyRequest,
        user_id: FromPath[uuid.UUID],
        data: JSONBody[CreateToken | None] = None,
    ) -> TokenOut:
        require_user(request, user_id)
        data = data or CreateToken()
        issued = await rt(request).tokens.issue_user_token(
            user_id, name=data.name, ttl=_ttl(data.ttl_seconds), actor=actor_of(request)
        )
        return _token_out(issued)

    @get(
        "/{user_id:uuid}/tokens",
        summary="List a user's tokens and their sessions' tokens (never the secrets)",
    )
    async def tokens(
        self,
        request: AnyRequest,
        user_id: FromPath[uuid.UUID],
        limit: PageSize = 100,
        after: AfterToken = None,
        include_inactive: IncludeInactive = False,
    ) -> TokenList:
        require_user(request, user_id)
        views = await rt(request).tokens.list(
            user_id=user_id, include_inactive=include_inactive, limit=limit, after=after
        )
        return _token_page(views, limit)


# --- sessions -------------------------------------------------------------------------------


class Sessions(Controller):
    path = "/v1/sessions"
    tags = ["sessions"]  # noqa: RUF012

    @post("/", summary="Open an agent session (its own Postgres)")
    async def create(
        self,
        request: AnyRequest,
        data: JSONBody[CreateSession],
        idempotency_key: IdempotencyKey = None,
    ) -> SessionOut:
        principal = principal_of(request)
        if principal.scope == TokenScope.SESSION:
            require_owner(request)
        user_id = data.user_id or principal.user_id
        if user_id is None:
            raise BadRequest("user_id", "required with the admin token")
        require_user(request, user_id)
        view = await rt(request).sessions.create(
            user_id, data.name, _scoped(request, idempotency_key), actor=actor_of(request)
        )
        return await _session_out(request, view)

    @get("/", summary="List sessions")
    async def index(
        self,
        request: AnyRequest,
        user_id: Annotated[
            uuid.UUID | None,
            QueryParameter(description="Only this user's (the admin token's default: everyone's)."),
        ] = None,
        status: Annotated[
            SessionStatus | None,
            QueryParameter(description="Only sessions in this status (default: all but deleted)."),
        ] = None,
        limit: PageSize = 100,
        after: Annotated[
            uuid.UUID | None,
            QueryParameter(description="Start after this session id (the previous page's last)."),
        ] = None,
    ) -> SessionList:
        """Sessions oldest first, a page at a time: a user token's own, a session token's one,
        every user's with the admin token."""
        principal = principal_of(request)
        if principal.scope == TokenScope.SESSION:
            assert principal.session_id is not None  # noqa: S101 - a session token's session
            own = await reachable_session(request, principal.session_id)
            if user_id is not None and user_id != own.user_id:
                raise UserNotFound(user_id)
            mine = (status is None or own.status == status) and (after is None or own.id > after)
            views = [own] if mine else []
        else:
            owner = user_id or principal.user_id
            if owner is not None:
                require_user(request, owner)
            views = await rt(request).sessions.list(owner, status=status, limit=limit, after=after)
        return SessionList(
            sessions=[await _session_out(request, v) for v in views],
            next_after=views[-1].id if len(views) == limit else None,
        )

    @get("/{session_id:uuid}", summary="Get a session")
    async def show(self, request: AnyRequest, session_id: FromPath[uuid.UUID]) -> SessionOut:
        return await _session_out(request, await reachable_session(request, session_id))

    @delete("/{session_id:uuid}", status_code=200, summary="Delete a session and its database")
    async def remove(self, request: AnyRequest, session_id: FromPath[uuid.UUID]) -> SessionOut:
        await reachable_session(request, session_id)
        require_owner(request)  # an agent never deletes its own safety net
        view = await rt(request).sessions.delete(session_id, actor=actor_of(request))
        return SessionOut(**view.model_dump())

    @post("/{session_id:uuid}/tokens", summary="Issue a session token (for the agent)")
    async def token(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        data: JSONBody[CreateToken | None] = None,
    ) -> TokenOut:
        await reachable_session(request, session_id)
        require_owner(request)
        data = data or CreateToken()
        issued = await rt(request).tokens.issue_session_token(
            session_id, name=data.name, ttl=_ttl(data.ttl_seconds), actor=actor_of(request)
        )
        return _token_out(issued)

    @get("/{session_id:uuid}/tokens", summary="List the session's tokens (never the secrets)")
    async def tokens(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        limit: PageSize = 100,
        after: AfterToken = None,
        include_inactive: IncludeInactive = False,
    ) -> TokenList:
        await reachable_session(request, session_id)
        require_owner(request)
        views = await rt(request).tokens.list(
            session_id=session_id, include_inactive=include_inactive, limit=limit, after=after
        )
        return _token_page(views, limit)

    @post("/{session_id:uuid}/sql", status_code=200, summary="Run SQL on the session's database")
    async def sql(
        self, request: AnyRequest, session_id: FromPath[uuid.UUID], data: JSONBody[RunSql]
    ) -> SqlResult:
        await reachable_session(request, session_id)
        timeout = None if data.timeout_seconds is None else timedelta(seconds=data.timeout_seconds)
        return await rt(request).sql.run(
            session_id,
            data.sql,
            data.params,
            max_rows=data.max_rows,
            timeout=timeout,
            actor=actor_of(request),
        )

    @get("/{session_id:uuid}/events", summary="The session's audit log, oldest first")
    async def events(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        after: Annotated[int | None, QueryParameter(ge=0, le=MAX_EVENT_ID)] = None,
        limit: PageSize = 100,
    ) -> EventList:
        await reachable_session(request, session_id)
        events = await rt(request).events.list(session_id, after=after, limit=limit)
        next_after = events[-1].id if len(events) == limit else None
        return EventList(events=events, next_after=next_after)


# --- checkpoints ----------------------------------------------------------------------------


class Checkpoints(Controller):
    path = "/v1/sessions/{session_id:uuid}/checkpoints"
    tags = ["checkpoints"]  # noqa: RUF012

    @post("/", summary="Checkpoint the session's database")
    async def create(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        data: JSONBody[CreateCheckpoint | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> CheckpointView:
        await reachable_session(request, session_id)
        data = data or CreateCheckpoint()
        return await rt(request).checkpoints.create(
            session_id,
            data.label,
            data.message,
            data.metadata,
            idempotency_key=_scoped(request, idempotency_key),
            actor=actor_of(request),
        )

    @get("/", summary="The checkpoint tree and its head")
    async def index(self, request: AnyRequest, session_id: FromPath[uuid.UUID]) -> CheckpointList:
        await reachable_session(request, session_id)
        tree = await rt(request).checkpoints.list(session_id)
        return CheckpointList(head_id=tree.head_id, checkpoints=tree.checkpoints)

    @get("/{checkpoint_id:uuid}", summary="Get a checkpoint")
    async def show(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
    ) -> CheckpointView:
        await reachable_session(request, session_id)
        return await rt(request).checkpoints.get(session_id, checkpoint_id)

    @delete("/{checkpoint_id:uuid}", status_code=200, summary="Delete a checkpoint")
    async def remove(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
    ) -> CheckpointView:
        await reachable_session(request, session_id)
        require_owner(request)  # checkpoints are the agent's way back; it may not drop them
        return await rt(request).checkpoints.delete(
            session_id, checkpoint_id, actor=actor_of(request)
        )

    @post(
        "/{checkpoint_id:uuid}/pin",
        status_code=200,
        summary="Pin a checkpoint: retention never prunes it",
    )
    async def pin(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
    ) -> CheckpointView:
        await reachable_session(request, session_id)
        return await rt(request).checkpoints.pin(
            session_id, checkpoint_id, pinned=True, actor=actor_of(request)
        )

    @post(
        "/{checkpoint_id:uuid}/unpin",
        status_code=200,
        summary="Unpin a checkpoint: retention may prune it again",
    )
    async def unpin(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
    ) -> CheckpointView:
        await reachable_session(request, session_id)
        return await rt(request).checkpoints.pin(
            session_id, checkpoint_id, pinned=False, actor=actor_of(request)
        )

    @post(
        "/{checkpoint_id:uuid}/restore",
        status_code=200,
        summary="Put the database back to a checkpoint (same connection string)",
    )
    async def restore(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
    ) -> SessionOut:
        await reachable_session(request, session_id)
        await rt(request).checkpoints.restore(session_id, checkpoint_id, actor=actor_of(request))
        return await _session_out(request, await rt(request).sessions.get(session_id))

    @post("/{checkpoint_id:uuid}/preview", summary="Open a checkpoint as a separate branch")
    async def preview(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
        data: JSONBody[CreatePreview | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> BranchOut:
        await reachable_session(request, session_id)
        data = data or CreatePreview()
        view = await rt(request).branches.preview(
            session_id,
            checkpoint_id,
            ttl=_ttl(data.ttl_seconds),
            idempotency_key=_scoped(request, idempotency_key),
            actor=actor_of(request),
        )
        return await _branch_out(request, view)

    @get("/{checkpoint_id:uuid}/diff", summary="Schema and row-count diff")
    async def diff(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
        against: Annotated[
            str, QueryParameter(description="HEAD (the live database) or another checkpoint id")
        ] = "HEAD",
    ) -> DiffView:
        await reachable_session(request, session_id)
        other: uuid.UUID | None = None
        if against.upper() != "HEAD":
            try:
                other = uuid.UUID(against)
            except ValueError:
                raise BadRequest("against", "must be HEAD or a checkpoint id") from None
        return await rt(request).checkpoints.diff(session_id, checkpoint_id, other)


# --- branches -------------------------------------------------------------------------------


class Branches(Controller):
    path = "/v1/sessions/{session_id:uuid}/branches"
    tags = ["branches"]  # noqa: RUF012

    @post("/", summary="Branch a dev copy, from now or from a checkpoint")
    async def create(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        data: JSONBody[CreateBranch | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> BranchOut:
        await reachable_session(request, session_id)
        data = data or CreateBranch()
        view = await rt(request).branches.create(
            session_id,
            name=data.name,
            checkpoint_id=data.checkpoint_id,
            ttl=_ttl(data.ttl_seconds),
            idempotency_key=_scoped(request, idempotency_key),
            actor=actor_of(request),
        )
        return await _branch_out(request, view)

    @get("/", summary="The session's dev and preview branches")
    async def index(self, request: AnyRequest, session_id: FromPath[uuid.UUID]) -> BranchList:
        await reachable_session(request, session_id)
        views = await rt(request).branches.list(session_id)
        return BranchList(branches=[await _branch_out(request, v) for v in views])

    @post("/{branch_id:uuid}/reset", status_code=200, summary="Reset a branch to where it began")
    async def reset(
        self, request: AnyRequest, session_id: FromPath[uuid.UUID], branch_id: FromPath[uuid.UUID]
    ) -> BranchOut:
        await reachable_session(request, session_id)
        view = await rt(request).branches.reset(session_id, branch_id, actor=actor_of(request))
        return await _branch_out(request, view)

    @delete("/{branch_id:uuid}", status_code=200, summary="Delete a branch")
    async def remove(
        self, request: AnyRequest, session_id: FromPath[uuid.UUID], branch_id: FromPath[uuid.UUID]
    ) -> BranchOut:
        await reachable_session(request, session_id)
        view = await rt(request).branches.delete(session_id, branch_id, actor=actor_of(request))
        return BranchOut(**view.model_dump())


# --- tokens ---------------------------------------------------------------------------------


class Tokens(Controller):
    path = "/v1/tokens"
    tags = ["tokens"]  # noqa: RUF012

    @get("/{token_id:uuid}", summary="Get a token (never its secret)")
    async def show(self, request: AnyRequest, token_id: FromPath[uuid.UUID]) -> TokenView:
        return await _reachable_token(request, token_id)

    @delete(
        "/{token_id:uuid}",
        status_code=200,
        summary="Revoke a token: its next request is refused",
        description="The admin token revokes any user or session token, a user token its "
        "own user tokens and its sessions' tokens, a session token only itself. Revoking "
        "twice changes nothing. Admin tokens are not revoked here: change "
        "AGENTDB_ADMIN_TOKEN.",
    )
    async def revoke(self, request: AnyRequest, token_id: FromPath[uuid.UUID]) -> TokenView:
        view = await _reachable_token(request, token_id)
        if view.scope == TokenScope.ADMIN:
            raise Conflict("an admin token is replaced by changing AGENTDB_ADMIN_TOKEN")
        return await rt(request).tokens.revoke(token_id, actor=actor_of(request))


async def _reachable_token(request: AnyRequest, token_id: uuid.UUID) -> TokenView:
    view = await rt(request).tokens.get(token_id)
    if not _reaches_token(principal_of(request), view):
        raise TokenNotFound(token_id)
    return view


ROUTES: list[ControllerRouterHandler] = [
    healthz, Users, Sessions, Checkpoints, Branches, Tokens, *ADDON_ROUTES, *USAGE_ROUTES
]  # fmt: skip
