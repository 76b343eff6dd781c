"""Neon Auth and the Data API on agent sessions: sign-in for the app an agent builds, and a
REST API over its database whose requests run as the signed-in user (so RLS policies apply).

The control plane keeps both per branch, and a finalized restore hands them on to the new live
branch; so every call names the session's *current* live branch, and URLs are read from the
control plane each time, never cached. The meta DB keeps the intent and outcome of each change
(`session_addons`) and the keys Neon hands out only once, encrypted.
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import psycopg
import sqlalchemy as sa
import structlog
from pydantic import JsonValue
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.neon import DataAPISettings, NeonClient, NeonConflict, NeonError, NeonNotFound
from agentdb.wire import AuthUserView, AuthView, DataApiView, OAuthProviderView
from meta_schema import AddonKind, AddonStatus, AgentSession, Event, SessionAddon

from ._common import (
    SYSTEM,
    Actor,
    Clock,
    SessionFactory,
    SessionLocks,
    describe,
    event,
    load_session,
    system_clock,
)
from ._errors import Conflict, ControlPlaneFailed, InvalidInput, SqlFailed
from ._secrets import Secrets
from .checkpoints import load_ready_session
from .credentials import merged_options

log = structlog.get_logger("agentdb.services.addons")

OAUTH_PROVIDERS = ("google", "github", "microsoft", "vercel")
MAX_USERS = 1000
MAX_CLIENT_FIELD = 500
_USERS_TIMEOUT = timedelta(seconds=10)
# Legacy Stack Auth and the local plane keep users in `neon_auth.users_sync`; Neon's Better
# Auth keeps them in `neon_auth."user"` (its column names, from public dumps: unconfirmed).
_USERS_SYNC = """
SELECT id::text, email, name, email_verified, signed_in_at, created_at, updated_at
  FROM neon_auth.users_sync WHERE deleted_at IS NULL
 ORDER BY created_at, id LIMIT %s
"""
_BETTER_AUTH_USERS = """
SELECT id::text, email, name, "emailVerified", NULL::timestamptz, "createdAt", "updatedAt"
  FROM neon_auth."user" ORDER BY "createdAt", id LIMIT %s
"""


@dataclass(frozen=True, slots=True)
class _Live:
    """Where a session's add-ons live on the control plane now."""

    project_id: str
    branch_id: str
    database_name: str


def _live(row: AgentSession) -> _Live:
    assert row.project_id is not None  # noqa: S101 - a ready session has them
    assert row.live_branch_id is not None  # noqa: S101
    return _Live(row.project_id, row.live_branch_id, row.database_name or "app")


class AddonService:
    """Turns Neon Auth and the Data API on and off for agent sessions and reports them."""

    def __init__(
        self,
        sessions: SessionFactory,
        neon: NeonClient,
        secrets: Secrets,
        *,
        clock: Clock = system_clock,
        locks: SessionLocks | None = None,
    ) -> None:
        self._sessions = sessions
        self._neon = neon
        self._secrets = secrets
        self._clock = clock
        self._locks = locks or SessionLocks(sessions)

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    # --- Neon Auth -----------------------------------------------------------------------------

    async def enable_auth(self, session_id: uuid.UUID, *, actor: Actor = SYSTEM) -> AuthView:
        """Turns on Neon Auth (managed Better Auth) for the session's database: a `neon_auth`
        schema with the app's users, a JWKS, sign-up and sign-in. Enabling twice returns the
        current state. Raises `SessionNotFound`, `SessionBusy`, `Conflict`, `ControlPlaneFailed`."""
        async with self._locks.hold(session_id), self._db() as db:
            row = await load_ready_session(db, session_id)
            await self._enable_auth(db, row, actor)
        return await self.get_auth(session_id)

    async def _enable_auth(self, db: AsyncSession, row: AgentSession, actor: Actor) -> None:
        addon = await self._addon(db, row.id, AddonKind.AUTH)
        if addon is not None and addon.status == AddonStatus.ENABLED:
            return
        live = _live(row)
        addon = self._intent(db, row.id, addon, AddonKind.AUTH)
        db.add(self._event(actor, "auth.enable", addon, phase="requested"))
        await db.commit()
        keys: dict[str, str] = {}
        try:
            created = await self._neon.enable_neon_auth(
                live.project_id, live.branch_id, database_name=live.database_name
            )
            for name in ("pub_client_key", "secret_server_key"):
                value = getattr(created, name)
                if value is not None:
                    keys[name] = value.get_secret_value()
        except NeonError as error:
            # 409: an earlier call (whose answer was lost) enabled it; its keys are gone.
            if not (isinstance(error, NeonConflict) or error.maybe_applied):
                await self._failed(db, addon, "auth.enable", error, actor)
            try:
                await self._neon.get_neon_auth(live.project_id, live.branch_id)
            except NeonError:
                await self._failed(db, addon, "auth.enable", error, actor)
        addon.status = AddonStatus.ENABLED
        addon.encrypted_secret = self._secrets.encrypt(json.dumps(keys)) if keys else None
        addon.error = None
        addon.updated_at = self._clock()
        db.add(self._event(actor, "auth.enable", addon, phase="succeeded"))
        await db.commit()

    async def get_auth(self, session_id: uuid.UUID) -> AuthView:
        """Neon Auth on the session's live database now: its URLs (read from the control
        plane: a restore moves the database to a new branch) and the publishable key."""
        async with self._db() as db:
            row = await load_session(db, session_id)
            addon = await self._addon(db, session_id, AddonKind.AUTH)
        off = AuthView(
            session_id=session_id,
            enabled=False,
            status=addon.status if addon else AddonStatus.DISABLED,
            error=addon.error if addon else None,
        )
        if addon is None or addon.status != AddonStatus.ENABLED or row.live_branch_id is None:
            return off
        live = _live(row)
        try:
            found = await self._neon.get_neon_auth(live.project_id, live.branch_id)
        except NeonNotFound:
            return off.model_copy(
                update={"error": "Neon Auth is not enabled on the live database; enable it again"}
            )
        except NeonError as error:
            raise ControlPlaneFailed(
                f"reading Neon Auth of {session_id} failed: {error}"
            ) from error
        return AuthView(
            session_id=session_id,
            enabled=True,
            status=addon.status,
            provider=found.auth_provider,
            base_url=found.base_url,
            jwks_url=found.jwks_url,
            database_name=found.db_name,
            pub_client_key=self._keys(addon).get("pub_client_key"),
            enabled_at=addon.updated_at,
        )

    async def auth_secret_key(self, session_id: uuid.UUID) -> str | None:
        """Neon Auth's server key, for the session's owner only (never an agent or a log)."""
        async with self._db() as db:
            addon = await self._addon(db, session_id, AddonKind.AUTH)
        if addon is None or addon.status != AddonStatus.ENABLED:
            return None
        return self._keys(addon).get("secret_server_key")

    async def disable_auth(
        self, session_id: uuid.UUID, *, delete_data: bool = False, actor: Actor = SYSTEM
    ) -> AuthView:
        """Turns Neon Auth off (the Data API must be off first: it checks Neon Auth's JWTs).
        `delete_data` also drops the `neon_auth` schema with the app's users; otherwise they
        stay. Disabling what is off returns the current state."""
        async with self._locks.hold(session_id), self._db() as db:
            row = await load_ready_session(db, session_id)
            addon = await self._addon(db, session_id, AddonKind.AUTH)
            if addon is None or addon.status in {AddonStatus.DISABLED, AddonStatus.FAILED}:
                return await self.get_auth(session_id)
            data_api = await self._addon(db, session_id, AddonKind.DATA_API)
            if data_api is not None and data_api.status != AddonStatus.DISABLED:
                raise Conflict("the Data API uses Neon Auth's tokens: disable the Data API first")
            live = _live(row)
            await self._disable(
                db,
                addon,
                lambda: self._neon.disable_neon_auth(
                    live.project_id, live.branch_id, delete_data=delete_data
                ),
                actor=actor,
                details={"delete_data": delete_data},
            )
        return await self.get_auth(session_id)

    async def list_auth_users(
        self, session_id: uuid.UUID, *, limit: int = 100
    ) -> builtins.list[AuthUserView]:
        """The app's signed-up users (not deleted), oldest first, read from the session's
        database as its own role."""
        if isinstance(limit, bool) or not 1 <= limit <= MAX_USERS:
            raise InvalidInput("limit", f"must be between 1 and {MAX_USERS}")
        async with self._db() as db:
            row = await load_ready_session(db, session_id)
            addon = await self._addon(db, session_id, AddonKind.AUTH)
        if addon is None or addon.status != AddonStatus.ENABLED:
            raise Conflict(f"Neon Auth is not enabled for session {session_id}; enable it first")
        assert row.encrypted_connection_secret is not None  # noqa: S101 - a ready session's
        uri = self._secrets.decrypt(row.encrypted_connection_secret)
        milliseconds = int(_USERS_TIMEOUT.total_seconds() * 1000)
        try:
            async with await psycopg.AsyncConnection.connect(
                uri,
                connect_timeout=10,
                options=merged_options(uri, f"-c statement_timeout={milliseconds}"),
                application_name="agentdb-auth-users",
            ) as conn:
                found = await conn.execute("SELECT to_regclass('neon_auth.users_sync') IS NOT NULL")
                legacy = (await found.fetchone() or (False,))[0]
                cursor = await conn.execute(_USERS_SYNC if legacy else _BETTER_AUTH_USERS, (limit,))
                rows = await cursor.fetchall()
        except psycopg.Error as error:
            raise SqlFailed(
                error.sqlstate, f"reading the app's users failed: {error.diag.message_primary}"
            ) from None
        return [
            AuthUserView(
                id=str(r[0]),
                email=r[1],
                name=r[2] or None,
                email_verified=bool(r[3]),
                signed_in_at=r[4],
                created_at=r[5],
                updated_at=r[6],
            )
            for r in rows
        ]

    # --- OAuth providers -------------------------------------------------------------------

    async def list_oauth_providers(self, session_id: uuid.UUID) -> builtins.list[OAuthProviderView]:
        live = await self._auth_live(session_id)
        try:
            found = await self._neon.list_oauth_providers(live.project_id, live.branch_id)
        except NeonError as error:
            raise ControlPlaneFailed(f"listing OAuth providers failed: {error}") from error
        return [OAuthProviderView(id=p.id, type=p.type, client_id=p.client_id) for p in found]

    async def add_oauth_provider(
        self,
        session_id: uuid.UUID,
        provider: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        actor: Actor = SYSTEM,
    ) -> OAuthProviderView:
        """Lets the app's users sign in with `provider`; without a client id and secret,
        Neon's shared development keys. The client secret is never shown again."""
        _check_provider(provider)
        for field, value in (("client_id", client_id), ("client_secret", client_secret)):
            if value is not None and not (0 < len(value.strip()) <= MAX_CLIENT_FIELD):
                raise InvalidInput(field, f"must be 1 to {MAX_CLIENT_FIELD} characters")
        if (client_id is None) != (client_secret is None):
            raise InvalidInput(
                "client_secret" if client_secret is None else "client_id",
                "give both client_id and client_secret, or neither (Neon's shared keys)",
            )
        async with self._locks.hold(session_id), self._db() as db:
            live = await self._auth_live(session_id)
            try:
                added = await self._neon.add_oauth_provider(
                    live.project_id,
                    live.branch_id,
                    provider,
                    client_id=client_id,
                    client_secret=client_secret,
                )
            except NeonConflict:
                raise Conflict(f"OAuth provider {provider!r} is already set up") from None
            except NeonError as error:
                raise ControlPlaneFailed(f"adding OAuth provider failed: {error}") from error
            db.add(
                event(
                    actor,
                    "auth.oauth_provider.add",
                    at=self._clock(),
                    session_id=session_id,
                    target_kind="oauth_provider",
                    target_id=provider,
                    details={"own_credentials": client_id is not None},
                )
            )
            await db.commit()
        return OAuthProviderView(id=added.id, type=added.type, client_id=added.client_id)

    async def delete_oauth_provider(
        self, session_id: uuid.UUID, provider: str, *, actor: Actor = SYSTEM
    ) -> None:
        """Removes `provider`; removing one that is not set up is fine."""
        _check_provider(provider)
        async with self._locks.hold(session_id), self._db() as db:
            live = await self._auth_live(session_id)
            try:
                await self._neon.delete_oauth_provider(live.project_id, live.branch_id, provider)
            except NeonNotFound:
                return
            except NeonError as error:
                raise ControlPlaneFailed(f"removing OAuth provider failed: {error}") from error
            db.add(
                event(
                    actor,
                    "auth.oauth_provider.delete",
                    at=self._clock(),
                    session_id=session_id,
                    target_kind="oauth_provider",
                    target_id=provider,
                )
            )
            await db.commit()

    async def _auth_live(self, session_id: uuid.UUID) -> _Live:
        async with self._db() as db:
            row = await load_ready_session(db, session_id)
            addon = await self._addon(db, session_id, AddonKind.AUTH)
        if addon is None or addon.status != AddonStatus.ENABLED:
            raise Conflict(f"Neon Auth is not enabled for session {session_id}; enable it first")
        return _live(row)

    # --- the Data API ----------------------------------------------------------------------

    async def enable_data_api(
        self,
        session_id: uuid.UUID,
        *,
        add_default_grants: bool = True,
        cors_allowed_origins: Sequence[str] | None = None,
        actor: Actor = SYSTEM,
    ) -> DataApiView:
        """Serves the session's database over REST (PostgREST), with Neon Auth's JWTs (Neon
        Auth is enabled first if it is off). `add_default_grants` lets signed-in users
        (`authenticated`) read and write the public schema's tables, now and later: RLS
        policies are then what keeps one user's rows from another. `cors_allowed_origins`:
        the browser origins it answers (default any). Enabling twice returns the current
        state."""
        if not isinstance(add_default_grants, bool):
            raise InvalidInput("add_default_grants", "must be true or false")
        async with self._locks.hold(session_id), self._db() as db:
            row = await load_ready_session(db, session_id)
            addon = await self._addon(db, session_id, AddonKind.DATA_API)
            if addon is None or addon.status != AddonStatus.ENABLED:
                await self._enable_auth(db, row, actor)
                await self._enable_data_api(
                    db, row, addon, add_default_grants, _cors(cors_allowed_origins), actor=actor
                )
        return await self.get_data_api(session_id)

    async def _enable_data_api(
        self,
        db: AsyncSession,
        row: AgentSession,
        addon: SessionAddon | None,
        add_default_grants: bool,
        cors: DataAPISettings | None,
        *,
        actor: Actor,
    ) -> None:
        live = _live(row)
        settings: dict[str, JsonValue] = {"add_default_grants": add_default_grants}
        addon = self._intent(db, row.id, addon, AddonKind.DATA_API, settings=settings)
        db.add(self._event(actor, "data_api.enable", addon, phase="requested", **settings))
        await db.commit()
        try:
            await self._neon.create_data_api(
                live.project_id,
                live.branch_id,
                live.database_name,
                auth_provider="neon_auth",
                add_default_grants=add_default_grants,
                settings=cors,
            )
        except NeonError as error:
            if not (isinstance(error, NeonConflict) or error.maybe_applied):
                await self._failed(db, addon, "data_api.enable", error, actor)
            try:
                await self._neon.get_data_api(live.project_id, live.branch_id, live.database_name)
            except NeonError:
                await self._failed(db, addon, "data_api.enable", error, actor)
        addon.status = AddonStatus.ENABLED
        addon.error = None
        addon.updated_at = self._clock()
        db.add(self._event(actor, "data_api.enable", addon, phase="succeeded"))
        await db.commit()

    async def get_data_api(self, session_id: uuid.UUID) -> DataApiView:
        """The Data API of the session's live database now: its URL (read from the control
        plane each time), the schemas it serves, and Neon Auth's JWKS URL."""
        async with self._db() as db:
            row = await load_session(db, session_id)
            addon = await self._addon(db, session_id, AddonKind.DATA_API)
        off = DataApiView(
            session_id=session_id,
            enabled=False,
            status=addon.status if addon else AddonStatus.DISABLED,
            error=addon.error if addon else None,
        )
        if addon is None or addon.status != AddonStatus.ENABLED or row.live_branch_id is None:
            return off
        live = _live(row)
        try:
            found = await self._neon.get_data_api(
                live.project_id, live.branch_id, live.database_name
            )
            auth = await self._neon.get_neon_auth(live.project_id, live.branch_id)
        except NeonNotFound:
            return off.model_copy(
                update={"error": "the Data API is not enabled on the live database; enable it"}
            )
        except NeonError as error:
            raise ControlPlaneFailed(
                f"reading the Data API of {session_id} failed: {error}"
            ) from error
        schemas = found.settings.db_schemas if found.settings else None
        origins = found.settings.server_cors_allowed_origins if found.settings else None
        return DataApiView(
            session_id=session_id,
            enabled=True,
            status=addon.status,
            url=found.url,
            state=found.status,
            jwks_url=auth.jwks_url,
            schemas=schemas or ["public"],
            available_schemas=found.available_schemas or [],
            default_grants=bool(addon.settings.get("add_default_grants", False)),
            cors_allowed_origins=origins.split(",") if origins else ["*"],
        )

    async def refresh_data_api(
        self,
        session_id: uuid.UUID,
        *,
        cors_allowed_origins: Sequence[str] | None = None,
        actor: Actor = SYSTEM,
    ) -> DataApiView:
        """Refreshes the Data API's schema cache, so new tables, columns and grants are
        served (agentdb does this itself after DDL run through it), and sets the browser
        origins it answers when `cors_allowed_origins` is given."""
        async with self._locks.hold(session_id), self._db() as db:
            row = await load_ready_session(db, session_id)
            addon = await self._addon(db, session_id, AddonKind.DATA_API)
            if addon is None or addon.status != AddonStatus.ENABLED:
                raise Conflict(f"the Data API is not enabled for session {session_id}")
            live = _live(row)
            try:
                await self._neon.update_data_api(
                    live.project_id,
                    live.branch_id,
                    live.database_name,
                    settings=_cors(cors_allowed_origins),
                )
            except NeonError as error:
                raise ControlPlaneFailed(f"refreshing the Data API failed: {error}") from error
            origins: dict[str, JsonValue] = (
                {} if cors_allowed_origins is None else {"cors": list(cors_allowed_origins)}
            )
            db.add(self._event(actor, "data_api.refresh", addon, phase="succeeded", **origins))
            await db.commit()
        return await self.get_data_api(session_id)

    async def refresh_after_ddl(self, session_id: uuid.UUID) -> bool:
        """The SQL service's hook after DDL: refreshes the schema cache if the Data API is on.
        Never raises (the SQL has run; a stale cache is the caller's to refresh); returns
        whether a refresh was made."""
        try:
            async with self._db() as db:
                row = await load_session(db, session_id)
                addon = await self._addon(db, session_id, AddonKind.DATA_API)
            if addon is None or addon.status != AddonStatus.ENABLED or row.project_id is None:
                return False
            live = _live(row)
            await self._neon.update_data_api(live.project_id, live.branch_id, live.database_name)
        except Exception as error:  # noqa: BLE001 - a hook must not fail the SQL that ran
            log.warning(
                "data_api.refresh_failed", session_id=str(session_id), error=describe(error)
            )
            return False
        return True

    async def disable_data_api(
        self, session_id: uuid.UUID, *, actor: Actor = SYSTEM
    ) -> DataApiView:
        """Stops serving the database over REST (tables, grants and policies stay).
        Disabling what is off returns the current state."""
        async with self._locks.hold(session_id), self._db() as db:
            row = await load_ready_session(db, session_id)
            addon = await self._addon(db, session_id, AddonKind.DATA_API)
            if addon is not None and addon.status not in {
                AddonStatus.DISABLED,
                AddonStatus.FAILED,
            }:
                live = _live(row)
                await self._disable(
                    db,
                    addon,
                    lambda: self._neon.delete_data_api(
                        live.project_id, live.branch_id, live.database_name
                    ),
                    actor=actor,
                )
        return await self.get_data_api(session_id)

    # --- shared steps ----------------------------------------------------------------------

    async def _addon(
        self, db: AsyncSession, session_id: uuid.UUID, kind: AddonKind
    ) -> SessionAddon | None:
        found: SessionAddon | None = await db.scalar(
            sa.select(SessionAddon)
            .where(col(SessionAddon.session_id) == session_id, col(SessionAddon.kind) == kind)
            .execution_options(populate_existing=True)
        )
        return found

    def _intent(
        self,
        db: AsyncSession,
        session_id: uuid.UUID,
        addon: SessionAddon | None,
        kind: AddonKind,
        *,
        settings: dict[str, JsonValue] | None = None,
    ) -> SessionAddon:
        """The add-on's row, marked `enabling` (not committed yet)."""
        now = self._clock()
        if addon is None:
            addon = SessionAddon(session_id=session_id, kind=kind, created_at=now)
            db.add(addon)
        addon.status = AddonStatus.ENABLING
        addon.settings = settings or addon.settings
        addon.error = None
        addon.updated_at = now
        return addon

    async def _failed(
        self,
        db: AsyncSession,
        addon: SessionAddon,
        action: str,
        error: NeonError,
        actor: Actor,
    ) -> NoReturn:
        """Records a failed enable (nothing on the control plane: Neon refused it) and raises."""
        addon.status = AddonStatus.FAILED
        addon.error = describe(error)
        addon.updated_at = self._clock()
        db.add(self._event(actor, action, addon, phase="failed", error=addon.error))
        await db.commit()
        if isinstance(error, NeonConflict):
            # The database holds something in the add-on's way (e.g. a schema of that name the
            # agent created): the caller can fix it, so it is theirs to read, not a 502.
            raise Conflict(f"{action} of session {addon.session_id} refused: {error.message}")
        raise ControlPlaneFailed(
            f"{action} of session {addon.session_id} failed: {error}"
        ) from error

    async def _disable(
        self,
        db: AsyncSession,
        addon: SessionAddon,
        call: Callable[[], Awaitable[None]],
        *,
        actor: Actor,
        details: dict[str, JsonValue] | None = None,
    ) -> None:
        """Intent, the control plane's call, outcome; gone already counts as done."""
        action = f"{addon.kind.value}.disable"
        addon.status = AddonStatus.DISABLING
        addon.updated_at = self._clock()
        db.add(self._event(actor, action, addon, phase="requested", **(details or {})))
        await db.commit()
        try:
            await call()
        except NeonNotFound:
            pass  # already off
        except NeonError as error:
            addon.status = AddonStatus.ENABLED
            addon.error = describe(error)
            addon.updated_at = self._clock()
            db.add(self._event(actor, action, addon, phase="failed", error=addon.error))
            await db.commit()
            raise ControlPlaneFailed(f"{action} of {addon.session_id} failed: {error}") from error
        addon.status = AddonStatus.DISABLED
        addon.encrypted_secret = None
        addon.error = None
        addon.updated_at = self._clock()
        db.add(self._event(actor, action, addon, phase="succeeded"))
        await db.commit()

    def _keys(self, addon: SessionAddon) -> dict[str, str]:
        if addon.encrypted_secret is None:
            return {}
        keys: dict[str, str] = json.loads(self._secrets.decrypt(addon.encrypted_secret))
        return keys

    def _event(
        self,
        actor: Actor,
        action: str,
        addon: SessionAddon,
        *,
        phase: str,
        **details: JsonValue,
    ) -> Event:
        return event(
            actor,
            action,
            at=self._clock(),
            session_id=addon.session_id,
            target_kind="session_addon",
            target_id=addon.id,
            details={"phase": phase, "status": addon.status.value, **details},
        )


def _check_provider(provider: str) -> None:
    if provider not in OAUTH_PROVIDERS:
        raise InvalidInput("provider", f"must be one of {', '.join(OAUTH_PROVIDERS)}")


__all__ = ["OAUTH_PROVIDERS", "AddonService"]


def _cors(origins: Sequence[str] | None) -> DataAPISettings | None:
    """The Data API setting for browser origins (Neon's `server_cors_allowed_origins`, one
    comma-separated string; checked by `agentdb.wire`'s `Origins`); None leaves it as is."""
    if origins is None:
        return None
    return DataAPISettings(server_cors_allowed_origins=",".join(dict.fromkeys(origins)))
