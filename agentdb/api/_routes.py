"""The `/v1` routes. Guards decide who reaches a route (`_auth.py`); each handler receives the
services it calls through Litestar's dependency injection (`_deps.py`), makes one service call
and renders the answer: no logic of its own beyond who may see what."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler
from pydantic import JsonValue

from agentdb.services import (
    MAX_PAGE,
    Actor,
    BranchService,
    CatalogService,
    CheckpointService,
    CheckpointView,
    DiffView,
    EventService,
    InvalidInput,
    IssuedToken,
    JobRunner,
    Principal,
    Readiness,
    SessionService,
    SqlResult,
    SqlService,
    TokenService,
    TokenView,
    UserNotFound,
    UserService,
    UserView,
)
from agentdb.wire import (
    BranchList,
    BranchOut,
    CheckpointList,
    CreateBranch,
    CreateCheckpoint,
    CreatePreview,
    CreateRole,
    CreateSession,
    CreateToken,
    CreateUser,
    EventList,
    ExtensionList,
    Health,
    Ready,
    RoleList,
    RoleOut,
    RunSql,
    SessionList,
    SessionOut,
    TokenList,
    TokenOut,
    UserList,
)
from meta_schema import SessionStatus, TokenMode, TokenScope

from ._addon_routes import ADDON_ROUTES
from ._auth import (
    admin_guard,
    owner_guard,
    principal_of,
    reachable_session,
    require_owner,
    require_user,
    runtime_of,
    sees_secrets,
    session_guard,
    session_of,
    user_guard,
)
from ._deps import Render
from ._fleet_routes import FLEET_ROUTES
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
    return TokenOut(**issued.view.model_dump(), token=issued.token.get_secret_value())


def _token_page(views: list[TokenView], limit: int) -> TokenList:
    return TokenList(tokens=views, next_after=views[-1].id if len(views) == limit else None)


# --- health ---------------------------------------------------------------------------------


@get(
    "/healthz",
    tags=["health"],
    summary="Liveness: PostgreSQL, the control plane and background jobs",
    responses={503: ResponseSpec(Health, description="PostgreSQL is unreachable (`database`).")},
)
async def healthz(request: AnyRequest, jobs: NamedDependency[JobRunner]) -> Response[Health]:
    runtime = runtime_of(request.scope)
    states: dict[str, JsonValue] = {}
    degraded = False
    for name, job in jobs.status().items():
        degraded |= job.consecutive_failures >= FAILING_JOB
        states[name] = {
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
        status=status, control_plane=runtime.control_plane, database=database, jobs=states
    )
    return Response(health, status_code=503 if database is not None else 200)


@get(
    "/readyz",
    tags=["health"],
    summary="Readiness: the meta database, the control plane and PostgreSQL answer",
    responses={503: ResponseSpec(Ready, description="A check failed; `checks` says which, why.")},
)
async def readyz(readiness: NamedDependency[Readiness]) -> Response[Ready]:
    """For a load balancer or an orchestrator: 200 while this agentdb can serve, else 503 with
    the failed check's cause (each check answers within 2 s; probes within 1 s share one)."""
    report = await readiness.check()
    return Response(
        Ready(status="ready" if report.ready else "not_ready", checks=report.causes),
        status_code=200 if report.ready else 503,
    )


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


# --- users ----------------------------------------------------------------------------------


class Users(Controller):
    path = "/v1/users"
    tags = ["users"]  # noqa: RUF012 - Litestar's declaration style

    @post("/", summary="Create a user (admin)", guards=[admin_guard])
    async def create(
        self,
        *,
        users: NamedDependency[UserService],
        actor: NamedDependency[Actor],
        data: JSONBody[CreateUser],
    ) -> UserView:
        return await users.create(data.email, data.name, data.tier, actor=actor)

    @get("/", summary="List users (admin)", guards=[admin_guard])
    async def index(
        self,
        *,
        users: NamedDependency[UserService],
        limit: PageSize = 100,
        after: Annotated[uuid.UUID | None, QueryParameter()] = None,
    ) -> UserList:
        return UserList(users=await users.list(limit=limit, after=after))

    @get("/{user_id:uuid}", summary="Get a user", guards=[user_guard])
    async def show(
        self, *, users: NamedDependency[UserService], user_id: FromPath[uuid.UUID]
    ) -> UserView:
        return await users.get(user_id)

    @post("/{user_id:uuid}/tokens", summary="Issue a user token", guards=[user_guard])
    async def token(
        self,
        *,
        tokens: NamedDependency[TokenService],
        actor: NamedDependency[Actor],
        user_id: FromPath[uuid.UUID],
        data: JSONBody[CreateToken | None] = None,
    ) -> TokenOut:
        data = data or CreateToken()
        if data.mode not in {None, TokenMode.FULL}:
            raise InvalidInput("mode", "user tokens are full: modes are for session tokens")
        issued = await tokens.issue_user_token(
            user_id, name=data.name, ttl=_ttl(data.ttl_seconds), actor=actor
        )
        return _token_out(issued)

    @get(
        "/{user_id:uuid}/tokens",
        summary="List a user's tokens and their sessions' tokens (never the secrets)",
        guards=[user_guard],
    )
    async def tokens(
        self,
        *,
        tokens: NamedDependency[TokenService],
        user_id: FromPath[uuid.UUID],
        limit: PageSize = 100,
        after: AfterToken = None,
        include_inactive: IncludeInactive = False,
    ) -> TokenList:
        views = await tokens.list(
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
        *,
        request: AnyRequest,
        sessions: NamedDependency[SessionService],
        actor: NamedDependency[Actor],
        render: NamedDependency[Render],
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
        view = await sessions.create(
            user_id, data.name, _scoped(request, idempotency_key), actor=actor
        )
        return await render.session(view)

    @get("/", summary="List sessions")
    async def index(
        self,
        *,
        request: AnyRequest,
        sessions: NamedDependency[SessionService],
        render: NamedDependency[Render],
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
            views = await sessions.list(owner, status=status, limit=limit, after=after)
        return SessionList(
            sessions=[await render.session(v) for v in views],
            next_after=views[-1].id if len(views) == limit else None,
        )


class Session(Controller):
    """One session's routes: `session_guard` lets through only a token that reaches it."""

    path = "/v1/sessions/{session_id:uuid}"
    tags = ["sessions"]  # noqa: RUF012
    guards = [session_guard]  # noqa: RUF012

    @get("/", summary="Get a session")
    async def show(
        self,
        *,
        request: AnyRequest,
        render: NamedDependency[Render],
        catalog: NamedDependency[CatalogService],
        include: Annotated[
            Literal["extensions"] | None,
            QueryParameter(description="'extensions': also list them (wakes the compute)."),
        ] = None,
    ) -> SessionOut:
        view = session_of(request)
        out = await render.session(view)
        if include == "extensions":
            # Only on request: a plain GET, which agents poll, never wakes a suspended compute.
            out = out.model_copy(update={"extensions": await catalog.extensions(view.id)})
        return out

    @delete(
        "/",
        status_code=200,
        summary="Delete a session and its database",
        guards=[owner_guard],  # an agent never deletes its own safety net
    )
    async def remove(
        self,
        *,
        sessions: NamedDependency[SessionService],
        actor: NamedDependency[Actor],
        session_id: FromPath[uuid.UUID],
    ) -> SessionOut:
        view = await sessions.delete(session_id, actor=actor)
        return SessionOut(**view.model_dump())

    @post("/tokens", summary="Issue a session token (for the agent)", guards=[owner_guard])
    async def token(
        self,
        *,
        tokens: NamedDependency[TokenService],
        actor: NamedDependency[Actor],
        session_id: FromPath[uuid.UUID],
        data: JSONBody[CreateToken | None] = None,
    ) -> TokenOut:
        data = data or CreateToken()
        issued = await tokens.issue_session_token(
            session_id,
            name=data.name,
            ttl=_ttl(data.ttl_seconds),
            mode=data.mode or TokenMode.READ_WRITE,
            actor=actor,
        )
        return _token_out(issued)

    @get(
        "/tokens",
        summary="List the session's tokens (never the secrets)",
        guards=[owner_guard],
    )
    async def tokens(
        self,
        *,
        tokens: NamedDependency[TokenService],
        session_id: FromPath[uuid.UUID],
        limit: PageSize = 100,
        after: AfterToken = None,
        include_inactive: IncludeInactive = False,
    ) -> TokenList:
        views = await tokens.list(
            session_id=session_id, include_inactive=include_inactive, limit=limit, after=after
        )
        return _token_page(views, limit)

    @post(
        "/sql",
        status_code=200,
        summary="Run SQL on the session's database",
        description="A `read_only` session token's SQL is one statement, run in a read-only "
        "transaction that is always rolled back: it cannot write by any trick.",
        opt={"mode": TokenMode.READ_ONLY},
    )
    async def sql(
        self,
        *,
        sql_service: NamedDependency[SqlService],
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
        session_id: FromPath[uuid.UUID],
        data: JSONBody[RunSql],
    ) -> SqlResult:
        timeout = None if data.timeout_seconds is None else timedelta(seconds=data.timeout_seconds)
        return await sql_service.run(
            session_id,
            data.sql,
            data.params,
            max_rows=data.max_rows,
            timeout=timeout,
            actor=actor,
            read_only=principal.mode == TokenMode.READ_ONLY,
        )

    @get("/events", summary="The session's audit log, oldest first")
    async def events(
        self,
        *,
        events: NamedDependency[EventService],
        session_id: FromPath[uuid.UUID],
        after: Annotated[int | None, QueryParameter(ge=0, le=MAX_EVENT_ID)] = None,
        limit: PageSize = 100,
    ) -> EventList:
        found = await events.list(session_id, after=after, limit=limit)
        next_after = found[-1].id if len(found) == limit else None
        return EventList(events=found, next_after=next_after)


# --- roles and extensions ----------------------------------------------------------------------


class Catalog(Controller):
    """What the session's database holds beyond tables: roles (made here, not by CREATE ROLE,
    which a tenant of a shared cluster may not run) and the extensions its server offers."""

    path = "/v1/sessions/{session_id:uuid}"
    tags = ["database"]  # noqa: RUF012
    guards = [session_guard]  # noqa: RUF012

    @post("/roles", summary="Create a login role in the session's database")
    async def create_role(
        self,
        *,
        request: AnyRequest,
        catalog: NamedDependency[CatalogService],
        actor: NamedDependency[Actor],
        session_id: FromPath[uuid.UUID],
        data: JSONBody[CreateRole],
    ) -> RoleOut:
        view, uri = await catalog.create_role(session_id, data.name, actor=actor)
        # The password goes to the platform only; an agent GRANTs to the role by `sql_name`.
        return RoleOut(**view.model_dump(), connection_uri=uri if sees_secrets(request) else None)

    @get("/roles", summary="The roles of the session's database, its own first")
    async def roles(
        self, *, catalog: NamedDependency[CatalogService], session_id: FromPath[uuid.UUID]
    ) -> RoleList:
        return RoleList(roles=await catalog.roles(session_id))

    @get("/extensions", summary="The extensions the session's server offers, and installed")
    async def extensions(
        self, *, catalog: NamedDependency[CatalogService], session_id: FromPath[uuid.UUID]
    ) -> ExtensionList:
        return ExtensionList(extensions=await catalog.extensions(session_id))


# --- checkpoints ----------------------------------------------------------------------------


class Checkpoints(Controller):
    path = "/v1/sessions/{session_id:uuid}/checkpoints"
    tags = ["checkpoints"]  # noqa: RUF012
    guards = [session_guard]  # noqa: RUF012

    @post("/", summary="Checkpoint the session's database")
    async def create(
        self,
        *,
        request: AnyRequest,
        checkpoints: NamedDependency[CheckpointService],
        actor: NamedDependency[Actor],
        session_id: FromPath[uuid.UUID],
        data: JSONBody[CreateCheckpoint | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> CheckpointView:
        data = data or CreateCheckpoint()
        return await checkpoints.create(
            session_id,
            data.label,
            data.message,
            data.metadata,
            idempotency_key=_scoped(request, idempotency_key),
            actor=actor,
            code_ref=data.code_ref,
        )

    @get("/", summary="The checkpoint tree and its head")
    async def index(
        self, *, checkpoints: NamedDependency[CheckpointService], session_id: FromPath[uuid.UUID]
    ) -> CheckpointList:
        tree = await checkpoints.list(session_id)
        return CheckpointList(head_id=tree.head_id, checkpoints=tree.checkpoints)

    @get("/{checkpoint_id:uuid}", summary="Get a checkpoint")
    async def show(
        self,
        *,
        checkpoints: NamedDependency[CheckpointService],
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
    ) -> CheckpointView:
        return await checkpoints.get(session_id, checkpoint_id)

    @delete(
        "/{checkpoint_id:uuid}",
        status_code=200,
        summary="Delete a checkpoint",
        # Checkpoints are the agent's way back: only a `full` session token may drop them.
        guards=[owner_guard],
        opt={"mode": TokenMode.FULL},
    )
    async def remove(
        self,
        *,
        checkpoints: NamedDependency[CheckpointService],
        actor: NamedDependency[Actor],
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
    ) -> CheckpointView:
        return await checkpoints.delete(session_id, checkpoint_id, actor=actor)

    @post(
        "/{checkpoint_id:uuid}/pin",
        status_code=200,
        summary="Pin a checkpoint: retention never prunes it",
    )
    async def pin(
        self,
        *,
        checkpoints: NamedDependency[CheckpointService],
        actor: NamedDependency[Actor],
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
    ) -> CheckpointView:
        return await checkpoints.pin(session_id, checkpoint_id, pinned=True, actor=actor)

    @post(
        "/{checkpoint_id:uuid}/unpin",
        status_code=200,
        summary="Unpin a checkpoint: retention may prune it again",
    )
    async def unpin(
        self,
        *,
        checkpoints: NamedDependency[CheckpointService],
        actor: NamedDependency[Actor],
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
    ) -> CheckpointView:
        return await checkpoints.pin(session_id, checkpoint_id, pinned=False, actor=actor)

    @post(
        "/{checkpoint_id:uuid}/restore",
        status_code=200,
        summary="Put the database back to a checkpoint (same connection string)",
    )
    async def restore(
        self,
        *,
        checkpoints: NamedDependency[CheckpointService],
        actor: NamedDependency[Actor],
        render: NamedDependency[Render],
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
    ) -> SessionOut:
        restored = await checkpoints.restore(session_id, checkpoint_id, actor=actor)
        out = await render.session(restored.session)
        return out.model_copy(update={"restored_code_ref": restored.checkpoint.code_ref})

    @post("/{checkpoint_id:uuid}/preview", summary="Open a checkpoint as a separate branch")
    async def preview(
        self,
        *,
        request: AnyRequest,
        branches: NamedDependency[BranchService],
        actor: NamedDependency[Actor],
        render: NamedDependency[Render],
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
        data: JSONBody[CreatePreview | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> BranchOut:
        data = data or CreatePreview()
        view = await branches.preview(
            session_id,
            checkpoint_id,
            ttl=_ttl(data.ttl_seconds),
            idempotency_key=_scoped(request, idempotency_key),
            actor=actor,
        )
        return await render.branch(view)

    @get("/{checkpoint_id:uuid}/diff", summary="Schema and row-count diff")
    async def diff(
        self,
        *,
        checkpoints: NamedDependency[CheckpointService],
        session_id: FromPath[uuid.UUID],
        checkpoint_id: FromPath[uuid.UUID],
        against: Annotated[
            str, QueryParameter(description="HEAD (the live database) or another checkpoint id")
        ] = "HEAD",
    ) -> DiffView:
        other: uuid.UUID | None = None
        if against.upper() != "HEAD":
            try:
                other = uuid.UUID(against)
            except ValueError:
                raise BadRequest("against", "must be HEAD or a checkpoint id") from None
        return await checkpoints.diff(session_id, checkpoint_id, other)


# --- branches -------------------------------------------------------------------------------


class Branches(Controller):
    path = "/v1/sessions/{session_id:uuid}/branches"
    tags = ["branches"]  # noqa: RUF012
    guards = [session_guard]  # noqa: RUF012

    @post("/", summary="Branch a dev copy, from now or from a checkpoint")
    async def create(
        self,
        *,
        request: AnyRequest,
        branches: NamedDependency[BranchService],
        actor: NamedDependency[Actor],
        render: NamedDependency[Render],
        session_id: FromPath[uuid.UUID],
        data: JSONBody[CreateBranch | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> BranchOut:
        data = data or CreateBranch()
        view = await branches.create(
            session_id,
            name=data.name,
            checkpoint_id=data.checkpoint_id,
            ttl=_ttl(data.ttl_seconds),
            idempotency_key=_scoped(request, idempotency_key),
            actor=actor,
        )
        return await render.branch(view)

    @get("/", summary="The session's dev and preview branches")
    async def index(
        self,
        *,
        branches: NamedDependency[BranchService],
        render: NamedDependency[Render],
        session_id: FromPath[uuid.UUID],
    ) -> BranchList:
        views = await branches.list(session_id)
        return BranchList(branches=[await render.branch(v) for v in views])

    @post("/{branch_id:uuid}/reset", status_code=200, summary="Reset a branch to where it began")
    async def reset(
        self,
        *,
        branches: NamedDependency[BranchService],
        actor: NamedDependency[Actor],
        render: NamedDependency[Render],
        session_id: FromPath[uuid.UUID],
        branch_id: FromPath[uuid.UUID],
    ) -> BranchOut:
        return await render.branch(await branches.reset(session_id, branch_id, actor=actor))

    @delete("/{branch_id:uuid}", status_code=200, summary="Delete a branch")
    async def remove(
        self,
        *,
        branches: NamedDependency[BranchService],
        actor: NamedDependency[Actor],
        session_id: FromPath[uuid.UUID],
        branch_id: FromPath[uuid.UUID],
    ) -> BranchOut:
        view = await branches.delete(session_id, branch_id, actor=actor)
        return BranchOut(**view.model_dump())


# --- tokens ---------------------------------------------------------------------------------


class Tokens(Controller):
    path = "/v1/tokens"
    tags = ["tokens"]  # noqa: RUF012

    @get(
        "/current",
        summary="The caller's own token: its scope, mode and session (never its secret)",
        description="What a client (the MCP server, a toolbox) asks to learn what its token "
        "may do, e.g. which tools to offer a read-only token.",
    )
    async def current(
        self, *, tokens: NamedDependency[TokenService], principal: NamedDependency[Principal]
    ) -> TokenView:
        return await tokens.get(principal.token_id, by=principal)

    @get("/{token_id:uuid}", summary="Get a token (never its secret)")
    async def show(
        self,
        *,
        tokens: NamedDependency[TokenService],
        principal: NamedDependency[Principal],
        token_id: FromPath[uuid.UUID],
    ) -> TokenView:
        return await tokens.get(token_id, by=principal)

    @delete(
        "/{token_id:uuid}",
        status_code=200,
        summary="Revoke a token: its next request is refused",
        description="The admin token revokes any user or session token, a user token its "
        "own user tokens and its sessions' tokens, a session token only itself. Revoking "
        "twice changes nothing. Admin tokens are not revoked here: change "
        "AGENTDB_ADMIN_TOKEN.",
    )
    async def revoke(
        self,
        *,
        tokens: NamedDependency[TokenService],
        principal: NamedDependency[Principal],
        actor: NamedDependency[Actor],
        token_id: FromPath[uuid.UUID],
    ) -> TokenView:
        return await tokens.revoke(token_id, actor=actor, by=principal)


ROUTES: list[ControllerRouterHandler] = [
    healthz, readyz, Users, Sessions, Session, Catalog, Checkpoints, Branches, Tokens,
    *ADDON_ROUTES, *USAGE_ROUTES, *FLEET_ROUTES,
]  # fmt: skip
