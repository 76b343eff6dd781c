"""Endpoints, roles, databases, connection URIs and operations of the local control plane.

An endpoint is the door to its branch's databases: suspending it closes them to clients
(`ALLOW_CONNECTIONS false` and terminated sessions), starting it opens them again.
"""

from __future__ import annotations

from typing import Any

from . import _render as render
from . import _steps as step
from ._base import Mutation, PlaneBase, check_cu
from ._branches import new_physical
from ._errors import BadRequest, Conflict, NotFound, PreconditionFailed, QuotaExceeded
from ._models import (
    BranchRecord,
    DatabaseCreateBody,
    DatabaseRecord,
    EndpointRecord,
    EndpointUpdateBody,
    OperationRecord,
    RoleCreateBody,
    RoleRecord,
    new_password,
    now,
)

JSON = dict[str, Any]


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

    # --- connection URI ------------------------------------------------------------------------

    async def connection_uri(
        self,
        project_id: str,
        *,
        database_name: str,
        role_name: str,
        branch_id: str | None,
        endpoint_id: str | None,
    ) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            if branch_id is None:
                branches = await tx.list(BranchRecord, project_id)
                branch = next(b for b in branches if b.default)
            else:
                branch = await self._branch(tx, project_id, branch_id)
            endpoints = await self._branch_endpoints(tx, project_id, branch.id)
            if endpoint_id is not None:
                if not any(e.id == endpoint_id for e in endpoints):
                    raise NotFound(
                        f"endpoint_id: endpoint {endpoint_id} not found on branch {branch.id}"
                    )
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
        return {"uri": self._details(role, db)["connection_uri"]}

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
