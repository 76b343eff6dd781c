"""What a session's database offers and holds beyond its tables: its roles and the extensions
its server has.

Generated code writes `CREATE ROLE app_user LOGIN PASSWORD '...'`; on a shared cluster a
tenant's role may not create roles (a role is cluster-wide: it could take another tenant's
name or outnumber every connection limit), so roles are made through the control plane, as
Neon's console and API make them: each is its project's, dropped with it, governed like the
session's own role. The SQL error for `CREATE ROLE` names this API (`sql._instead`).

Extensions are listed with the session's own role, from PostgreSQL's catalog: what is
installed, and what that role may install (trusted extensions; on Neon, Neon's own list).
"""

from __future__ import annotations

import builtins
import uuid
from urllib.parse import unquote, urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from agentdb.neon import NeonClient, NeonError
from agentdb.wire import ExtensionView, RoleView
from meta_schema import AgentSession

from ._common import (
    Actor,
    Clock,
    SessionFactory,
    SessionLocks,
    describe,
    event,
    operation_ids,
    system_clock,
)
from ._errors import Conflict, ControlPlaneFailed, InvalidInput
from ._secrets import Secrets
from .checkpoints import load_ready_session
from .credentials import with_login
from .sql import SqlService

#: Roles a session may add next to its own: enough for an app's reader and writer, few enough
#: that no session fills the cluster's role catalog.
MAX_ROLES = 10
#: Names a session's role may not take: PostgreSQL's, Neon's, and the Data API's and Neon
#: Auth's own roles.
RESERVED_NAMES = frozenset(
    {"public", "none", "postgres", "authenticator", "anonymous", "authenticated", "cloud_admin"}
)
RESERVED_PREFIXES = ("pg_", "neon", "agentdb")

_EXTENSIONS = """
SELECT e.name, e.default_version, e.installed_version,
       e.installed_version IS NOT NULL OR EXISTS (
           SELECT 1 FROM pg_available_extension_versions v
           WHERE v.name = e.name AND v.version = e.default_version
             AND (v.trusted OR NOT v.superuser)) AS installable,
       e.comment
FROM pg_available_extensions e
ORDER BY e.name
"""


class CatalogService:
    """Lists and creates a session's roles; lists the extensions its server offers."""

    def __init__(
        self,
        sessions: SessionFactory,
        neon: NeonClient,
        secrets: Secrets,
        sql: SqlService,
        *,
        clock: Clock = system_clock,
        locks: SessionLocks | None = None,
        max_roles: int = MAX_ROLES,
    ) -> None:
        self._sessions = sessions
        self._neon = neon
        self._secrets = secrets
        self._sql = sql
        self._clock = clock
        self._locks = locks or SessionLocks(sessions)
        self._max_roles = max_roles
        self._suffixes: dict[uuid.UUID, str] = {}

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    async def roles(self, session_id: uuid.UUID) -> builtins.list[RoleView]:
        """The roles of the session's database, its own first."""
        async with self._db() as db:
            row = await load_ready_session(db, session_id)
        project_id, branch_id, own_role = _placed(row)
        suffix, _ = await self._suffix(session_id, own_role, row.encrypted_connection_secret)
        try:
            found = await self._neon.list_roles(project_id, branch_id)
        except NeonError as error:
            raise ControlPlaneFailed(f"listing roles failed: {describe(error)}") from error
        views = [
            RoleView(
                name=r.name,
                sql_name=r.name + suffix,
                owner=r.name == own_role,
                created_at=r.created_at,
            )
            for r in found
            if not _internal(r.name) or r.name == own_role
        ]
        return sorted(views, key=lambda v: (not v.owner, v.name))

    async def create_role(
        self, session_id: uuid.UUID, name: str, *, actor: Actor
    ) -> tuple[RoleView, str]:
        """Creates a login role in the session's database; returns it and a connection URI
        that logs in as it (for the session's owner only). The role may connect and create in
        the database; what it may read is what its owner GRANTs it (`sql_name` in SQL).

        Raises `InvalidInput` (a reserved name), `Conflict` (the name exists, or the session
        has `max_roles` roles of its own already), `SessionBusy` and `ControlPlaneFailed`."""
        if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
            raise InvalidInput(
                "name",
                f"{name!r} is reserved (PostgreSQL's, Neon's or agentdb's own roles); "
                "choose another, e.g. 'app_user'",
            )
        async with self._db() as db:
            row = await load_ready_session(db, session_id)
        _, _, own_role = _placed(row)
        suffix, by_name = await self._suffix(session_id, own_role, row.encrypted_connection_secret)
        async with self._locks.hold(session_id):
            async with self._db() as db:
                row = await load_ready_session(db, session_id)
            project_id, branch_id, own_role = _placed(row)
            if row.encrypted_connection_secret is None:
                raise Conflict(f"session {session_id} has no database")
            try:
                existing = await self._neon.list_roles(project_id, branch_id)
                if any(r.name == name for r in existing):
                    raise Conflict(f"role {name!r} exists in session {session_id}")
                own = [r for r in existing if not _internal(r.name) and r.name != own_role]
                if len(own) >= self._max_roles:
                    raise Conflict(
                        f"session {session_id} has {len(own)} roles of its own, the most it "
                        "may have; reuse one (GRANT it what it needs)"
                    )
                made = await self._neon.create_role(project_id, branch_id, name)
            except NeonError as error:
                raise ControlPlaneFailed(
                    f"creating role {name!r} failed: {describe(error)}"
                ) from error
            password = made.role.password
            assert password is not None  # noqa: S101 - a create answer carries it
            uri = self._secrets.decrypt(row.encrypted_connection_secret)
            view = RoleView(
                name=name, sql_name=name + suffix, owner=False, created_at=made.role.created_at
            )
            async with self._db() as db:
                db.add(
                    event(
                        actor,
                        "role.create",
                        at=self._clock(),
                        session_id=session_id,
                        target_kind="role",
                        target_id=name,
                        operation_ids=operation_ids(made),
                    )
                )
                await db.commit()
        login = name if by_name else view.sql_name
        return view, with_login(uri, login, password.get_secret_value())

    async def extensions(self, session_id: uuid.UUID) -> builtins.list[ExtensionView]:
        """Every extension the session's server offers, whether installed and whether the
        session's role may install it. Reads the database as the session's own role (it
        wakes a suspended compute, as any SQL does)."""
        result = await self._sql.run(session_id, _EXTENSIONS, max_rows=10_000)
        return [
            ExtensionView(
                name=str(name),
                default_version=None if default is None else str(default),
                installed_version=None if installed is None else str(installed),
                installable=bool(installable),
                comment=None if comment is None else str(comment),
            )
            for name, default, installed, installable, comment in result.rows
        ]

    async def _suffix(
        self, session_id: uuid.UUID, role_name: str, encrypted_uri: bytes | None
    ) -> tuple[str, bool]:
        """What the control plane appends to a role's name in the cluster (nothing on Neon;
        the project's suffix on the local plane, whose roles are cluster-wide), and whether a
        connection string logs in by the API's name (Neon, and the local plane's proxy) rather
        than by the name in SQL. When the login name says nothing, the session's database is
        asked once (`current_user`) and the answer kept: it never changes for a session."""
        if encrypted_uri is None:
            return "", True
        user = unquote(urlsplit(self._secrets.decrypt(encrypted_uri)).username or "")
        if user != role_name:
            return (user[len(role_name) :] if user.startswith(role_name) else ""), False
        known = self._suffixes.get(session_id)
        if known is None:
            result = await self._sql.run(session_id, "SELECT current_user", max_rows=1)
            current = str(result.rows[0][0])
            known = current[len(role_name) :] if current.startswith(role_name) else ""
            self._suffixes[session_id] = known
        return known, True


def _placed(row: AgentSession) -> tuple[str, str, str]:
    """A ready session's project, live branch and role names."""
    if row.project_id is None or row.live_branch_id is None or row.role_name is None:
        raise Conflict(f"session {row.id} has no database")
    return row.project_id, row.live_branch_id, row.role_name


def _internal(name: str) -> bool:
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES)
