"""Snapshots of the local control plane: non-connectable database copies, restored as branches.

A finalized restore swaps database names, so the live endpoint's connection string keeps
working and now reaches the snapshot's data; the replaced branch becomes "<name> (old)".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from . import _render as render
from . import _steps as step
from ._base import NO_PITR, Mutation, PlaneBase
from ._branches import new_physical
from ._errors import BadRequest
from ._models import (
    BranchRecord,
    DatabaseRecord,
    EndpointRecord,
    FinalizeRestoreBody,
    OperationRecord,
    ProjectRecord,
    RoleRecord,
    SnapshotRecord,
    SnapshotRestoreBody,
    SnapshotUpdateBody,
    neon_id,
    now,
    physical_key,
)

JSON = dict[str, Any]


class PlaneSnapshots(PlaneBase):
    async def create_snapshot(
        self,
        project_id: str,
        branch_id: str,
        *,
        name: str | None,
        expires_at: datetime | None,
        lsn: str | None,
        timestamp: str | None,
    ) -> JSON:
        if lsn or timestamp:
            raise BadRequest(f"lsn/timestamp: snapshots are taken now; {NO_PITR}")
        if expires_at is not None and expires_at <= now():
            raise BadRequest("expires_at: must be in the future")
        async with self._mutation(project_id) as m:
            tx = m.tx
            p = await self._project(tx, project_id)
            b = await self._branch(tx, project_id, branch_id)
            if b.parent_id is not None:
                raise BadRequest(
                    "branch_id: snapshots can only be taken from root branches "
                    "(branches without a parent)"
                )
            taken = now()
            s = SnapshotRecord(
                id=neon_id("snap"),
                project_id=project_id,
                name=name or f"{b.name} {render.ts(taken)}",
                source_branch_id=b.id,
                expires_at=expires_at,
                timestamp=taken,
            )
            databases = await self._databases(tx, project_id, b.id)
            # Every transaction committed before this call wrote its WAL before this position.
            upto = await self._engine.insert_lsn() if any(d.empty_since for d in databases) else ""
            for d in databases:
                phys = f"lps_{p.key}_{physical_key()}"
                s.databases[d.name] = (d.owner_name, phys)
                if d.empty_since:
                    # A database nothing wrote to since it was made is not copied (issue 16:
                    # a session's root checkpoint costs no disk).
                    m.steps.append(
                        step.Snapshot(
                            d.physical, phys, p.group_role, s.id, d.name, d.empty_since, upto
                        )
                    )
                    continue
                m.steps.append(
                    step.Copy(
                        d.physical, phys, p.group_role, source_is_live=True, allow_connections=False
                    )
                )
            m.steps.append(step.SnapshotSize(s.id))
            await tx.put(s)
            ops = [OperationRecord.new(project_id, "create_timeline", branch_id=b.id)]
            await m.start(ops, "steps", project_id=project_id, steps=m.steps)
        return {"snapshot": render.snapshot(s), "operations": [render.operation(o) for o in ops]}

    async def list_snapshots(self, project_id: str) -> JSON:
        async with self._store.tx() as tx:
            await self._project(tx, project_id)
            snapshots = await tx.list(SnapshotRecord, project_id)
        return {"snapshots": [render.snapshot(s) for s in snapshots]}

    async def update_snapshot(
        self, project_id: str, snapshot_id: str, body: SnapshotUpdateBody
    ) -> JSON:
        async with self._mutation(project_id, check_idle=False) as m:
            await self._project(m.tx, project_id)
            s = await self._snapshot(m.tx, project_id, snapshot_id)
            if body.snapshot.name is not None:
                s.name = body.snapshot.name
                s.updated_at = now()
                await m.tx.put(s)
        return {"snapshot": render.snapshot(s)}

    async def delete_snapshot(self, project_id: str, snapshot_id: str) -> JSON:
        async with self._mutation(project_id) as m:
            await self._project(m.tx, project_id)
            s = await self._snapshot(m.tx, project_id, snapshot_id)
            await m.tx.delete(s)
            ops = [OperationRecord.new(project_id, "delete_timeline", branch_id=s.source_branch_id)]
            steps = [step.Drop(phys) for _owner, phys in s.databases.values()]
            await m.start(ops, "steps", project_id=project_id, steps=steps)
        return {"operations": [render.operation(o) for o in ops]}

    async def restore_snapshot(
        self, project_id: str, snapshot_id: str, body: SnapshotRestoreBody
    ) -> JSON:
        async with self._mutation(project_id) as m:
            tx = m.tx
            p = await self._project(tx, project_id)
            s = await self._snapshot(tx, project_id, snapshot_id)
            target = await self._branch(tx, project_id, body.target_branch_id or s.source_branch_id)
            branches = await tx.list(BranchRecord, project_id)
            branch_id = neon_id("br")
            name = body.name or f"{s.name} (restored {branch_id[-8:]})"
            if any(b.name == name for b in branches):
                raise BadRequest(f"name: a branch named {name!r} already exists in this project")
            b = BranchRecord(
                id=branch_id,
                project_id=project_id,
                name=name,
                restore_status="restored",
                restored_from=s.id,
                restore_target_id=target.id,
            )
            dbs = []
            roles = {r.name: r.physical for r in await tx.list(RoleRecord, project_id)}
            for db_name, (owner, phys) in s.databases.items():
                d = DatabaseRecord(
                    id=f"{b.id}/{db_name}",
                    project_id=project_id,
                    branch_id=b.id,
                    name=db_name,
                    owner_name=owner,
                    physical=new_physical(p),
                )
                dbs.append(d)
                if db_name in s.empty and owner in roles:
                    # Never copied: its content was a new database's, so a new one is made.
                    d.made_as = d.physical
                    m.steps.append(step.Create(d.physical, roles[owner], p.group_role))
                    continue
                m.steps.append(
                    step.Copy(
                        phys, d.physical, p.group_role, source_is_live=False, allow_connections=True
                    )
                )
            ops = [OperationRecord.new(project_id, "create_branch", branch_id=b.id)]
            endpoints: list[EndpointRecord] = []
            if body.finalize_restore:
                moved = await self._finalize(m, p, b, dbs, target, old_name=None)
                ops += [
                    OperationRecord.new(
                        project_id, "apply_config", branch_id=b.id, endpoint_id=e.id
                    )
                    for e in moved
                ]
                endpoints = moved
            else:
                # A preview gets a compute of its own, so it has its own connection string.
                preview = EndpointRecord(
                    id=neon_id("ep"),
                    project_id=project_id,
                    branch_id=b.id,
                    autoscaling_limit_min_cu=p.default_endpoint_settings.get(
                        "autoscaling_limit_min_cu", 0.25
                    ),
                    autoscaling_limit_max_cu=p.default_endpoint_settings.get(
                        "autoscaling_limit_max_cu", 0.25
                    ),
                )
                endpoints = [preview]
                ops.append(
                    OperationRecord.new(
                        project_id, "start_compute", branch_id=b.id, endpoint_id=preview.id
                    )
                )
                await tx.put(b, *dbs, preview)
            await m.start(ops, "steps", project_id=project_id, steps=m.steps, ready=[b.id])
        await self._snapshot_restored(project_id, s, body, b.id)
        return {
            "branch": render.branch(b),
            "endpoints": [self._endpoint_json(e, p) for e in endpoints],
            "operations": [render.operation(o) for o in ops],
        }

    async def finalize_restore(
        self, project_id: str, branch_id: str, body: FinalizeRestoreBody
    ) -> JSON:
        async with self._mutation(project_id) as m:
            tx = m.tx
            p = await self._project(tx, project_id)
            b = await self._branch(tx, project_id, branch_id)
            if b.restore_status != "restored" or b.restore_target_id is None:
                raise BadRequest(
                    "branch_id: only a branch restored from a snapshot with "
                    "finalize_restore: false, and not finalized yet, can be finalized"
                )
            target = await tx.get(BranchRecord, b.restore_target_id)
            if target is None:
                raise BadRequest(
                    "branch_id: the branch this restore was meant to replace no longer exists"
                )
            if body.name is not None and any(
                x.name == body.name for x in await tx.list(BranchRecord, project_id)
            ):
                raise BadRequest(
                    f"name: a branch named {body.name!r} already exists in this project"
                )
            dbs = await self._databases(tx, project_id, b.id)
            moved = await self._finalize(m, p, b, dbs, target, old_name=body.name)
            ops = [
                OperationRecord.new(project_id, "apply_config", branch_id=b.id, endpoint_id=e.id)
                for e in moved
            ] or [OperationRecord.new(project_id, "apply_config", branch_id=b.id)]
            await m.start(ops, "steps", project_id=project_id, steps=m.steps, ready=[b.id])
        await self._restore_finalized(project_id, target.id, b.id)
        return {"operations": [render.operation(o) for o in ops]}

    async def _finalize(
        self,
        m: Mutation,
        p: ProjectRecord,
        restored: BranchRecord,
        restored_dbs: list[DatabaseRecord],
        target: BranchRecord,
        *,
        old_name: str | None,
    ) -> list[EndpointRecord]:
        """`restored` takes over `target`'s name, computes and database names; returns the
        endpoints that moved. Database names are swapped, so connection strings stay valid."""
        tx = m.tx
        target_endpoints = await self._branch_endpoints(tx, p.id, target.id)
        allow = not any(e.door_closed for e in target_endpoints)
        target_dbs = {d.name: d for d in await self._databases(tx, p.id, target.id)}
        for d in restored_dbs:
            old = target_dbs.get(d.name)
            if old is None:
                continue
            parked = new_physical(p)
            m.steps.append(step.Swap(old.physical, d.physical, parked, allow_connections=allow))
            d.physical, old.physical = old.physical, parked
            d.updated_at = old.updated_at = now()
            await tx.put(old)
        for own in await self._branch_endpoints(tx, p.id, restored.id):
            await tx.delete(own)
        for e in target_endpoints:
            e.branch_id = restored.id
            e.updated_at = now()
        taken = {b.name for b in await tx.list(BranchRecord, p.id)}
        restored.name, target.name = target.name, old_name or _old_name(target.name, taken)
        restored.default, target.default = target.default, False
        restored.protected, target.protected = target.protected, False
        # Annotations identify the live branch (e.g. agentdb's session id): they move with it.
        restored.annotations, target.annotations = target.annotations, {}
        restored.restore_status = "finalized"
        restored.restored_as = target.id
        restored.restore_target_id = None
        restored.current_state = "init"
        restored.updated_at = target.updated_at = now()
        await tx.put(target, restored, *restored_dbs, *target_endpoints)
        return target_endpoints


def _old_name(name: str, taken: set[str]) -> str:
    """Neon names a replaced branch "<name> (old)"; later ones get a number to stay unique."""
    candidate, number = f"{name} (old)", 2
    while candidate in taken:
        candidate, number = f"{name} (old {number})", number + 1
    return candidate
