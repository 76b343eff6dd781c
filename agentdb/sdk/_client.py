"""`AgentDB`: the async client. Remote, it is an httpx client of `agentdb serve`'s REST API;
embedded, it runs agentdb's runtime in this process and reaches the same API app through
`httpx.ASGITransport`, so the two modes cannot drift apart: same routes, same checks, same
answers, same errors."""

from __future__ import annotations

import asyncio
import inspect
import json as jsonlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, aclosing, asynccontextmanager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import httpx
from pydantic import BaseModel, JsonValue, TypeAdapter

from agentdb.settings import Settings
from agentdb.wire import TERMINAL_MIGRATION_STATUSES, TokenMode

from ._context import ACTIVE, NO_CONTEXT, AgentContext
from ._errors import error_from
from ._models import (
    Auth,
    AuthUser,
    Branch,
    Checkpoint,
    CheckpointTree,
    DataApi,
    Diff,
    Event,
    Extension,
    Migration,
    MigrationResult,
    MigrationRollout,
    MigrationTarget,
    OAuthProvider,
    Role,
    Session,
    SqlResult,
    TierChange,
    Token,
    TokenInfo,
    Usage,
    User,
)

M = TypeVar("M", bound=BaseModel)
Id = uuid.UUID | str

_INTERNAL_URL = "http://agentdb"
#: In process nothing is lost on the way; only a runaway operation should hit this.
EMBEDDED_TIMEOUT = 3600.0
#: How long `wait_for_migration` follows a fleet migration by default.
MIGRATION_WAIT_TIMEOUT = 3600.0
#: Between two reads of a fleet migration when its event stream is not followed; the stream
#: itself sends at most about two events a second.
MIGRATION_POLL_INTERVAL = 0.5
#: An event stream silent this long is taken for dropped (and the migration polled instead).
MIGRATION_STREAM_SILENCE = 30.0

#: What `on_progress` may be: a function or a coroutine function of the migration's view.
ProgressCallback = Callable[[Migration], Awaitable[object] | object]


class AgentDB:
    """The agentdb client. Use it as an async context manager:

    ```python
    async with AgentDB.connect("http://127.0.0.1:8000", token) as db:  # or AgentDB.local()
        session = await db.create_session(user_id=user.id)
        await db.sql(session.id, "create table t (x int)")
        checkpoint = await db.create_checkpoint(session.id, label="empty t")
    ```

    What the agent is doing goes with every request made inside `with
    db.agent_context(tool=..., tool_call_id=..., model=..., prompt=...):`, and the audit log
    records it; `agent_context=AgentContext(model=...)` at construction is the default.
    """

    def __init__(
        self,
        opener: Any,  # noqa: ANN401 - a private factory of clients
        *,
        agent_context: AgentContext | None = None,
    ) -> None:
        self._opener = opener
        self._stack: AsyncExitStack | None = None
        self._http: httpx.AsyncClient | None = None
        self._follows_event_streams = True
        self._default_context = agent_context or NO_CONTEXT
        #: This client's key among the active agent contexts (`agent_context`).
        self._context_key = object()

    @classmethod
    def local(
        cls,
        data_dir: Path | str | None = None,
        *,
        settings: Settings | None = None,
        agent_context: AgentContext | None = None,
    ) -> AgentDB:
        """Embedded: agentdb in this process on the embedded PostgreSQL and the local control
        plane (or whatever `settings` choose), with the admin's reach. Nothing listens on a
        socket. `agent_context`: what every request says the agent is doing, unless an
        `agent_context` block says otherwise."""
        if settings is None:
            settings = Settings(data_dir=Path(data_dir)) if data_dir is not None else Settings()

        @asynccontextmanager
        async def opener() -> AsyncIterator[httpx.AsyncClient]:
            # The server's modules load only for the embedded mode.
            from agentdb._logging import configure_library_logging  # noqa: PLC0415
            from agentdb.api import create_app  # noqa: PLC0415
            from agentdb.runtime import open_runtime  # noqa: PLC0415
            from agentdb.services import Principal  # noqa: PLC0415
            from agentdb.wire import TokenScope  # noqa: PLC0415

            # Who an embedded client acts as: the process itself, with the admin's reach.
            embedded = Principal(
                token_id=uuid.UUID(int=0), scope=TokenScope.ADMIN, user_id=None, session_id=None
            )

            # A library prints nothing its host did not ask for.
            configure_library_logging()

            async with open_runtime(settings) as runtime:
                app = create_app(runtime, trusted=embedded)
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=cast("Any", app)),
                    base_url=_INTERNAL_URL,
                    timeout=EMBEDDED_TIMEOUT,
                ) as http:
                    yield http

        client = cls(opener, agent_context=agent_context)
        # httpx's ASGITransport hands a response over once the app has finished it, so an
        # event stream would arrive whole at its end: in process, fleet migrations are polled.
        client._follows_event_streams = False
        return client

    @classmethod
    def connect(
        cls,
        url: str,
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 120,
        agent_context: AgentContext | None = None,
    ) -> AgentDB:
        """Remote: the REST API at `url` (e.g. "http://127.0.0.1:8000") with a bearer token
        (admin, user or session). `agent_context`: what every request says the agent is doing,
        unless an `agent_context` block says otherwise."""
        if not token:
            raise ValueError("a token is required (admin, user or session)")

        @asynccontextmanager
        async def opener() -> AsyncIterator[httpx.AsyncClient]:
            async with httpx.AsyncClient(
                base_url=url.rstrip("/"),
                headers={"Authorization": f"Bearer {token}"},
                transport=transport,
                timeout=timeout,
            ) as http:
                yield http

        return cls(opener, agent_context=agent_context)

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        try:
            self._http = await stack.enter_async_context(self._opener())
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack, self._http = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    # --- the agent's context -----------------------------------------------------------------

    @contextmanager
    def agent_context(
        self,
        *,
        tool: str | None = None,
        tool_call_id: str | None = None,
        model: str | None = None,
        prompt: str | None = None,
    ) -> Iterator[AgentContext]:
        """Says what the agent is doing for every request this client makes inside the block
        (in this task and the tasks it starts there): the `X-Agent-*` headers, which each
        audit event of the request records. Blocks nest: an inner one keeps the outer one's
        values it does not set. Yields the context in force. Raises `ValueError` for a tool,
        call id or model longer than 200 characters."""
        inner = AgentContext(tool=tool, tool_call_id=tool_call_id, model=model, prompt=prompt)
        current = inner.over(self.current_agent_context)
        active = ACTIVE.get()
        token = ACTIVE.set({**active, self._context_key: current})
        try:
            yield current
        finally:
            ACTIVE.reset(token)

    @property
    def current_agent_context(self) -> AgentContext:
        """The context this client's next request sends: the innermost `agent_context` block's
        over the default given at construction."""
        active = ACTIVE.get().get(self._context_key)
        return self._default_context if active is None else active.over(self._default_context)

    # --- plumbing --------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,  # noqa: ANN401 - a JSON document
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:  # noqa: ANN401 - the decoded JSON answer
        if self._http is None:
            raise RuntimeError("use `async with AgentDB...(...) as db:` before calling it")
        headers = self.current_agent_context.headers()
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        response = await self._http.request(
            method, path, json=json, params=query or None, headers=headers or None
        )
        if response.is_error:
            raise error_from(response)
        return response.json()

    async def _one(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:  # noqa: ANN401
        return model.model_validate(await self._request(method, path, **kwargs))

    async def _many(self, model: type[M], key: str, path: str, **kwargs: Any) -> list[M]:  # noqa: ANN401
        body = await self._request("GET", path, **kwargs)
        return TypeAdapter(list[model]).validate_python(body[key])  # type: ignore[valid-type]

    # --- users -------------------------------------------------------------------------------

    async def create_user(
        self, email: str, *, name: str | None = None, tier: str | None = None
    ) -> User:
        body = _body(email=email, name=name, tier=tier)
        return await self._one(User, "POST", "/v1/users", json=body)

    async def list_users(self, *, limit: int = 100, after: Id | None = None) -> list[User]:
        return await self._many(User, "users", "/v1/users", params={"limit": limit, "after": after})

    async def get_user(self, user_id: Id) -> User:
        return await self._one(User, "GET", f"/v1/users/{user_id}")

    async def create_user_token(
        self, user_id: Id, *, name: str | None = None, ttl_seconds: int | None = None
    ) -> Token:
        body = _body(name=name, ttl_seconds=ttl_seconds)
        return await self._one(Token, "POST", f"/v1/users/{user_id}/tokens", json=body)

    async def list_user_tokens(
        self,
        user_id: Id,
        *,
        include_inactive: bool = False,
        limit: int = 100,
        after: Id | None = None,
    ) -> list[TokenInfo]:
        """The user's tokens and their sessions' tokens, oldest first, without the secrets
        (admin or that user's token); revoked and expired ones with `include_inactive`."""
        params = _token_params(include_inactive, limit, after)
        return await self._many(TokenInfo, "tokens", f"/v1/users/{user_id}/tokens", params=params)

    # --- tokens ------------------------------------------------------------------------------

    async def get_token(self, token_id: Id) -> TokenInfo:
        return await self._one(TokenInfo, "GET", f"/v1/tokens/{token_id}")

    async def current_token(self) -> TokenInfo:
        """The token this client acts with (never its secret): its scope, `mode` and, for a
        session token, `session_id`. An embedded client acts without a token (with the admin's
        reach): it gets `NotFoundError`."""
        return await self._one(TokenInfo, "GET", "/v1/tokens/current")

    async def revoke_token(self, token_id: Id) -> TokenInfo:
        """Revokes a token: its next request answers 401 (revoking twice is fine). The admin
        token revokes any user or session token, a user token its own and its sessions'
        tokens, a session token only itself."""
        return await self._one(TokenInfo, "DELETE", f"/v1/tokens/{token_id}")

    # --- tiers and usage ---------------------------------------------------------------------

    async def change_tier(self, user_id: Id, tier: str, *, wait: bool = True) -> TierChange:
        """Moves the user to `tier` (admin token): their sessions' projects go to the tier's
        organization and get its limits. With `wait`, polls until the change finished or
        failed (a failed change is retried by agentdb; `error` says what stopped it); bound
        the wait with `asyncio.timeout` if needed."""
        change = await self._one(
            TierChange, "POST", f"/v1/users/{user_id}/tier", json={"tier": tier}
        )
        if not wait:
            return change
        while change.status.value == "running":
            await asyncio.sleep(0.2)
            change = await self.get_tier_change(user_id, change.id)
        return change

    async def get_tier_change(self, user_id: Id, change_id: Id) -> TierChange:
        return await self._one(TierChange, "GET", f"/v1/users/{user_id}/tier-changes/{change_id}")

    async def list_tier_changes(self, user_id: Id) -> list[TierChange]:
        return await self._many(TierChange, "tier_changes", f"/v1/users/{user_id}/tier-changes")

    async def get_session_usage(self, session_id: Id, *, periods: int = 3) -> Usage:
        """The session's usage per billing period and metric, with its tier's quotas (as last
        polled from the control plane, every 15 minutes)."""
        path = f"/v1/sessions/{session_id}/usage"
        return await self._one(Usage, "GET", path, params={"periods": periods})

    async def get_user_usage(self, user_id: Id, *, periods: int = 3) -> Usage:
        path = f"/v1/users/{user_id}/usage"
        return await self._one(Usage, "GET", path, params={"periods": periods})

    # --- sessions ----------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        user_id: Id | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        body = _body(user_id=None if user_id is None else str(user_id), name=name)
        return await self._one(
            Session, "POST", "/v1/sessions", json=body, idempotency_key=idempotency_key
        )

    async def list_sessions(
        self,
        *,
        user_id: Id | None = None,
        status: str | None = None,
        limit: int = 100,
        after: Id | None = None,
    ) -> list[Session]:
        """Sessions oldest first: a user token's own, or with the admin token every user's
        (`user_id` narrows it to one). `status` keeps only those in it (default: all but
        deleted); pages of `limit`, from the session after `after`."""
        params = {"user_id": user_id, "status": status, "limit": limit, "after": after}
        return await self._many(Session, "sessions", "/v1/sessions", params=params)

    async def get_session(self, session_id: Id) -> Session:
        return await self._one(Session, "GET", f"/v1/sessions/{session_id}")

    async def delete_session(self, session_id: Id) -> Session:
        """Deletes the session with its database, checkpoints and branches (admin or user
        token: a session token may not)."""
        return await self._one(Session, "DELETE", f"/v1/sessions/{session_id}")

    async def create_session_token(
        self,
        session_id: Id,
        *,
        name: str | None = None,
        ttl_seconds: int | None = None,
        mode: TokenMode | str | None = None,
    ) -> Token:
        """A token reaching this session only: what an agent gets. `mode` says what it may do
        there: `read_only` (reads; its SQL is one statement, run read-only and rolled back),
        `read_write` (the server's default: data, checkpoints, restores, branches) or `full`
        (also deletes checkpoints and turns Neon Auth and the Data API off)."""
        body = _body(name=name, ttl_seconds=ttl_seconds, mode=None if mode is None else str(mode))
        return await self._one(Token, "POST", f"/v1/sessions/{session_id}/tokens", json=body)

    async def list_session_tokens(
        self,
        session_id: Id,
        *,
        include_inactive: bool = False,
        limit: int = 100,
        after: Id | None = None,
    ) -> list[TokenInfo]:
        """The session's tokens, oldest first, without the secrets (admin or user token)."""
        params = _token_params(include_inactive, limit, after)
        path = f"/v1/sessions/{session_id}/tokens"
        return await self._many(TokenInfo, "tokens", path, params=params)

    async def sql(
        self,
        session_id: Id,
        sql: str,
        params: list[JsonValue] | None = None,
        *,
        max_rows: int | None = None,
        timeout_seconds: float | None = None,
    ) -> SqlResult:
        """Runs `sql` as the session's own role, in one transaction; `$1, $2...` take
        `params`. Raises `SqlError` (with `sqlstate`) when PostgreSQL refuses it."""
        body = _body(sql=sql, params=params, max_rows=max_rows, timeout_seconds=timeout_seconds)
        return await self._one(SqlResult, "POST", f"/v1/sessions/{session_id}/sql", json=body)

    async def list_events(
        self, session_id: Id, *, after: int | None = None, limit: int = 100
    ) -> list[Event]:
        return await self._many(
            Event,
            "events",
            f"/v1/sessions/{session_id}/events",
            params={"after": after, "limit": limit},
        )

    # --- checkpoints ---------------------------------------------------------------------------

    async def create_checkpoint(
        self,
        session_id: Id,
        *,
        label: str | None = None,
        message: str | None = None,
        metadata: dict[str, JsonValue] | None = None,
        idempotency_key: str | None = None,
        code_ref: str | None = None,
    ) -> Checkpoint:
        """Snapshots the session's database as it is now; the new checkpoint becomes the head.
        `code_ref` names the code this state goes with (a git commit, a build id): restoring
        the checkpoint answers it as the session's `restored_code_ref`."""
        body = _body(label=label, message=message, metadata=metadata, code_ref=code_ref)
        return await self._one(
            Checkpoint,
            "POST",
            f"/v1/sessions/{session_id}/checkpoints",
            json=body,
            idempotency_key=idempotency_key,
        )

    async def list_checkpoints(self, session_id: Id) -> CheckpointTree:
        return await self._one(CheckpointTree, "GET", f"/v1/sessions/{session_id}/checkpoints")

    async def get_checkpoint(self, session_id: Id, checkpoint_id: Id) -> Checkpoint:
        path = f"/v1/sessions/{session_id}/checkpoints/{checkpoint_id}"
        return await self._one(Checkpoint, "GET", path)

    async def delete_checkpoint(self, session_id: Id, checkpoint_id: Id) -> Checkpoint:
        path = f"/v1/sessions/{session_id}/checkpoints/{checkpoint_id}"
        return await self._one(Checkpoint, "DELETE", path)

    async def pin_checkpoint(
        self, session_id: Id, checkpoint_id: Id, *, pinned: bool = True
    ) -> Checkpoint:
        """Pins (or with `pinned=False` unpins) a checkpoint: retention never prunes a pinned
        one."""
        verb = "pin" if pinned else "unpin"
        path = f"/v1/sessions/{session_id}/checkpoints/{checkpoint_id}/{verb}"
        return await self._one(Checkpoint, "POST", path)

    async def restore_checkpoint(self, session_id: Id, checkpoint_id: Id) -> Session:
        """Puts the session's database back to the checkpoint, in place: the connection
        string stays, later checkpoints stay restorable. The answer's `restored_code_ref` is
        the checkpoint's `code_ref` (the code to check out with it)."""
        path = f"/v1/sessions/{session_id}/checkpoints/{checkpoint_id}/restore"
        return await self._one(Session, "POST", path)

    async def preview_checkpoint(
        self, session_id: Id, checkpoint_id: Id, *, ttl_seconds: int | None = None
    ) -> Branch:
        path = f"/v1/sessions/{session_id}/checkpoints/{checkpoint_id}/preview"
        return await self._one(Branch, "POST", path, json=_body(ttl_seconds=ttl_seconds))

    async def diff_checkpoints(
        self, session_id: Id, checkpoint_id: Id, against: Id = "HEAD"
    ) -> Diff:
        path = f"/v1/sessions/{session_id}/checkpoints/{checkpoint_id}/diff"
        return await self._one(Diff, "GET", path, params={"against": against})

    # --- branches ------------------------------------------------------------------------------

    async def create_branch(
        self,
        session_id: Id,
        *,
        name: str | None = None,
        checkpoint_id: Id | None = None,
        ttl_seconds: int | None = None,
    ) -> Branch:
        body = _body(
            name=name,
            checkpoint_id=None if checkpoint_id is None else str(checkpoint_id),
            ttl_seconds=ttl_seconds,
        )
        return await self._one(Branch, "POST", f"/v1/sessions/{session_id}/branches", json=body)

    async def list_branches(self, session_id: Id) -> list[Branch]:
        return await self._many(Branch, "branches", f"/v1/sessions/{session_id}/branches")

    async def reset_branch(self, session_id: Id, branch_id: Id) -> Branch:
        path = f"/v1/sessions/{session_id}/branches/{branch_id}/reset"
        return await self._one(Branch, "POST", path)

    async def delete_branch(self, session_id: Id, branch_id: Id) -> Branch:
        return await self._one(Branch, "DELETE", f"/v1/sessions/{session_id}/branches/{branch_id}")

    # --- roles and extensions -----------------------------------------------------------------

    async def create_role(self, session_id: Id, name: str) -> Role:
        """A login role in the session's database (`CREATE ROLE` is the control plane's to
        run). GRANT to its `sql_name`; `connection_uri` only for user and admin tokens."""
        path = f"/v1/sessions/{session_id}/roles"
        return await self._one(Role, "POST", path, json={"name": name})

    async def list_roles(self, session_id: Id) -> list[Role]:
        return await self._many(Role, "roles", f"/v1/sessions/{session_id}/roles")

    async def list_extensions(self, session_id: Id) -> list[Extension]:
        """What the session's server offers, whether installed and whether its role may."""
        path = f"/v1/sessions/{session_id}/extensions"
        return await self._many(Extension, "extensions", path)

    # --- Neon Auth and the Data API ------------------------------------------------------------

    async def enable_auth(self, session_id: Id) -> Auth:
        """Turns on Neon Auth for the session's database (enabling twice is fine): sign-up
        and sign-in for the app, a JWKS, the users in the database's `neon_auth` schema."""
        return await self._one(Auth, "POST", f"/v1/sessions/{session_id}/auth")

    async def get_auth(self, session_id: Id) -> Auth:
        return await self._one(Auth, "GET", f"/v1/sessions/{session_id}/auth")

    async def disable_auth(self, session_id: Id, *, delete_data: bool = False) -> Auth:
        """Turns Neon Auth off; `delete_data` also drops the app's users."""
        params = {"delete_data": "true"} if delete_data else None
        return await self._one(Auth, "DELETE", f"/v1/sessions/{session_id}/auth", params=params)

    async def list_auth_users(self, session_id: Id, *, limit: int = 100) -> list[AuthUser]:
        return await self._many(
            AuthUser, "users", f"/v1/sessions/{session_id}/auth/users", params={"limit": limit}
        )

    async def list_oauth_providers(self, session_id: Id) -> list[OAuthProvider]:
        path = f"/v1/sessions/{session_id}/auth/oauth-providers"
        return await self._many(OAuthProvider, "providers", path)

    async def add_oauth_provider(
        self,
        session_id: Id,
        provider: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> OAuthProvider:
        body = _body(provider=provider, client_id=client_id, client_secret=client_secret)
        path = f"/v1/sessions/{session_id}/auth/oauth-providers"
        return await self._one(OAuthProvider, "POST", path, json=body)

    async def delete_oauth_provider(self, session_id: Id, provider: str) -> list[OAuthProvider]:
        """Removes `provider`; returns the providers left."""
        path = f"/v1/sessions/{session_id}/auth/oauth-providers/{provider}"
        body = await self._request("DELETE", path)
        return TypeAdapter(list[OAuthProvider]).validate_python(body["providers"])

    async def enable_data_api(
        self,
        session_id: Id,
        *,
        add_default_grants: bool | None = None,
        cors_allowed_origins: list[str] | None = None,
    ) -> DataApi:
        """Serves the session's database over REST (PostgREST) with Neon Auth's JWTs (Neon
        Auth is turned on too); enabling twice is fine. `cors_allowed_origins`: the browser
        origins it answers (default any)."""
        body = _body(
            add_default_grants=add_default_grants, cors_allowed_origins=cors_allowed_origins
        )
        return await self._one(DataApi, "POST", f"/v1/sessions/{session_id}/data-api", json=body)

    async def get_data_api(self, session_id: Id) -> DataApi:
        return await self._one(DataApi, "GET", f"/v1/sessions/{session_id}/data-api")

    async def refresh_data_api(
        self, session_id: Id, *, cors_allowed_origins: list[str] | None = None
    ) -> DataApi:
        """Refreshes the schema cache (agentdb does it itself after DDL run through it) and
        sets the browser origins it answers when `cors_allowed_origins` is given."""
        body = _body(cors_allowed_origins=cors_allowed_origins)
        path = f"/v1/sessions/{session_id}/data-api"
        return await self._one(DataApi, "PATCH", path, json=body)

    async def disable_data_api(self, session_id: Id) -> DataApi:
        return await self._one(DataApi, "DELETE", f"/v1/sessions/{session_id}/data-api")

    # --- fleet migrations --------------------------------------------------------------------

    async def create_migration(
        self,
        name: str,
        up: str,
        *,
        down: str | None = None,
        target: MigrationTarget | dict[str, Any] | None = None,
        baseline: bool = False,
        rollout: MigrationRollout | dict[str, Any] | None = None,
        dry_run: bool = False,
        tested_by: Id | None = None,
        wait: bool = False,
        timeout: float | None = MIGRATION_WAIT_TIMEOUT,  # noqa: ASYNC109 - a deadline by default
        on_progress: ProgressCallback | None = None,
    ) -> Migration:
        """Starts a fleet migration (admin token): `up` runs in one transaction on every
        targeted session's database (default: every session; a target names tiers, users or
        sessions), each checkpointed just before, the canary first, then in waves; it halts
        when the rollout's failure rule trips, and skips sessions that already carry it.
        `down` is what `rollback_migration` runs (without one, a rollback restores the
        checkpoints). With `baseline`, sessions created later take it too. `dry_run` applies
        it on a short-lived branch of each target instead; `tested_by` names a finished dry
        run of this very SQL. With `wait`, follows it until it finished, halted or was
        cancelled, as `wait_for_migration` does."""
        body = _body(
            name=name,
            up=up,
            down=down,
            target=_part(target),
            baseline=baseline or None,
            rollout=_part(rollout),
            dry_run=dry_run or None,
            tested_by=None if tested_by is None else str(tested_by),
        )
        migration = await self._one(Migration, "POST", "/v1/migrations", json=body)
        if not wait:
            return migration
        return await self.wait_for_migration(migration.id, timeout=timeout, on_progress=on_progress)

    async def get_migration(self, migration_id: Id) -> Migration:
        return await self._one(Migration, "GET", f"/v1/migrations/{migration_id}")

    async def list_migrations(self, *, limit: int = 50) -> list[Migration]:
        """Fleet migrations, newest first (admin token)."""
        return await self._many(Migration, "migrations", "/v1/migrations", params={"limit": limit})

    async def list_migration_sessions(
        self,
        migration_id: Id,
        *,
        status: str | None = None,
        limit: int = 100,
        after: Id | None = None,
    ) -> list[MigrationResult]:
        """A fleet migration's sessions with their outcome, ordered by session id: pages of
        `limit` from the session after `after`; `status` (e.g. "failed") keeps only those."""
        params = {"status": status, "limit": limit, "after": after}
        path = f"/v1/migrations/{migration_id}/sessions"
        return await self._many(MigrationResult, "results", path, params=params)

    async def resume_migration(
        self,
        migration_id: Id,
        *,
        continue_: bool = False,
        wait: bool = False,
        timeout: float | None = MIGRATION_WAIT_TIMEOUT,  # noqa: ASYNC109 - a deadline by default
        on_progress: ProgressCallback | None = None,
    ) -> Migration:
        """Resumes a halted fleet migration: its failed sessions are tried again, or with
        `continue_` left failed while it rolls on past them (the halt rule then counts only
        later failures). With `wait`, follows it until it stops again, as
        `wait_for_migration` does."""
        path = f"/v1/migrations/{migration_id}/resume"
        migration = await self._one(Migration, "POST", path, json={"continue": continue_})
        if not wait:
            return migration
        return await self._follow(migration, timeout=timeout, on_progress=on_progress)

    async def cancel_migration(self, migration_id: Id) -> Migration:
        """Stops a fleet migration for good: sessions not yet started are left as they are
        (`cancelled`), those under way finish; what was applied stays until rolled back."""
        return await self._one(Migration, "POST", f"/v1/migrations/{migration_id}/cancel")

    async def rollback_migration(
        self,
        migration_id: Id,
        *,
        wait: bool = False,
        timeout: float | None = MIGRATION_WAIT_TIMEOUT,  # noqa: ASYNC109 - a deadline by default
        on_progress: ProgressCallback | None = None,
    ) -> Migration:
        """Undoes a finished, halted or cancelled fleet migration on the sessions that took it:
        its `down` where it has one, else a restore of the checkpoint taken before it where
        nothing was written since (the others end `not_rolled_back`). With `wait`, follows it
        until it is `rolled_back`, as `wait_for_migration` does."""
        path = f"/v1/migrations/{migration_id}/rollback"
        migration = await self._one(Migration, "POST", path)
        if not wait:
            return migration
        return await self._follow(migration, timeout=timeout, on_progress=on_progress)

    async def wait_for_migration(
        self,
        migration_id: Id,
        *,
        timeout: float | None = MIGRATION_WAIT_TIMEOUT,  # noqa: ASYNC109 - a deadline by default
        on_progress: ProgressCallback | None = None,
    ) -> Migration:
        """Follows a fleet migration until its status is terminal (finished, halted,
        cancelled, rolled_back) and returns that view; `on_progress` is called (or awaited)
        with each new view on the way. Follows the server's event stream, and reads the
        migration every half second instead when the stream drops. `TimeoutError` after
        `timeout` seconds (None: no limit)."""
        migration = await self.get_migration(migration_id)
        return await self._follow(migration, timeout=timeout, on_progress=on_progress)

    async def _follow(
        self,
        start: Migration,
        *,
        timeout: float | None,  # noqa: ASYNC109 - the callers' deadline
        on_progress: ProgressCallback | None,
    ) -> Migration:
        """Follows the migration from `start` until its status is terminal. A resume or
        rollback answers with its new, active status, so its own answer never ends the wait."""
        progress = _Progress(on_progress)
        await progress.report(start)
        if _terminal(start):
            return start
        async with asyncio.timeout(timeout):
            if self._follows_event_streams:
                async with aclosing(self._migration_events(start.id)) as events:
                    async for view in events:
                        await progress.report(view)
                        if _terminal(view):
                            return view
            # The stream dropped, or is not followed: read the migration until it settles.
            while True:
                view = await self.get_migration(start.id)
                await progress.report(view)
                if _terminal(view):
                    return view
                await asyncio.sleep(MIGRATION_POLL_INTERVAL)

    async def _migration_events(self, migration_id: uuid.UUID) -> AsyncGenerator[Migration]:
        """The views of the migration's event stream (`progress` events, then `done`), until
        the stream ends or drops; drops end it quietly, for the caller to poll."""
        if self._http is None:
            raise RuntimeError("use `async with AgentDB...(...) as db:` before calling it")
        path = f"/v1/migrations/{migration_id}/events"
        timeout = httpx.Timeout(self._http.timeout.connect, read=MIGRATION_STREAM_SILENCE)
        headers = self.current_agent_context.headers() | {"Accept": "text/event-stream"}
        try:
            async with self._http.stream("GET", path, headers=headers, timeout=timeout) as stream:
                if stream.is_error:
                    return  # the poll that follows raises the answer's error, if any
                async for event, data in _server_sent_events(stream.aiter_lines()):
                    if event not in {"progress", "done"}:
                        continue
                    try:
                        yield Migration.model_validate(jsonlib.loads(data))
                    except ValueError:
                        continue  # a stray event: the poll has the last word
                    if event == "done":
                        return
        except httpx.TransportError:
            return


def _token_params(include_inactive: bool, limit: int, after: Id | None) -> dict[str, Any]:
    return {
        "include_inactive": "true" if include_inactive else None,
        "limit": limit,
        "after": after,
    }


def _body(**fields: Any) -> dict[str, Any]:  # noqa: ANN401
    """A request body without the fields left out, so the server's defaults apply."""
    return {k: v for k, v in fields.items() if v is not None}


def _part(part: BaseModel | dict[str, Any] | None) -> dict[str, Any] | None:
    """A migration's target or rollout as JSON: only the fields set (an explicit None stays,
    as the null that turns a rule off)."""
    if part is None or isinstance(part, dict):
        return part
    return part.model_dump(mode="json", exclude_unset=True)


def _terminal(view: Migration) -> bool:
    return view.status in TERMINAL_MIGRATION_STATUSES


class _Progress:
    """Calls (or awaits) `on_progress` with each view that differs from the last one."""

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self._on_progress = on_progress
        self._last: Migration | None = None

    async def report(self, view: Migration) -> None:
        if view == self._last:
            return
        self._last = view
        if self._on_progress is not None:
            result = self._on_progress(view)
            if inspect.isawaitable(result):
                await result


async def _server_sent_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of a `text/event-stream`, as the HTML standard parses them: fields
    up to a blank line, `data` lines joined by newlines, comments (`:`) skipped, the event
    named "message" when unnamed, and an event the stream cut off before its blank line
    dropped."""
    event, data = "", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
