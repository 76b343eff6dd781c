"""The Data API on the local control plane: per-database configuration, roles and grants; the
REST requests themselves are served by `_rest`.

Roles. SQL written for Neon names `authenticated` and `anonymous` (`GRANT ... TO authenticated`,
`CREATE POLICY ... TO authenticated`), so both exist cluster-wide as NOLOGIN roles with no
privilege outside what a database's owner grants them inside that database. Roles are
cluster-wide here, so requests never run as them directly: each project gets
`lpa_<key>_authenticated` and `lpa_<key>_anonymous` (NOLOGIN, INHERIT, members of the shared
ones, so grants and policies for `authenticated` apply to them) and `lpa_<key>_authenticator`
(LOGIN, NOINHERIT, like PostgREST's authenticator). The authenticator inherits only the project's
group role (CONNECT on the project's databases, nothing else) and may `SET ROLE` to its own
project's two roles but inherits neither: a request runs as the authenticator with `SET LOCAL
ROLE`, so even a trigger's `RESET ROLE` falls back to a role that can reach nothing outside the
project, never to a superuser.

Set-up inside a database runs as the project's service role (see `_addons`), which owns the
`auth` schema and its functions; the grants only a schema's owner can give (USAGE on `public`,
default privileges) run with `SET LOCAL ROLE` to the database's owner, which the service role may
do but does not inherit, in statements that run no code of the tenant's.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from joserfc.jwk import KeySet
from psycopg import AsyncConnection, errors, sql
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._addons import AddonRecord, AddonsBase, data_api_roles, service_role
from ._errors import BadRequest, Conflict, NotFound
from ._models import ProjectRecord, Record, RoleRecord, new_password, now
from ._neon_auth import NeonAuthRecord
from ._store import Tx

JSON = dict[str, Any]
SHARED_ROLES = ("authenticated", "anonymous")
# Run by the service role after `_claim_schema`. Callers run these with their own search_path
# (they are SECURITY INVOKER and inlined into policies), so every name in them is qualified.
_AUTH_SCHEMA = """
CREATE OR REPLACE FUNCTION auth.session() RETURNS pg_catalog.jsonb LANGUAGE sql STABLE
    AS $$ SELECT nullif(pg_catalog.current_setting('request.jwt.claims', true), '')
                 ::pg_catalog.jsonb $$;
CREATE OR REPLACE FUNCTION auth.user_id() RETURNS pg_catalog.text LANGUAGE sql STABLE
    AS $$ SELECT auth.session() OPERATOR(pg_catalog.->>) 'sub' $$;
GRANT USAGE ON SCHEMA auth TO PUBLIC;
"""
_DEFAULT_GRANTS = """
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO authenticated;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO authenticated;
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO authenticated;
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO authenticated;
"""


class DataApiRecord(AddonRecord):
    """The Data API of one database of a branch; `id` is `<branch id>/<database name>`."""

    kind: ClassVar[str] = "data_api"

    db_name: str
    auth_provider: str = "neon_auth"
    jwt_audience: str | None = None
    settings: JSON = Field(default_factory=dict)


class DataApiLoginRecord(Record):
    """The password of a project's `lpa_<key>_authenticator`; `id` is the project id."""

    kind: ClassVar[str] = "data_api_login"

    password: str = Field(repr=False)


# --- request bodies -------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class DataApiSettingsSpec(_Body):
    db_aggregates_enabled: bool | None = None
    db_anon_role: str | None = None
    db_extra_search_path: str | None = None
    db_max_rows: int | None = Field(default=None, ge=1)
    db_schemas: list[str] | None = Field(default=None, min_length=1)
    jwt_role_claim_key: str | None = Field(default=None, pattern=r"^(\.[A-Za-z0-9_-]+)+$")
    jwt_cache_max_lifetime: int | None = Field(default=None, ge=0)
    openapi_mode: str | None = None
    server_cors_allowed_origins: str | None = None
    server_timing_enabled: bool | None = None

    @field_validator("db_anon_role")
    @classmethod
    def _only_anonymous(cls, value: str | None) -> str | None:
        if value is not None and value != "anonymous":
            raise ValueError("only 'anonymous' is available on the local control plane")
        return value

    @field_validator("db_schemas")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if not 1 <= len(name) <= 63:  # noqa: PLR2004 - PostgreSQL's NAMEDATALEN - 1
                raise ValueError(f"schema name {name!r} must be 1 to 63 characters")
        return value


class DataApiCreateBody(_Body):
    auth_provider: Literal["neon_auth", "external"] | None = None
    jwks_url: str | None = None
    provider_name: str | None = None
    jwt_audience: str | None = None
    add_default_grants: bool = False
    skip_auth_schema: bool = False
    settings: DataApiSettingsSpec | None = None


class DataApiUpdateBody(_Body):
    settings: DataApiSettingsSpec | None = None


@dataclass(frozen=True)
class DataApiTarget:
    """Everything a Data API request needs, read once per request."""

    conninfo: str = field(repr=False)  # the authenticator's, to the physical database
    authenticated_role: str
    anonymous_role: str
    keys: KeySet | None
    audience: str | None
    schemas: list[str]
    max_rows: int | None
    role_claim_path: list[str]
    count_sent: Callable[[int], None] = lambda _size: None  # bytes of response bodies


def data_api_url(root: str, address: str, database: str) -> str:
    """Like Neon's `https://<endpoint>.apirest.<region>/<database>/rest/v1`: it names the
    endpoint (`AddonsBase._address`), not the branch, so it follows restores."""
    return f"{root.rstrip('/')}/data-api/{address}/{quote(database, safe='')}/rest/v1"


class DataApiMixin(AddonsBase):
    async def create_data_api(
        self, project_id: str, branch_id: str, database: str, body: DataApiCreateBody, *, root: str
    ) -> JSON:
        if body.auth_provider == "external" or body.jwks_url:
            raise BadRequest(
                "auth_provider: external JWT providers are not available on the local control "
                "plane; use neon_auth (enable Neon Auth on the branch)"
            )
        settings = body.settings.model_dump(exclude_none=True) if body.settings else {}
        async with self._mutation(project_id) as m:
            p = await self._project(m.tx, project_id)
            await self._branch(m.tx, project_id, branch_id)
            d = await self._database(m.tx, project_id, branch_id, database)
            if await m.tx.get(DataApiRecord, f"{branch_id}/{database}") is not None:
                raise Conflict(f"the Data API is already enabled for database {database!r}")
            owner = await self._owner_physical(m.tx, project_id, d)
            await self._ensure_roles(m.tx, p)
            await self._prepare_database(
                m.tx,
                p,
                d.physical,
                owner,
                schemas=settings.get("db_schemas", ["public"]),
                auth_schema=not body.skip_auth_schema,
                default_grants=body.add_default_grants,
            )
            await m.tx.put(
                DataApiRecord(
                    id=f"{branch_id}/{database}",
                    project_id=project_id,
                    branch_id=branch_id,
                    db_name=database,
                    jwt_audience=body.jwt_audience,
                    settings=settings,
                )
            )
            address = await self._address(m.tx, project_id, branch_id)
        return {"url": data_api_url(root, address, database)}

    async def get_data_api(
        self, project_id: str, branch_id: str, database: str, *, root: str
    ) -> JSON:
        async with self._store.tx() as tx:
            record = await self._data_api(tx, project_id, branch_id, database)
            d = await self._database(tx, project_id, branch_id, database)
            address = await self._address(tx, project_id, branch_id)
        async with self._service(project_id, d.physical) as conn:
            cur = await conn.execute(
                "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname !~ '^pg_'"
                " AND nspname <> 'information_schema' ORDER BY nspname"
            )
            schemas = [str(row[0]) for row in await cur.fetchall()]
        return {
            "url": data_api_url(root, address, database),
            "status": "ready",
            "settings": {"db_schemas": ["public"], "db_anon_role": "anonymous", **record.settings},
            "available_schemas": schemas,
        }

    async def update_data_api(
        self, project_id: str, branch_id: str, database: str, body: DataApiUpdateBody
    ) -> JSON:
        """Changes settings. The schema cache is always fresh here (every request reads the
        catalog), so Neon's refresh is implicit; newly exposed schemas get their USAGE grant."""
        async with self._mutation(project_id) as m:
            record = await self._data_api(m.tx, project_id, branch_id, database)
            d = await self._database(m.tx, project_id, branch_id, database)
            if body.settings is not None:
                record.settings = {**record.settings, **body.settings.model_dump(exclude_none=True)}
                record.updated_at = now()
            owner = await self._owner_physical(m.tx, project_id, d)
            await self._prepare_database(
                m.tx,
                await self._project(m.tx, project_id),
                d.physical,
                owner,
                schemas=record.settings.get("db_schemas", ["public"]),
                auth_schema=False,
                default_grants=False,
            )
            await m.tx.put(record)
        return {}

    async def delete_data_api(self, project_id: str, branch_id: str, database: str) -> JSON:
        async with self._mutation(project_id) as m:
            await m.tx.delete(await self._data_api(m.tx, project_id, branch_id, database))
        return {}

    async def data_api_target(self, address: str, database: str) -> DataApiTarget:
        """What a Data API request at `data_api_url(..., address, database)` runs against."""
        project_id, branch_id = await self.locate(address)
        async with self._store.tx() as tx:
            p = await self._project(tx, project_id)
            record = await self._data_api(tx, project_id, branch_id, database)
            d = await self._database(tx, project_id, branch_id, database)
            login = await tx.get(DataApiLoginRecord, project_id)
            auth = await tx.get(NeonAuthRecord, branch_id)
        if login is None:
            raise NotFound(f"the Data API is not enabled for database {database!r}")
        authenticator, authenticated, anonymous = data_api_roles(p.key)
        settings = record.settings
        return DataApiTarget(
            conninfo=self._login(authenticator, login.password, d.physical),
            authenticated_role=authenticated,
            anonymous_role=anonymous,
            keys=None if auth is None else auth.public_keys(),
            audience=record.jwt_audience,
            schemas=settings.get("db_schemas", ["public"]),
            max_rows=settings.get("db_max_rows"),
            role_claim_path=settings.get("jwt_role_claim_key", ".role").split(".")[1:],
            count_sent=functools.partial(self.count_transfer, project_id),
        )

    # --- physical ------------------------------------------------------------------------

    async def _ensure_roles(self, tx: Tx, p: ProjectRecord) -> None:
        login = await tx.get(DataApiLoginRecord, p.id)
        if login is None:
            login = DataApiLoginRecord(id=p.id, project_id=p.id, password=new_password())
            await tx.put(login)
        authenticator, authenticated, anonymous = data_api_roles(p.key)
        ident = sql.Identifier
        async with self._catalog() as conn:
            for shared in SHARED_ROLES:
                # Two projects may create a shared role at the same time.
                with contextlib.suppress(errors.DuplicateObject):
                    if not await _role_exists(conn, shared):
                        await conn.execute(
                            sql.SQL("CREATE ROLE {} NOLOGIN NOINHERIT").format(ident(shared))
                        )
            for own, shared in ((authenticated, "authenticated"), (anonymous, "anonymous")):
                if not await _role_exists(conn, own):
                    await conn.execute(
                        sql.SQL("CREATE ROLE {} NOLOGIN INHERIT IN ROLE {}").format(
                            ident(own), ident(shared)
                        )
                    )
            if not await _role_exists(conn, authenticator):
                await conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN NOINHERIT PASSWORD {}").format(
                        ident(authenticator), sql.Literal(login.password)
                    )
                )
            await conn.execute(
                sql.SQL("GRANT {} TO {} WITH INHERIT TRUE, SET FALSE").format(
                    ident(p.group_role), ident(authenticator)
                )
            )
            await conn.execute(
                sql.SQL("GRANT {}, {} TO {} WITH INHERIT FALSE, SET TRUE").format(
                    ident(authenticated), ident(anonymous), ident(authenticator)
                )
            )
        # Requests run as the authenticator: it gets a tenant role's limits.
        await self._engine.govern_roles([authenticator])

    async def _prepare_database(
        self,
        tx: Tx,
        p: ProjectRecord,
        physical: str,
        owner: str,
        *,
        schemas: list[str],
        auth_schema: bool,
        default_grants: bool,
    ) -> None:
        ident = sql.Identifier
        project_roles = tuple(r.physical for r in await tx.list(RoleRecord, p.id))
        login = await self._ensure_service(tx, p, owners=project_roles)
        role = service_role(p.key)
        async with (
            await self._service_connect(p, login, physical) as conn,
            conn.transaction(),
        ):
            if auth_schema:
                await self._claim_schema(conn, "auth", role)
                await conn.execute(_AUTH_SCHEMA)
            # Grants only an owner can give are made as that owner, borrowed with SET LOCAL ROLE
            # for them alone: GRANT and ALTER DEFAULT PRIVILEGES run no user code. A schema that
            # belongs to no role of the project gets no grant.
            cur = await conn.execute(
                "SELECT nspname, nspowner::pg_catalog.regrole::text FROM pg_catalog.pg_namespace"
                " WHERE nspname = ANY(%s) ORDER BY nspname",
                (schemas,),
            )
            for name, schema_owner in await cur.fetchall():
                if schema_owner not in (*project_roles, role):
                    continue
                await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(ident(schema_owner)))
                await conn.execute(
                    sql.SQL("GRANT USAGE ON SCHEMA {} TO authenticated, anonymous").format(
                        ident(name)
                    )
                )
            if default_grants:
                await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(ident(owner)))
                await conn.execute(sql.SQL(_DEFAULT_GRANTS).format(owner=ident(owner)))
            await conn.execute("RESET ROLE")

    async def _data_api(
        self, tx: Tx, project_id: str, branch_id: str, database: str
    ) -> DataApiRecord:
        await self._project(tx, project_id)
        await self._branch(tx, project_id, branch_id)
        record = await tx.get(DataApiRecord, f"{branch_id}/{database}")
        if record is None:
            raise NotFound(
                f"the Data API is not enabled for database {database!r} on branch {branch_id}"
            )
        return record


async def _role_exists(conn: AsyncConnection[Any], name: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    return await cur.fetchone() is not None
