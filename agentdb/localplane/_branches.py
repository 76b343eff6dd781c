"""Branches of the local control plane: each branch owns full copies of its databases."""

from __future__ import annotations

import base64
import difflib
from typing import Any

from . import _render as render
from . import _steps as step
from ._base import NO_PITR, Mutation, PlaneBase, check_cu
from ._errors import BadRequest, Conflict, NotFound
from ._models import (
    BranchCreateBody,
    BranchRecord,
    BranchRestoreBody,
    BranchUpdateBody,
    DatabaseRecord,
    EndpointRecord,
    NewBranchSpec,
    OperationRecord,
    ProjectRecord,
    RoleRecord,
    neon_id,
    now,
    physical_key,
)

JSON = dict[str, Any]


def new_physical(p: ProjectRecord) -> str:
    return f"lpd_{p.key}_{physical_key()}"


class PlaneBranches(PlaneBase):
    async def create_branch(self, project_id: str, body: BranchCreateBody) -> JSON:
        spec = body.branch or NewBranchSpec()
        if spec.parent_lsn or spec.parent_timestamp:
            raise BadRequest(f"branch.parent_lsn/parent_timestamp: {NO_PITR}")
        requested = body.endpoints or []
        if sum(e.type == "read_write" for e in requested) > 1:
            raise BadRequest("endpoints: a branch can have at most one read_write endpoint")
        for index, e in enumerate(requested):
            check_cu(e.model_dump(exclude_none=True), f"endpoints[{index}]")
        async with self._mutation(project_id) as m:
            tx = m.tx
            p = await self._project(tx, project_id)
            branches = await tx.list(BranchRecord, project_id)
            if spec.parent_id:
                parent = await self._branch(tx, project_id, spec.parent_id)
            else:
                parent = next(b for b in branches if b.default)
            schema_only = spec.init_source == "schema-only"
            branch_id = neon_id("br")
            name = spec.name or branch_id
            self._check_name_free(branches, name)
            b = BranchRecord(
                id=branch_id,
                project_id=project_id,
                name=name,
                parent_id=None if schema_only else parent.id,
                protected=bool(spec.protected),
                init_source="schema-only" if schema_only else "parent-data",
                expires_at=spec.expires_at,
                annotations=body.annotation_value or {},
            )
            roles = {r.name: r for r in await tx.list(RoleRecord, project_id)}
            steps: list[step.Step] = []
            dbs = []
            for d in await self._databases(tx, project_id, parent.id):
                copy = DatabaseRecord(
                    id=f"{b.id}/{d.name}",
                    project_id=project_id,
                    branch_id=b.id,
                    name=d.name,
                    owner_name=d.owner_name,
                    physical=new_physical(p),
                )
                dbs.append(copy)
                if schema_only:
                    owner = roles[d.owner_name].physical
                    steps.append(step.Schema(d.physical, copy.physical, owner, p.group_role))
                else:
                    steps.append(
                        step.Copy(
                            d.physical,
                            copy.physical,
                            p.group_role,
                            source_is_live=True,
                            allow_connections=True,
                        )
                    )
            endpoints = [
                EndpointRecord(
                    id=neon_id("ep"),
                    project_id=project_id,
                    branch_id=b.id,
                    type=e.type,
                    autoscaling_limit_min_cu=e.autoscaling_limit_min_cu
                    or p.default_endpoint_settings.get("autoscaling_limit_min_cu", 0.25),
                    autoscaling_limit_max_cu=e.autoscaling_limit_max_cu
                    or p.default_endpoint_settings.get("autoscaling_limit_max_cu", 0.25),
                    suspend_timeout_seconds=e.suspend_timeout_seconds
                    if e.suspend_timeout_seconds is not None
                    else p.default_endpoint_settings.get("suspend_timeout_seconds", 0),
                    settings=e.settings or {},
                )
                for e in requested
            ]
            ops = [OperationRecord.new(project_id, "create_branch", branch_id=b.id)]
            ops += [
                OperationRecord.new(project_id, "start_compute", branch_id=b.id, endpoint_id=e.id)
                for e in endpoints
            ]
            await tx.put(b, *dbs, *endpoints)
            await m.start(ops, "steps", project_id=project_id, steps=steps, ready=[b.id])
        await self._branch_created(project_id, parent.id, b.id)
        result: JSON = {
            "branch": render.branch(b),
            "endpoints": [self._endpoint_json(e, p) for e in endpoints],
            "operations": [render.operation(o) for o in ops],
            "roles": [render.role(r, branch_id=b.id) for r in roles.values()],
            "databases": [render.database(d) for d in dbs],
        }
        # As on Neon: connection URIs only when the branch has a compute and one role and database.
        if endpoints and len(roles) == 1 and len(dbs) == 1:
            result["connection_uris"] = [
                self._details(
                    next(iter(roles.values())),
                    dbs[0],
                    next((e.id for e in endpoints if e.type == "read_write"), endpoints[0].id),
                )
            ]
        return result

    @staticmethod
    def _check_name_free(branches: list[BranchRecord], name: str) -> None:
        if any(b.name == name for b in branches):
            raise Conflict(f"branch.name: a branch named {name!r} already exists in this project")

    async def list_branches(
        self,
        project_id: str,
        *,
        search: str | None,
        sort_by: str,
        sort_order: str,
        limit: int | None,
        cursor: str | None,
    ) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            branches = await tx.list(BranchRecord, project_id)
        if search:
            branches = [b for b in branches if search in b.name or search in b.id]
        branches.sort(key=lambda b: (getattr(b, sort_by), b.id), reverse=sort_order == "desc")
        offset = _decode_cursor(cursor)
        page = branches[offset : offset + limit] if limit else branches[offset:]
        pagination: JSON = {"sort_by": sort_by, "sort_order": sort_order}
        if limit and offset + limit < len(branches):
            pagination["next"] = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
        return {
            "branches": [render.branch(b) for b in page],
            "annotations": {b.id: render.annotation(b) for b in page if b.annotations},
            "pagination": pagination,
        }

    async def count_branches(self, project_id: str, search: str | None) -> JSON:
        listed = await self.list_branches(
            project_id,
            search=search,
            sort_by="created_at",
            sort_order="asc",
            limit=None,
            cursor=None,
        )
        return {"count": len(listed["branches"])}

    async def get_branch(self, project_id: str, branch_id: str) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            b = await self._branch(tx, project_id, branch_id)
        return {"branch": render.branch(b), "annotation": render.annotation(b)}

    async def update_branch(self, project_id: str, branch_id: str, body: BranchUpdateBody) -> JSON:
        spec = body.branch
        async with self._mutation(project_id, check_idle=False) as m:
            await self._project(m.tx, project_id)
            b = await self._branch(m.tx, project_id, branch_id)
            if spec.name is not None and spec.name != b.name:
                self._check_name_free(await m.tx.list(BranchRecord, project_id), spec.name)
                b.name = spec.name
            if spec.protected is not None:
                b.protected = spec.protected
            if "expires_at" in spec.model_fields_set:
                b.expires_at = spec.expires_at
            b.updated_at = now()
            await m.tx.put(b)
        return {"branch": render.branch(b), "operations": []}

    async def delete_branch(self, project_id: str, branch_id: str) -> JSON:
        async with self._mutation(project_id) as m:
            tx = m.tx
            await self._project(tx, project_id)
            b = await self._branch(tx, project_id, branch_id)
            if b.default:
                raise BadRequest("branch_id: the project's default branch cannot be deleted")
            if b.protected:
                raise BadRequest("branch_id: the branch is protected; unprotect it first")
            if any(c.parent_id == b.id for c in await tx.list(BranchRecord, project_id)):
                raise BadRequest("branch_id: the branch has child branches; delete them first")
            dbs = await self._databases(tx, project_id, b.id)
            endpoints = await self._branch_endpoints(tx, project_id, b.id)
            ops = [
                OperationRecord.new(project_id, "suspend_compute", branch_id=b.id, endpoint_id=e.id)
                for e in endpoints
            ]
            ops.append(OperationRecord.new(project_id, "delete_timeline", branch_id=b.id))
            await tx.delete(b, *dbs, *endpoints)
            steps = [step.Drop(d.physical) for d in dbs]
            await m.start(ops, "steps", project_id=project_id, steps=steps)
        return {"branch": render.branch(b), "operations": [render.operation(o) for o in ops]}

    async def set_default_branch(self, project_id: str, branch_id: str) -> JSON:
        async with self._mutation(project_id, check_idle=False) as m:
            await self._project(m.tx, project_id)
            target = await self._branch(m.tx, project_id, branch_id)
            for b in await m.tx.list(BranchRecord, project_id):
                if b.default != (b.id == target.id):
                    b.default = b.id == target.id
                    b.updated_at = now()
                    await m.tx.put(b)
            target.default = True
        return {"branch": render.branch(target), "operations": []}

    async def restore_branch(
        self, project_id: str, branch_id: str, body: BranchRestoreBody
    ) -> JSON:
        """Replaces the branch's data with the head of `source_branch_id` (reset from parent)."""
        if body.source_lsn or body.source_timestamp:
            raise BadRequest(f"source_lsn/source_timestamp: {NO_PITR}")
        async with self._mutation(project_id) as m:
            tx = m.tx
            p = await self._project(tx, project_id)
            target = await self._branch(tx, project_id, branch_id)
            if body.source_branch_id == branch_id:
                raise BadRequest(
                    f"source_branch_id: restoring a branch to its own past needs {NO_PITR}"
                )
            source = await self._branch(tx, project_id, body.source_branch_id)
            branches = await tx.list(BranchRecord, project_id)
            children = [b for b in branches if b.parent_id == target.id]
            if children and not body.preserve_under_name:
                raise BadRequest(
                    "preserve_under_name: required because the branch has child branches"
                )
            preserved = None
            if body.preserve_under_name:
                self._check_name_free(branches, body.preserve_under_name)
                preserved = BranchRecord(
                    id=neon_id("br"),
                    project_id=project_id,
                    name=body.preserve_under_name,
                    parent_id=target.parent_id,
                    current_state="ready",
                )
                for child in children:
                    child.parent_id = preserved.id
                    await tx.put(child)
            await self._replace_contents(m, p, target, source, preserved)
            target.current_state, target.state_changed_at = "resetting", now()
            target.updated_at = now()
            await tx.put(target, *([preserved] if preserved else []))
            ops = [OperationRecord.new(project_id, "create_timeline", branch_id=target.id)]
            await m.start(ops, "steps", project_id=project_id, steps=m.steps, ready=[target.id])
        return {"branch": render.branch(target), "operations": [render.operation(o) for o in ops]}

    async def _replace_contents(
        self,
        m: Mutation,
        p: ProjectRecord,
        target: BranchRecord,
        source: BranchRecord,
        preserved: BranchRecord | None,
    ) -> None:
        tx = m.tx
        allow = not target.computeless and not any(
            e.door_closed for e in await self._branch_endpoints(tx, p.id, target.id)
        )
        current = {d.name: d for d in await self._databases(tx, p.id, target.id)}
        # Every copy before the first swap: a copy that fails leaves the branch with its old
        # content in every database, never some databases restored and others not.
        swaps: list[step.Step] = []
        for d in await self._databases(tx, p.id, source.id):
            fresh = new_physical(p)
            m.steps.append(
                step.Copy(
                    d.physical, fresh, p.group_role, source_is_live=True, allow_connections=True
                )
            )
            old = current.pop(d.name, None)
            if old is None:
                await tx.put(
                    DatabaseRecord(
                        id=f"{target.id}/{d.name}",
                        project_id=p.id,
                        branch_id=target.id,
                        name=d.name,
                        owner_name=d.owner_name,
                        physical=fresh,
                    )
                )
                continue
            parked = new_physical(p)
            swaps.append(step.Swap(old.physical, fresh, parked, allow_connections=allow))
            if preserved is not None:
                await tx.put(
                    old.model_copy(
                        update={
                            "id": f"{preserved.id}/{d.name}",
                            "branch_id": preserved.id,
                            "physical": parked,
                        }
                    )
                )
            else:
                swaps.append(step.Drop(parked))
            old.owner_name = d.owner_name
            old.updated_at = now()
            await tx.put(old)
        for leftover in current.values():
            await tx.delete(leftover)
            if preserved is not None:
                await tx.put(
                    leftover.model_copy(
                        update={"id": f"{preserved.id}/{leftover.name}", "branch_id": preserved.id}
                    )
                )
            else:
                swaps.append(step.Drop(leftover.physical))
        m.steps.extend(swaps)

    async def branch_schema(self, project_id: str, branch_id: str, *, db_name: str) -> JSON:
        """The database's schema as `pg_dump --schema-only` prints it (run by the plane as it
        runs it for `compare_schema`: no code of the tenant's runs), without owners, grants and
        comments."""
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            await self._branch(tx, project_id, branch_id)
            db = {d.name: d for d in await self._databases(tx, project_id, branch_id)}.get(db_name)
        if db is None:
            raise NotFound(f"db_name: database {db_name!r} not found on branch {branch_id}")
        return {"sql": await self._engine.dump_schema(db.physical)}

    async def compare_schema(
        self, project_id: str, branch_id: str, *, base_branch_id: str | None, db_name: str
    ) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            b = await self._branch(tx, project_id, branch_id)
            base_id = base_branch_id or b.parent_id
            if base_id is None:
                raise BadRequest(
                    "base_branch_id: required because the branch has no parent to compare against"
                )
            base = await self._branch(tx, project_id, base_id)
            db = {d.name: d for d in await self._databases(tx, project_id, b.id)}.get(db_name)
            base_db = {d.name: d for d in await self._databases(tx, project_id, base.id)}.get(
                db_name
            )
        if db is None or base_db is None:
            raise NotFound(f"db_name: database {db_name!r} not found on both branches")
        old = await self._engine.dump_schema(base_db.physical)
        new = await self._engine.dump_schema(db.physical)
        diff = difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"{base.name}/{db_name}",
            tofile=f"{b.name}/{db_name}",
        )
        return {"diff": "".join(diff)}


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(cursor.encode()).decode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("cursor: not a cursor this API returned") from exc
