"""Endpoints, roles, databases, connection URIs and operations of the local control plane.

An endpoint is the door to its branch's databases: suspending it closes them to clients
(`ALLOW_CONNECTIONS false` and terminated sessions), starting it opens them again, and deleting
a branch's last endpoint closes them until an endpoint is created.

A `read_only` endpoint (a read replica on Neon) has no standby of its own here: the branch's
databases live once in the one cluster, so its connection URI reaches the same database as the
read_write one and is read-only only by `default_transaction_read_only=on` in the URI's
`options`. A client can turn that off (`SET default_transaction_read_only = off`,
`BEGIN READ WRITE`): it keeps well-behaved clients from writing, it is no security boundary.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from . import _render as render
from . import _steps as step
from ._base import Mutation, PlaneBase, check_cu
from ._branches import new_physical
from ._data_api import DataApiRecord
from ._errors import (
    BadRequest,
    Conflict,
    Locked,
    NotFound,
    PreconditionFailed,
    QuotaExceeded,
)
from ._models import (
    BranchRecord,
    DatabaseCreateBody,
    DatabaseRecord,
    DatabaseUpdateBody,
    EndpointCreateBody,
    EndpointRecord,
    EndpointUpdateBody,
    OperationRecord,
    RoleCreateBody,
    RoleRecord,
    neon_id,
    new_password,
    now,
)
from ._neon_auth import NeonAuthRecord
from ._store import STATE_DATABASE

JSON = dict[str, Any]
READ_ONLY_OPTIONS = "-c default_transaction_read_only=on"
SAFE_OPTIONS = "-c search_path=pg_catalog,pg_temp -c default_transaction_read_only=off"


@dataclass(frozen=True, slots=True)
class Route:
    """A proxy connection's target: the physical role and database behind Neon's names."""

    project_id: str
    role: str | None
    password: str | None = field(repr=False)
    database: str | None
    read_only: bool


class PlaneCompute(PlaneBase):
    # --- endpoints ---------------------------------------------------------------------------

    async def list_endpoints(self, project_id: str, branch_id: str | None = None) -> JSON:
        async with self._store.tx() as tx:
            p = await self._project(tx, project_id)
            if branch_id is not None:
                await self._branch(tx, project_id, branch_id)
            endpoints = await tx.list(EndpointRecord, project_id)
        if branch_id is not None:
            endpoints = [e for e in endpoints if e.branch_id == branch_id]
        return {"endpoints": [self._endpoint_json(e, p) for e in endpoints]}

    async def get_endpoint(self, project_id: str, endpoint_id: str) -> JSON:
        async with self._store.tx() as tx:
            p = await self._project(tx, project_id)
            e = await self._endpoint(tx, project_id, endpoint_id)
        return {"endpoint": self._endpoint_json(e, p)}

    async def create_endpoint(self, project_id: str, body: EndpointCreateBody) -> JSON:
        spec = body.endpoint
        check_cu(spec.model_dump(exclude_none=True), "endpoint")
        async with self._mutation(project_id) as m:
            p = await self._project(m.tx, project_id)
            if spec.region_id is not None and spec.region_id != p.region_id:
                raise BadRequest(
                    f"endpoint.region_id: only the project's region {p.region_id!r} is permitted"
                )
            b = await self._branch(m.tx, project_id, spec.branch_id)
            existing = await self._branch_endpoints(m.tx, project_id, b.id)
            if spec.type == "read_write" and any(e.type == "read_write" for e in existing):
                raise BadRequest(
                    f"endpoint.type: branch {b.id} already has a read_write endpoint; "
                    "a branch can have at most one (add read_only endpoints instead)"
                )
            if not spec.disabled and p.quota_exceeded:
                raise QuotaExceeded(p.quota_exceeded)
            defaults = p.default_endpoint_settings
            e = EndpointRecord(
                id=neon_id("ep"),
                project_id=project_id,
                branch_id=b.id,
                type=spec.type,
                name=spec.name,
                autoscaling_limit_min_cu=spec.autoscaling_limit_min_cu
                or defaults.get("autoscaling_limit_min_cu", 0.25),
                autoscaling_limit_max_cu=spec.autoscaling_limit_max_cu
                or defaults.get("autoscaling_limit_max_cu", 0.25),
                suspend_timeout_seconds=spec.suspend_timeout_seconds
                if spec.suspend_timeout_seconds is not None
                else defaults.get("suspend_timeout_seconds", 0),
                settings=spec.settings or {},
                disabled=bool(spec.disabled),
            )
            check_cu(
                {
                    "autoscaling_limit_min_cu": e.autoscaling_limit_min_cu,
                    "autoscaling_limit_max_cu": e.autoscaling_limit_max_cu,
                },
                "endpoint",
            )
            if e.disabled:
                e.current_state, e.suspended_at = "idle", now()
            if b.computeless:
                b.computeless = False
                b.updated_at = now()
                await m.tx.put(b)
            # The branch's databases take clients again unless a compute of it is suspended.
            await self._door(m, e, open_=not any(x.door_closed for x in [*existing, e]))
            await m.tx.put(e)
            ops = [
                OperationRecord.new(project_id, "start_compute", branch_id=b.id, endpoint_id=e.id)
            ]
            await m.start(ops, "steps", project_id=project_id, steps=m.steps)
        return {
            "endpoint": self._endpoint_json(e, p),
            "operations": [render.operation(o) for o in ops],
        }

    async def delete_endpoint(self, project_id: str, endpoint_id: str) -> JSON:
        """Deletes the endpoint; the branch's last endpoint takes its door with it (its
        databases refuse clients, as a suspend does, until an endpoint is created)."""
        async with self._mutation(project_id) as m:
            p = await self._project(m.tx, project_id)
            e = await self._endpoint(m.tx, project_id, endpoint_id)
            b = await self._branch(m.tx, project_id, e.branch_id)
            others = [
                x for x in await self._branch_endpoints(m.tx, project_id, b.id) if x.id != e.id
            ]
            await m.tx.delete(e)
            if not others:
                b.computeless = True
                b.updated_at = now()
                await m.tx.put(b)
                await self._door(m, e, open_=False)
            elif e.door_closed and not any(x.door_closed for x in others):
                await self._door(m, e, open_=True)
            ops = [
                OperationRecord.new(project_id, "suspend_compute", branch_id=b.id, endpoint_id=e.id)
            ]
            await m.start(ops, "steps", project_id=project_id, steps=m.steps)
        return {
            "endpoint": self._endpoint_json(e, p),
            "operations": [render.operation(o) for o in ops],
        }

    async def restart_endpoint(self, project_id: str, endpoint_id: str) -> JSON:
        """Suspends and starts the endpoint: its branch's sessions are ended and it takes
        clients again (unless another compute of the branch is suspended)."""
        async with self._mutation(project_id) as m:
            p = await self._project(m.tx, project_id)
            e = await self._endpoint(m.tx, project_id, endpoint_id)
            if e.disabled:
                raise BadRequest(
                    "endpoint_id: the endpoint is disabled; enable it with PATCH first"
                )
            if p.quota_exceeded:
                raise QuotaExceeded(p.quota_exceeded)
            others = [
                x
                for x in await self._branch_endpoints(m.tx, project_id, e.branch_id)
                if x.id != e.id
            ]
            await self._door(m, e, open_=False)
            e.current_state, e.auto_suspended = "active", False
            e.suspended_at = e.started_at = e.updated_at = now()
            if not any(x.door_closed for x in others):
                await self._door(m, e, open_=True)
            await m.tx.put(e)
            ops = [
                OperationRecord.new(project_id, action, branch_id=e.branch_id, endpoint_id=e.id)
                for action in ("suspend_compute", "start_compute")
            ]
            await m.start(ops, "steps", project_id=project_id, steps=m.steps)
        return {
            "endpoint": self._endpoint_json(e, p),
            "operations": [render.operation(o) for o in ops],
        }

    async def update_endpoint(
        self, project_id: str, endpoint_id: str, body: EndpointUpdateBody
    ) -> JSON:
        spec = body.endpoint
        async with self._mutation(project_id) as m:
            p = await self._project(m.tx, project_id)
            e = await self._endpoint(m.tx, project_id, endpoint_id)
            changes = spec.model_dump(exclude_none=True)
            check_cu(
                {
                    "autoscaling_limit_min_cu": changes.get(
                        "autoscaling_limit_min_cu", e.autoscaling_limit_min_cu
                    ),
                    "autoscaling_limit_max_cu": changes.get(
                        "autoscaling_limit_max_cu", e.autoscaling_limit_max_cu
                    ),
                },
                "endpoint",
            )
            if spec.disabled is False and p.quota_exceeded:
                raise QuotaExceeded(p.quota_exceeded)
            for field, value in changes.items():
                setattr(e, field, value)
            e.updated_at = now()
            ops = [
                OperationRecord.new(
                    project_id, "apply_config", branch_id=e.branch_id, endpoint_id=e.id
                )
            ]
            if spec.disabled is not None:
                await self._door(m, e, open_=not spec.disabled and not e.door_closed)
            await m.tx.put(e)
            await m.start(ops, "steps", project_id=project_id, steps=m.steps)
        return {
            "endpoint": self._endpoint_json(e, p),
            "operations": [render.operation(o) for o in ops],
        }

    async def start_endpoint(self, project_id: str, endpoint_id: str) -> JSON:
        return await self._set_endpoint_state(project_id, endpoint_id, active=True)

    async def suspend_endpoint(self, project_id: str, endpoint_id: str) -> JSON:
        return await self._set_endpoint_state(project_id, endpoint_id, active=False)

    async def _set_endpoint_state(self, project_id: str, endpoint_id: str, *, active: bool) -> JSON:
        async with self._mutation(project_id) as m:
            p = await self._project(m.tx, project_id)
            e = await self._endpoint(m.tx, project_id, endpoint_id)
            if active and e.disabled:
                raise BadRequest(
                    "endpoint_id: the endpoint is disabled; enable it with PATCH first"
                )
            if active and p.quota_exceeded:
                raise QuotaExceeded(p.quota_exceeded)
            e.current_state = "active" if active else "idle"
            e.auto_suspended = False
            if active:
                e.started_at = now()
            else:
                e.suspended_at = now()
            e.updated_at = now()
            action = "start_compute" if active else "suspend_compute"
            ops = [OperationRecord.new(project_id, action, branch_id=e.branch_id, endpoint_id=e.id)]
            await self._door(m, e, open_=active)
            await m.tx.put(e)
            await m.start(ops, "steps", project_id=project_id, steps=m.steps)
        return {
            "endpoint": self._endpoint_json(e, p),
            "operations": [render.operation(o) for o in ops],
        }

    async def _door(self, m: Mutation, e: EndpointRecord, *, open_: bool) -> None:
        for d in await self._databases(m.tx, e.project_id, e.branch_id):
            m.steps.append(step.Connections(d.physical, allowed=open_))

    # --- roles ---------------------------------------------------------------------------------

    async def list_roles(self, project_id: str, branch_id: str) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            await self._branch(tx, project_id, branch_id)
            roles = await tx.list(RoleRecord, project_id)
        return {"roles": [render.role(r, branch_id=branch_id) for r in roles]}

    async def get_role(self, project_id: str, branch_id: str, role_name: str) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            await self._branch(tx, project_id, branch_id)
            r = await self._role(tx, project_id, role_name)
        return {"role": render.role(r, branch_id=branch_id)}

    async def create_role(self, project_id: str, branch_id: str, body: RoleCreateBody) -> JSON:
        spec = body.role
        async with self._mutation(project_id) as m:
            p = await self._project(m.tx, project_id)
            await self._branch(m.tx, project_id, branch_id)
            if await m.tx.get(RoleRecord, f"{project_id}/{spec.name}") is not None:
                raise Conflict(f"role.name: role {spec.name!r} already exists")
            r = RoleRecord(
                id=f"{project_id}/{spec.name}",
                project_id=project_id,
                name=spec.name,
                physical=f"{spec.name}_{p.key}",
                password=None if spec.no_login else new_password(),
                no_login=spec.no_login,
            )
            await m.tx.put(r)
            ops = [OperationRecord.new(project_id, "apply_config", branch_id=branch_id)]
            steps = [step.Role(r.physical, p.group_role, login=not spec.no_login)]
            await m.start(ops, "steps", project_id=project_id, steps=steps)
        return {
            "role": render.role(r, branch_id=branch_id, with_password=True),
            "operations": [render.operation(o) for o in ops],
        }

    async def reveal_password(self, project_id: str, branch_id: str, role_name: str) -> JSON:
        async with self._store.tx() as tx:
            p = await self._project(tx, project_id)
            await self._branch(tx, project_id, branch_id)
            r = await self._role(tx, project_id, role_name)
        if not p.store_passwords or r.password is None:
            raise PreconditionFailed("passwords are not stored for this project or role")
        return {"password": r.password}

    async def reset_password(self, project_id: str, branch_id: str, role_name: str) -> JSON:
        async with self._mutation(project_id) as m:
            await self._project(m.tx, project_id)
            await self._branch(m.tx, project_id, branch_id)
            r = await self._role(m.tx, project_id, role_name)
            if r.no_login:
                raise BadRequest("role_name: the role cannot log in, so it has no password")
            r.password = new_password()
            r.updated_at = now()
            await m.tx.put(r)
            ops = [OperationRecord.new(project_id, "apply_config", branch_id=branch_id)]
            await m.start(ops, "steps", project_id=project_id, steps=[step.Password(r.physical)])
        return {
            "role": render.role(r, branch_id=branch_id, with_password=True),
            "operations": [render.operation(o) for o in ops],
        }

    async def delete_role(self, project_id: str, branch_id: str, role_name: str) -> JSON | None:
        """Drops the role, from every branch: roles are cluster-wide, so a project's role is
        shared by its branches here. None (Neon's 204) when there is no such role. Refused
        while the role owns a database or holds objects or privileges in one, as PostgreSQL
        refuses `DROP ROLE` then; reassign or drop them first."""
        async with self._mutation(project_id) as m:
            await self._project(m.tx, project_id)
            await self._branch(m.tx, project_id, branch_id)
            r = await m.tx.get(RoleRecord, f"{project_id}/{role_name}")
            if r is None:
                return None
            if r.protected:
                raise BadRequest(f"role_name: role {role_name!r} is protected")
            owned = sorted(
                {
                    f"{d.name} (branch {d.branch_id})"
                    for d in await m.tx.list(DatabaseRecord, project_id)
                    if d.owner_name == role_name
                }
            )
            if owned:
                raise BadRequest(
                    f"role_name: role {role_name!r} owns databases {', '.join(owned)}; "
                    "delete them or give them another owner first"
                )
            if await self._role_has_dependents(r.physical):
                raise BadRequest(
                    f"role_name: role {role_name!r} owns objects or holds privileges in the "
                    "project's databases; drop or reassign them first"
                )
            await m.tx.delete(r)
            ops = [OperationRecord.new(project_id, "apply_config", branch_id=branch_id)]
            await m.start(ops, "drop_role", project_id=project_id, physical=r.physical)
        return {
            "role": render.role(r, branch_id=branch_id),
            "operations": [render.operation(o) for o in ops],
        }

    async def _role_has_dependents(self, physical: str) -> bool:
        """Whether `physical` owns or has been granted anything in any database (the shared
        catalog `pg_shdepend` records both for every database of the cluster)."""
        async with await psycopg.AsyncConnection.connect(
            self._server.conninfo(STATE_DATABASE), autocommit=True
        ) as conn:
            cur = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_shdepend d JOIN pg_roles r"
                " ON d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid"
                " WHERE r.rolname = %s AND d.deptype IN ('o', 'a', 'r', 'i'))",
                (physical,),
            )
            row = await cur.fetchone()
        return bool(row and row[0])

    async def _job_drop_role(self, args: JSON) -> None:
        # Idempotent: dropping a role that is gone does nothing. A tenant who gave the role
        # objects between the check and this drop makes it fail; the operation reports that.
        await self._engine.drop_roles(str(args["physical"]))

    # --- databases -----------------------------------------------------------------------------

    async def list_databases(self, project_id: str, branch_id: str) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            await self._branch(tx, project_id, branch_id)
            dbs = await self._databases(tx, project_id, branch_id)
        return {"databases": [render.database(d) for d in dbs]}

    async def get_database(self, project_id: str, branch_id: str, name: str) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            await self._branch(tx, project_id, branch_id)
            d = await tx.get(DatabaseRecord, f"{branch_id}/{name}")
        if d is None:
            raise NotFound(f"database {name!r} not found on branch {branch_id}")
        return {"database": render.database(d)}

    async def create_database(
        self, project_id: str, branch_id: str, body: DatabaseCreateBody
    ) -> JSON:
        spec = body.database
        async with self._mutation(project_id) as m:
            p = await self._project(m.tx, project_id)
            await self._branch(m.tx, project_id, branch_id)
            owner = await m.tx.get(RoleRecord, f"{project_id}/{spec.owner_name}")
            if owner is None:
                raise BadRequest(f"database.owner_name: role {spec.owner_name!r} does not exist")
            if await m.tx.get(DatabaseRecord, f"{branch_id}/{spec.name}") is not None:
                raise Conflict(
                    f"database.name: database {spec.name!r} already exists on this branch"
                )
            d = DatabaseRecord(
                id=f"{branch_id}/{spec.name}",
                project_id=project_id,
                branch_id=branch_id,
                name=spec.name,
                owner_name=spec.owner_name,
                physical=new_physical(p),
            )
            await m.tx.put(d)
            ops = [OperationRecord.new(project_id, "apply_config", branch_id=branch_id)]
            steps = [step.Create(d.physical, owner.physical, p.group_role)]
            await m.start(ops, "steps", project_id=project_id, steps=steps)
        return {"database": render.database(d), "operations": [render.operation(o) for o in ops]}

    async def delete_database(self, project_id: str, branch_id: str, name: str) -> JSON:
        async with self._mutation(project_id) as m:
            await self._project(m.tx, project_id)
            await self._branch(m.tx, project_id, branch_id)
            d = await m.tx.get(DatabaseRecord, f"{branch_id}/{name}")
            if d is None:
                raise NotFound(f"database {name!r} not found on branch {branch_id}")
            await m.tx.delete(d)
            ops = [OperationRecord.new(project_id, "apply_config", branch_id=branch_id)]
            await m.start(ops, "steps", project_id=project_id, steps=[step.Drop(d.physical)])
        return {"database": render.database(d), "operations": [render.operation(o) for o in ops]}

    async def update_database(
        self, project_id: str, branch_id: str, name: str, body: DatabaseUpdateBody
    ) -> JSON:
        """Renames the database (its physical name, and so its data and connections, stay) and
        gives it another owner: the owner of its `public` schema (see `_job_database_owner`)."""
        spec = body.database
        async with self._mutation(project_id) as m:
            await self._project(m.tx, project_id)
            b = await self._branch(m.tx, project_id, branch_id)
            d = await m.tx.get(DatabaseRecord, f"{branch_id}/{name}")
            if d is None:
                raise NotFound(f"database {name!r} not found on branch {branch_id}")
            owner = None
            if spec.owner_name is not None and spec.owner_name != d.owner_name:
                owner = await m.tx.get(RoleRecord, f"{project_id}/{spec.owner_name}")
                if owner is None:
                    raise BadRequest(
                        f"database.owner_name: role {spec.owner_name!r} does not exist"
                    )
                if b.computeless or any(
                    e.door_closed for e in await self._branch_endpoints(m.tx, project_id, b.id)
                ):
                    raise BadRequest(
                        "database.owner_name: the branch has no running compute to apply the "
                        "change; start or create its endpoint first"
                    )
            if spec.name is not None and spec.name != d.name:
                await self._check_no_addons(m, branch_id, name)
                if await m.tx.get(DatabaseRecord, f"{branch_id}/{spec.name}") is not None:
                    raise Conflict(
                        f"database.name: database {spec.name!r} already exists on this branch"
                    )
                await m.tx.delete(d)
                d = d.model_copy(update={"id": f"{branch_id}/{spec.name}", "name": spec.name})
            if owner is not None:
                d.owner_name = owner.name
            d.updated_at = now()
            await m.tx.put(d)
            ops = [OperationRecord.new(project_id, "apply_config", branch_id=branch_id)]
            await m.start(
                ops,
                "database_owner",
                project_id=project_id,
                physical=d.physical,
                owner=None if owner is None else owner.physical,
            )
        return {"database": render.database(d), "operations": [render.operation(o) for o in ops]}

    @staticmethod
    async def _check_no_addons(m: Mutation, branch_id: str, name: str) -> None:
        # Neon Auth and the Data API keep the database's name in their records (and their
        # URLs carry it): a rename under them would leave them serving no database.
        auth = await m.tx.get(NeonAuthRecord, branch_id)
        if await m.tx.get(DataApiRecord, f"{branch_id}/{name}") is not None or (
            auth is not None and auth.db_name == name
        ):
            raise BadRequest(
                f"database.name: database {name!r} serves Neon Auth or the Data API on this "
                "branch; disable them before renaming it"
            )

    async def _job_database_owner(self, args: JSON) -> None:
        # The database itself stays the superuser's (its owner could GRANT CONNECT to PUBLIC,
        # see `Engine.create_database`): the owner a tenant sees is the owner of `public`.
        # ALTER SCHEMA ... OWNER is catalog DDL, no code of the tenant's runs.
        owner = args.get("owner")
        if owner is not None:
            async with await psycopg.AsyncConnection.connect(
                self._server.conninfo(str(args["physical"])),
                autocommit=True,
                options=SAFE_OPTIONS,
            ) as conn:
                cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'public'")
                if await cur.fetchone() is not None:
                    await conn.execute(
                        sql.SQL("ALTER SCHEMA public OWNER TO {}").format(
                            sql.Identifier(str(owner))
                        )
                    )
        await self._mark_ready(str(args["project_id"]), branch_ids=set())

    # --- connection URI ------------------------------------------------------------------------

    async def connection_uri(
        self,
        project_id: str,
        *,
        database_name: str,
        role_name: str,
        branch_id: str | None,
        endpoint_id: str | None,
        pooled: bool = False,
    ) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            if branch_id is None:
                branches = await tx.list(BranchRecord, project_id)
                branch = next(b for b in branches if b.default)
            else:
                branch = await self._branch(tx, project_id, branch_id)
            endpoints = await self._branch_endpoints(tx, project_id, branch.id)
            read_only = False
            if endpoint_id is not None:
                chosen = next((e for e in endpoints if e.id == endpoint_id), None)
                if chosen is None:
                    raise NotFound(
                        f"endpoint_id: endpoint {endpoint_id} not found on branch {branch.id}"
                    )
                read_only = chosen.type == "read_only"
            elif not any(e.type == "read_write" for e in endpoints):
                raise BadRequest(f"branch_id: branch {branch.id} has no read_write endpoint")
            role = await self._role(tx, project_id, role_name)
            db = await tx.get(DatabaseRecord, f"{branch.id}/{database_name}")
        if db is None:
            raise NotFound(
                f"database_name: database {database_name!r} not found on branch {branch.id}"
            )
        if role.password is None:
            raise BadRequest(f"role_name: role {role_name!r} cannot log in")
        if self.proxy_address is not None:
            # The endpoint is in the URI: a read_only one is read-only at the proxy.
            chosen_id = endpoint_id or next(e.id for e in endpoints if e.type == "read_write")
            if pooled:
                chosen_id += "-pooler"  # Neon's pooled host name: transaction pooling
            return {"uri": self._details(role, db, chosen_id)["connection_uri"]}
        uri: str = self._details(role, db)["connection_uri"]
        if read_only:
            # Not enforced: see the module's docstring.
            uri += "?options=" + quote(READ_ONLY_OPTIONS, safe="")
        return {"uri": uri}

    # --- the connection proxy's routes ----------------------------------------------------------

    async def route(self, endpoint_id: str, role_name: str, database_name: str) -> Route:
        """Where a proxy connection for `role_name` and `database_name` through `endpoint_id`
        goes. An endpoint suspended by the API is started, as a connection wakes one on Neon;
        one the meter suspended wakes by itself. A role that cannot log in and a database that
        does not exist are `None`: the proxy says so only after authentication, as PostgreSQL
        does. Raises `NotFound` (no such endpoint), `Conflict` (disabled), `QuotaExceeded`."""
        async with self._store.tx() as tx:
            endpoint = await tx.get(EndpointRecord, endpoint_id)
            if endpoint is None:
                raise NotFound(f"endpoint {endpoint_id} not found")
            project_id = endpoint.project_id
            role = await tx.get(RoleRecord, f"{project_id}/{role_name}")
            db = await tx.get(DatabaseRecord, f"{endpoint.branch_id}/{database_name}")
        if endpoint.disabled:
            raise Conflict(f"endpoint {endpoint_id} is disabled")
        if endpoint.current_state == "idle" and not endpoint.auto_suspended:
            # Another operation holds the project: the proxy holds the client and asks again.
            with contextlib.suppress(Locked):
                await self.start_endpoint(project_id, endpoint_id)
        can_log_in = role is not None and role.password is not None and not role.no_login
        return Route(
            project_id=project_id,
            role=role.physical if role is not None and can_log_in else None,
            password=role.password if role is not None and can_log_in else None,
            database=db.physical if db is not None else None,
            read_only=endpoint.type == "read_only",
        )

    # --- operations ----------------------------------------------------------------------------

    async def list_operations(self, project_id: str, *, limit: int, cursor: str | None) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            ops = await tx.list(OperationRecord, project_id)
        ops.reverse()  # newest first, as Neon lists them
        if cursor:
            ids = [o.id for o in ops]
            ops = ops[ids.index(cursor) + 1 :] if cursor in ids else []
        page = ops[:limit]
        result: JSON = {"operations": [render.operation(o) for o in page]}
        next_cursor = page[-1].id if page else cursor
        if next_cursor:
            result["pagination"] = {"cursor": next_cursor}
        return result

    async def get_operation(self, project_id: str, operation_id: str) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            op = await tx.get(OperationRecord, operation_id)
        if op is None or op.project_id != project_id:
            raise NotFound(f"operation {operation_id} not found in project {project_id}")
        return {"operation": render.operation(op)}
