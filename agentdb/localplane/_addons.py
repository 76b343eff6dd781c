"""Per-branch add-ons (Neon Auth, the Data API) and how they follow a branch's lineage.

Their data lives in the branch's databases (`neon_auth`, grants, RLS policies) and is copied with
them; their configuration lives in plane state, keyed by branch. A new branch, a snapshot restore
and a finalized restore therefore copy the configuration of the branch whose data they copy, with
the same signing key: a session's users stay signed in across a checkpoint restore, as their rows
in `neon_auth` do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo

from ._base import PlaneBase
from ._errors import LocalPlaneError, NotFound
from ._models import (
    BranchCreateBody,
    BranchRecord,
    DatabaseRecord,
    FinalizeRestoreBody,
    ProjectRecord,
    Record,
    SnapshotRecord,
    SnapshotRestoreBody,
    now,
)
from ._store import Tx

JSON = dict[str, Any]


class Unauthorized(LocalPlaneError):  # noqa: N818 - named like NotFound and Conflict
    status = 401
    code = "UNAUTHORIZED"


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
    """Lookups and superuser connections shared by the add-ons."""

    @asynccontextmanager
    async def _superuser(self, physical: str) -> AsyncIterator[AsyncConnection]:
        """An autocommit connection to one physical database as the cluster's superuser."""
        async with await AsyncConnection.connect(
            self._server.conninfo(physical), autocommit=True
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


class AddonLineageMixin(AddonsBase):
    """Copies add-on configuration to branches made from a branch that has it."""

    async def _inherit(self, project_id: str, source: str | None, target: str) -> None:
        if source is None:
            return
        async with self._store.tx(project_id) as tx:
            for kind in addon_kinds():
                mine = [r for r in await tx.list(kind, project_id) if r.branch_id == target]
                await tx.delete(*mine)
                theirs = [r for r in await tx.list(kind, project_id) if r.branch_id == source]
                await tx.put(*(r.for_branch(target) for r in theirs))

    async def create_branch(self, project_id: str, body: BranchCreateBody) -> JSON:
        result = await super().create_branch(project_id, body)  # type: ignore[misc]
        parent = body.branch.parent_id if body.branch else None
        if parent is None:
            async with self._store.tx() as tx:
                branches = await tx.list(BranchRecord, project_id)
            parent = next(
                (b.id for b in branches if b.default and b.id != result["branch"]["id"]), None
            )
        await self._inherit(project_id, parent, result["branch"]["id"])
        return result  # type: ignore[no-any-return]

    async def restore_snapshot(
        self, project_id: str, snapshot_id: str, body: SnapshotRestoreBody
    ) -> JSON:
        async with self._store.tx() as tx:
            snap = await tx.get(SnapshotRecord, snapshot_id)
        result = await super().restore_snapshot(project_id, snapshot_id, body)  # type: ignore[misc]
        if snap is not None:
            # A finalized restore replaces the target: the live app's configuration goes on.
            source = (
                (body.target_branch_id or snap.source_branch_id)
                if body.finalize_restore
                else snap.source_branch_id
            )
            await self._inherit(project_id, source, result["branch"]["id"])
        return result  # type: ignore[no-any-return]

    async def finalize_restore(
        self, project_id: str, branch_id: str, body: FinalizeRestoreBody
    ) -> JSON:
        async with self._store.tx() as tx:
            b = await tx.get(BranchRecord, branch_id)
        result = await super().finalize_restore(project_id, branch_id, body)  # type: ignore[misc]
        if b is not None:
            await self._inherit(project_id, b.restore_target_id, branch_id)
        return result  # type: ignore[no-any-return]

    async def delete_project(self, project_id: str) -> JSON:
        async with self._store.tx() as tx:
            p = await tx.get(ProjectRecord, project_id)
        result = await super().delete_project(project_id)  # type: ignore[misc]
        if p is not None:
            # After the project's own cleanup, which drops the databases holding grants to them.
            pending = list(self._tasks)

            async def drop() -> None:
                if pending:
                    await asyncio.wait(pending)
                await self._engine.drop_roles(*data_api_roles(p.key))

            task = asyncio.create_task(drop())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return result  # type: ignore[no-any-return]

    async def collect_orphans(self) -> list[str]:
        dropped: list[str] = await super().collect_orphans()
        async with self._store.tx() as tx:
            keys = {p.key for p in await tx.list(ProjectRecord)}
        orphans = [
            r for r in await self._engine.list_roles(ROLE_PREFIX) if r.split("_")[1] not in keys
        ]
        await self._engine.drop_roles(*orphans)
        return dropped + orphans


# Per-project Data API roles: `lpa_<project key>_<name>`. They do not start with `lp_`, so the
# core's orphan collection (which takes every `lp_*` role for a project's group) leaves them be.
ROLE_PREFIX = "lpa_"


def data_api_role(key: str, name: str) -> str:
    return f"{ROLE_PREFIX}{key}_{name}"


def data_api_roles(key: str) -> tuple[str, str, str]:
    """The login role the Data API connects as, then the two roles it switches to."""
    return (
        data_api_role(key, "authenticator"),
        data_api_role(key, "authenticated"),
        data_api_role(key, "anonymous"),
    )
