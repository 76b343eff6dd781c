"""Per-branch add-ons (Neon Auth, the Data API) and how they follow a branch's lineage.

Their data lives in the branch's databases (`neon_auth`, grants, RLS policies) and is copied with
them; their configuration lives in plane state, keyed by branch. A new branch, a snapshot restore
and a finalized restore therefore copy the configuration of the branch whose data they copy, with
the same signing key: a session's users stay signed in across a checkpoint restore, as their rows
in `neon_auth` do.

Inside a project's database the tenant runs arbitrary SQL as the database's owner, so the plane
never works there as a superuser: it logs in as the project's `lpa_<key>_service`, a plain LOGIN
role the tenant cannot become (no membership, no password), which owns what the add-ons create,
with `search_path` pinned to `pg_catalog, pg_temp` so nothing the tenant defines can stand in
for a built-in. A schema name the tenant took first is refused, never reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Self

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo
from pydantic import Field

from ._base import PlaneBase
from ._errors import Conflict, LocalPlaneError, NotFound
from ._models import (
    BranchRecord,
    DatabaseRecord,
    EndpointRecord,
    ProjectRecord,
    Record,
    SnapshotRecord,
    SnapshotRestoreBody,
    new_password,
    now,
)
from ._store import Tx

JSON = dict[str, Any]


class SchemaTaken(Conflict):
    """409: a schema an add-on needs exists already and is not the plane's."""


class Unauthorized(LocalPlaneError):  # noqa: N818 - named like NotFound and Conflict
    status = 401
    code = "UNAUTHORIZED"


class ServiceLoginRecord(Record):
    """The password of a project's `lpa_<key>_service`; `id` is the project id."""

    kind: ClassVar[str] = "service_login"

    password: str = Field(repr=False)


# Every connection the plane opens into a project's database: built-ins only, then its own
# temporary schema (which no other role can write), so a tenant's `public.lower(text)` or a
# better-matching operator is never picked up by the plane's statements.
SAFE_OPTIONS = "-c search_path=pg_catalog,pg_temp -c default_transaction_read_only=off"

# What a schema the plane creates may hold that someone else owns: relations, functions, types.
# (Plane connections pin search_path to pg_catalog, so its names need no qualification here.)
_FOREIGN_OBJECTS = """
SELECT 'relation ' || c.oid::regclass::text, c.relowner::regrole::text FROM pg_class c
 WHERE c.relnamespace = %(schema)s::regnamespace AND c.relowner <> %(role)s::regrole
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text, p.proowner::regrole::text FROM pg_proc p
 WHERE p.pronamespace = %(schema)s::regnamespace AND p.proowner <> %(role)s::regrole
UNION ALL
SELECT 'type ' || t.oid::regtype::text, t.typowner::regrole::text FROM pg_type t
 WHERE t.typnamespace = %(schema)s::regnamespace AND t.typowner <> %(role)s::regrole
 LIMIT 1
"""


class AddonRecord(Record):
    """Configuration of an add-on on one branch; `id` starts with the branch id."""

    branch_id: str

    def for_branch(self, branch_id: str) -> Self:
        suffix = self.id.removeprefix(self.branch_id)
        stamp = now()
        return self.model_copy(
            update={
                "id": branch_id + suffix,
                "branch_id": branch_id,
                "created_at": stamp,
                "updated_at": stamp,
            }
        )


def addon_kinds() -> tuple[type[AddonRecord], ...]:
    """Every add-on record class; defined where each add-on is (imported lazily: no cycle)."""
    from ._data_api import DataApiRecord  # noqa: PLC0415
    from ._neon_auth import NeonAuthRecord  # noqa: PLC0415

    return (NeonAuthRecord, DataApiRecord)


class AddonsBase(PlaneBase):
    """Lookups, the project's service role and the plane's connections shared by the add-ons."""

    # --- where an add-on is reached ----------------------------------------------------------

    async def _address(self, tx: Tx, project_id: str, branch_id: str) -> str:
        """What the add-ons' URLs name for a branch: its compute endpoint (read-write first), as
        Neon's hostnames do, so a finalized restore (which moves the endpoint to the restored
        branch) leaves them pointing at the live data; the branch itself when it has none."""
        endpoints = await self._branch_endpoints(tx, project_id, branch_id)
        endpoints.sort(key=lambda e: (e.type != "read_write", e.created_at))
        return endpoints[0].id if endpoints else branch_id

    async def locate(self, address: str) -> tuple[str, str]:
        """The project and branch an add-on URL's address (an endpoint or branch id) names now."""
        async with self._store.tx() as tx:
            endpoint = await tx.get(EndpointRecord, address)
            if endpoint is not None:
                return endpoint.project_id, endpoint.branch_id
            branch = await tx.get(BranchRecord, address)
            if branch is not None:
                return branch.project_id, branch.id
        raise NotFound(f"no endpoint or branch {address!r}")

    @asynccontextmanager
    async def _catalog(self) -> AsyncIterator[AsyncConnection]:
        """An autocommit superuser connection to the cluster's `postgres` database, for
        cluster-wide catalog work (roles, memberships); never to a project's database."""
        async with await AsyncConnection.connect(
            self._server.conninfo("postgres"), autocommit=True, options=SAFE_OPTIONS
        ) as conn:
            yield conn

    def _login(self, role: str, password: str, physical: str) -> str:
        return make_conninfo(
            host=self._server.host,
            port=self._server.port,
            user=role,
            password=password,
            dbname=physical,
        )

    @asynccontextmanager
    async def _service(self, project_id: str, physical: str) -> AsyncIterator[AsyncConnection]:
        """An autocommit connection to a project database as the project's service role,
        (re)creating the role first when it is missing (projects from before it existed)."""
        async with self._store.tx() as tx:
            p = await self._project(tx, project_id)
            login = await tx.get(ServiceLoginRecord, project_id)
        if login is None:
            async with self._store.tx(project_id) as tx:
                login = await self._ensure_service(tx, p)
        try:
            conn = await self._service_connect(p, login, physical)
        except psycopg.OperationalError:
            # The role went missing (a crash between record and role) or lost its password.
            async with self._store.tx(project_id) as tx:
                await self._ensure_service(tx, p)
            conn = await self._service_connect(p, login, physical)
        async with conn:
            yield conn

    async def _service_connect(
        self, p: ProjectRecord, login: ServiceLoginRecord, physical: str
    ) -> AsyncConnection:
        conninfo = self._login(service_role(p.key), login.password, physical)
        return await AsyncConnection.connect(conninfo, autocommit=True, options=SAFE_OPTIONS)

    async def _ensure_service(
        self, tx: Tx, p: ProjectRecord, *, owners: tuple[str, ...] = ()
    ) -> ServiceLoginRecord:
        """The project's service role exists with its stored password. It inherits the project's
        group role (CONNECT and CREATE on the project's databases) and may `SET ROLE` to each of
        `owners` (for grants only an object's owner can give) without inheriting them; no role
        of the tenant is a member of it."""
        login = await tx.get(ServiceLoginRecord, p.id)
        if login is None:
            login = ServiceLoginRecord(id=p.id, project_id=p.id, password=new_password())
            await tx.put(login)
        role = sql.Identifier(service_role(p.key))
        async with self._catalog() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (service_role(p.key),)
            )
            verb = "ALTER" if await cur.fetchone() is not None else "CREATE"
            await conn.execute(
                sql.SQL(
                    "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION"
                    " NOBYPASSRLS CONNECTION LIMIT 20 PASSWORD {}"
                ).format(sql.SQL(verb), role, sql.Literal(login.password))
            )
            await conn.execute(
                sql.SQL("GRANT {} TO {} WITH INHERIT TRUE, SET FALSE").format(
                    sql.Identifier(p.group_role), role
                )
            )
            for owner in owners:
                await conn.execute(
                    sql.SQL("GRANT {} TO {} WITH INHERIT FALSE, SET TRUE").format(
                        sql.Identifier(owner), role
                    )
                )
        return login

    async def _adopt(self, conn: AsyncConnection, schema: str, role: str) -> bool:
        """Hands `schema` over to `role` when it and everything in it belong to superusers:
        what earlier agentdb versions made as the superuser. Ownership changes run no user code;
        a schema holding anything of the tenant's is left alone (and refused by the caller)."""
        cur = await conn.execute(
            "SELECT pg_catalog.current_database()"
            " FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner"
            " WHERE n.nspname = %s AND o.rolsuper AND NOT EXISTS ("
            "   SELECT 1 FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
            "    WHERE c.relnamespace = n.oid AND NOT r.rolsuper"
            "   UNION ALL SELECT 1 FROM pg_proc f JOIN pg_roles r ON r.oid = f.proowner"
            "    WHERE f.pronamespace = n.oid AND NOT r.rolsuper"
            "   UNION ALL SELECT 1 FROM pg_type t JOIN pg_roles r ON r.oid = t.typowner"
            "    WHERE t.typnamespace = n.oid AND NOT r.rolsuper AND t.typrelid = 0)",
            (schema,),
        )
        row = await cur.fetchone()
        if row is None:
            return False
        ident, new_owner = sql.Identifier, sql.Identifier(role)
        conninfo = self._server.conninfo(str(row[0]))
        async with (
            await AsyncConnection.connect(conninfo, autocommit=True, options=SAFE_OPTIONS) as su,
            su.transaction(),
        ):
            await su.execute(
                sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(ident(schema), new_owner)
            )
            cur = await su.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relnamespace = %s::regnamespace"
                " AND c.relkind IN ('r', 'p', 'v', 'm')",
                (schema,),
            )
            for (table,) in await cur.fetchall():
                await su.execute(
                    sql.SQL("ALTER TABLE {}.{} OWNER TO {}").format(
                        ident(schema), ident(str(table)), new_owner
                    )
                )
            cur = await su.execute(
                "SELECT f.oid::regprocedure::text FROM pg_proc f"
                " WHERE f.pronamespace = %s::regnamespace",
                (schema,),
            )
            for (function,) in await cur.fetchall():
                # regprocedure's text is a qualified signature PostgreSQL itself printed.
                await su.execute(
                    sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.SQL(function), new_owner)
                )
        return True

    async def _claim_schema(self, conn: AsyncConnection, schema: str, role: str) -> None:
        """Creates `schema` owned by `role` (the connection's user), or checks that the one
        there is: a schema or an object in it that someone else owns is refused (409)."""
        cur = await conn.execute(
            "SELECT nspowner::pg_catalog.regrole::text FROM pg_catalog.pg_namespace"
            " WHERE nspname = %s",
            (schema,),
        )
        row = await cur.fetchone()
        if row is None:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            return
        if row[0] != role and await self._adopt(conn, schema, role):
            return
        if row[0] != role:
            raise SchemaTaken(
                f"schema {schema} already exists and is owned by {row[0]}, not by the control "
                f"plane: drop or rename it, then try again"
            )
        cur = await conn.execute(_FOREIGN_OBJECTS, {"schema": schema, "role": role})
        foreign = await cur.fetchone()
        if foreign is not None:
            raise SchemaTaken(
                f"schema {schema} holds {foreign[0]}, owned by {foreign[1]}, not by the control "
                f"plane: drop or rename it, then try again"
            )

    async def _database(
        self, tx: Tx, project_id: str, branch_id: str, name: str | None
    ) -> DatabaseRecord:
        """`name` on the branch; without a name the branch's `neondb`, else its first one."""
        dbs = await self._databases(tx, project_id, branch_id)
        if name is not None:
            found = next((d for d in dbs if d.name == name), None)
            if found is None:
                raise NotFound(f"database {name!r} not found on branch {branch_id}")
            return found
        if not dbs:
            raise NotFound(f"branch {branch_id} has no database")
        return next((d for d in dbs if d.name == "neondb"), dbs[0])

    async def _owner_physical(self, tx: Tx, project_id: str, d: DatabaseRecord) -> str:
        return (await self._role(tx, project_id, d.owner_name)).physical


class AddonLineage(AddonsBase):
    """The add-ons' part in the core's calls (its hooks): add-on configuration follows a branch
    made or restored from one that has it, and a deleted project's add-on roles go with it."""

    async def _inherit(self, project_id: str, source: str | None, target: str) -> None:
        if source is None:
            return
        async with self._store.tx(project_id) as tx:
            for kind in addon_kinds():
                mine = [r for r in await tx.list(kind, project_id) if r.branch_id == target]
                await tx.delete(*mine)
                theirs = [r for r in await tx.list(kind, project_id) if r.branch_id == source]
                await tx.put(*(r.for_branch(target) for r in theirs))

    async def _branch_created(self, project_id: str, parent_id: str, branch_id: str) -> None:
        await self._inherit(project_id, parent_id, branch_id)

    async def _snapshot_restored(
        self, project_id: str, snapshot: SnapshotRecord, body: SnapshotRestoreBody, branch_id: str
    ) -> None:
        # A finalized restore replaces the target: the live app's configuration goes on.
        source = (
            (body.target_branch_id or snapshot.source_branch_id)
            if body.finalize_restore
            else snapshot.source_branch_id
        )
        await self._inherit(project_id, source, branch_id)

    async def _restore_finalized(self, project_id: str, target_id: str, branch_id: str) -> None:
        await self._inherit(project_id, target_id, branch_id)

    async def _project_deleted(self, project: ProjectRecord) -> None:
        # After the project's own cleanup, which drops the databases holding grants to them.
        pending = list(self._tasks)

        async def drop() -> None:
            if pending:
                await asyncio.wait(pending)
            await self._engine.drop_roles(*data_api_roles(project.key), service_role(project.key))

        task = asyncio.create_task(drop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _more_orphans(self) -> list[str]:
        async with self._store.tx() as tx:
            keys = {p.key for p in await tx.list(ProjectRecord)}
        orphans = [
            r for r in await self._engine.list_roles(ROLE_PREFIX) if r.split("_")[1] not in keys
        ]
        if orphans:
            await self._engine.drain_trash()  # it may hold objects they own
        await self._engine.drop_roles(*orphans)
        return orphans


# Per-project Data API roles: `lpa_<project key>_<name>`. They do not start with `lp_`, so the
# core's orphan collection (which takes every `lp_*` role for a project's group) leaves them be.
ROLE_PREFIX = "lpa_"


def data_api_role(key: str, name: str) -> str:
    return f"{ROLE_PREFIX}{key}_{name}"


def service_role(key: str) -> str:
    """The login role the plane itself uses inside the project's databases."""
    return data_api_role(key, "service")


def data_api_roles(key: str) -> tuple[str, str, str]:
    """The login role the Data API connects as, then the two roles it switches to."""
    return (
        data_api_role(key, "authenticator"),
        data_api_role(key, "authenticated"),
        data_api_role(key, "anonymous"),
    )
