"""Snapshots (checkpoints) of root branches: create, list, rename, delete, restore, finalize."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from ._base import ClientCore, drop_none, rfc3339, segment_path
from ._models import (
    NeonModel,
    Operation,
    RestoredSnapshot,
    Snapshot,
    SnapshotCreated,
    WithOperations,
)


class _Snapshots(NeonModel):
    snapshots: list[Snapshot] = Field(default_factory=list)


class _SnapshotEnvelope(NeonModel):
    snapshot: Snapshot


class SnapshotsMixin(ClientCore):
    async def create_snapshot(
        self,
        project_id: str,
        branch_id: str,
        *,
        name: str | None = None,
        expires_at: datetime | None = None,
        lsn: str | None = None,
        timestamp: datetime | None = None,
        wait: bool = True,
    ) -> SnapshotCreated:
        """Snapshots a root branch now (or at `lsn` / `timestamp`, within the restore window).
        The parameters go in the query string, as the spec says (the docs' JSON body is
        unconfirmed). Manual snapshots are capped per project by plan (1 free, 100 paid)."""
        return await self._mutate(
            SnapshotCreated,
            "POST",
            segment_path("projects", project_id, "branches", branch_id, "snapshot"),
            project_id=project_id,
            wait=wait,
            params={
                "name": name,
                "expires_at": rfc3339(expires_at) if expires_at else None,
                "lsn": lsn,
                "timestamp": rfc3339(timestamp) if timestamp else None,
            },
        )

    async def list_snapshots(self, project_id: str) -> list[Snapshot]:
        """All snapshots of a project (Neon has no get-one and no pagination here)."""
        path = segment_path("projects", project_id, "snapshots")
        return (await self._call(_Snapshots, "GET", path)).snapshots

    async def find_snapshot(self, project_id: str, name: str) -> Snapshot | None:
        """The newest snapshot named `name`, or None (look before taking it again)."""
        found = [s for s in await self.list_snapshots(project_id) if s.name == name]
        return max(found, key=lambda s: (s.created_at is not None, s.created_at)) if found else None

    async def rename_snapshot(self, project_id: str, snapshot_id: str, name: str) -> Snapshot:
        """Only the name of a snapshot can change."""
        path = segment_path("projects", project_id, "snapshots", snapshot_id)
        renamed = await self._call(
            _SnapshotEnvelope, "PATCH", path, body={"snapshot": {"name": name}}
        )
        return renamed.snapshot

    async def delete_snapshot(
        self, project_id: str, snapshot_id: str, *, wait: bool = True
    ) -> list[Operation]:
        deleted = await self._mutate(
            WithOperations,
            "DELETE",
            segment_path("projects", project_id, "snapshots", snapshot_id),
            project_id=project_id,
            wait=wait,
        )
        return deleted.operations

    async def restore_snapshot(
        self,
        project_id: str,
        snapshot_id: str,
        *,
        target_branch_id: str,
        name: str | None = None,
        finalize_restore: bool = False,
        wait: bool = True,
    ) -> RestoredSnapshot:
        """Restores a snapshot as a new branch.

        `target_branch_id` is required here although Neon defaults it to the snapshot's source
        branch: after one finalized restore that default is the "(old)" branch, so always pass
        the current live branch. With `finalize_restore`, the new branch takes over the
        target's name and computes (same connection string, new branch id) and the target
        becomes "<name> (old)"; without, it is a preview with its own compute.
        """
        return await self._mutate(
            RestoredSnapshot,
            "POST",
            segment_path("projects", project_id, "snapshots", snapshot_id, "restore"),
            project_id=project_id,
            wait=wait,
            body=drop_none(
                name=name, target_branch_id=target_branch_id, finalize_restore=finalize_restore
            ),
        )

    async def finalize_restore(
        self,
        project_id: str,
        branch_id: str,
        *,
        name: str | None = None,
        wait: bool = True,
    ) -> list[Operation]:
        """Makes a preview restore (`branch_id`, from `restore_snapshot` without finalize) the
        live branch; `name` names the replaced branch (default "<name> (old)")."""
        finalized = await self._mutate(
            WithOperations,
            "POST",
            segment_path("projects", project_id, "branches", branch_id, "finalize_restore"),
            project_id=project_id,
            wait=wait,
            body=drop_none(name=name),
        )
        return finalized.operations
