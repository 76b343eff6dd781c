"""What a workflow's crash recovery (its `resume`) is given by the reconciler: the run's
clock and grace period, and one place to count and record each repair.

Each workflow's resume sits beside its normal path (`SessionService.resume`,
`CheckpointService.resume`, `BranchService.resume`); the reconciler only finds the sessions
with unfinished rows and calls them, under the session's lock."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from pydantic import JsonValue
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from meta_schema import AgentSession, Branch, Checkpoint, CheckpointStatus

from ._common import SYSTEM, Clock, event

log = structlog.get_logger(__name__)

#: Each repair's counter in `ReconcileReport`.
COUNTERS = {
    "create_undone": "sessions_failed",
    "delete_finished": "sessions_deleted",
    "failed_project_deleted": "failed_projects_deleted",
    "checkpoint_completed": "checkpoints_completed",
    "checkpoint_failed": "checkpoints_failed",
    "restore_completed": "restores_completed",
    "restore_rolled_back": "restores_rolled_back",
    "restore_branch_deleted": "restore_branches_deleted",
    "branch_failed": "branches_failed",
    "branch_deleted": "branches_deleted",
    "failed_branch_deleted": "failed_branches_deleted",
    "orphan_project_deleted": "orphan_projects_deleted",
}


@dataclass
class Recovery:
    """One reconciler run, as the workflows it resumes see it. Every repair is counted under
    its `COUNTERS` name and written to the audit log as a `reconcile.*` event of agentdb's
    (the caller commits)."""

    clock: Clock
    #: Rows younger than this may belong to a workflow about to take the lock: left alone.
    grace: timedelta
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def cutoff(self) -> datetime:
        return self.clock() - self.grace

    def count(self, counter: str) -> None:
        self.counts[counter] = self.counts.get(counter, 0) + 1

    def error(self, text: str) -> None:
        self.errors.append(text)
        log.warning("reconcile.failed", error=text)

    def session(
        self,
        db: AsyncSession,
        row: AgentSession,
        action: str,
        repair: str,
        **details: JsonValue,
    ) -> None:
        self._record(
            db,
            action,
            repair,
            session_id=row.id,
            target=("session", str(row.id)),
            details={"status": row.status.value, **details},
        )

    def checkpoint(self, db: AsyncSession, checkpoint: Checkpoint, repair: str) -> None:
        self._record(
            db,
            "reconcile.checkpoint",
            repair,
            session_id=checkpoint.session_id,
            target=("checkpoint", str(checkpoint.id)),
            details={"status": checkpoint.status.value},
        )

    def branch(self, db: AsyncSession, branch: Branch, repair: str) -> None:
        self._record(
            db,
            "reconcile.branch",
            repair,
            session_id=branch.session_id,
            target=("branch", str(branch.id)),
            details={"kind": branch.kind.value},
        )

    def project(
        self, db: AsyncSession, row: AgentSession | None, session_id: uuid.UUID, project_id: str
    ) -> None:
        self._record(
            db,
            "reconcile.project",
            "orphan_project_deleted",
            session_id=session_id,
            target=("project", project_id),
            details={"session_status": row.status.value if row else None},
        )

    def _record(
        self,
        db: AsyncSession,
        action: str,
        repair: str,
        *,
        session_id: uuid.UUID,
        target: tuple[str, str],
        details: dict[str, JsonValue],
    ) -> None:
        self.count(COUNTERS[repair])
        kind, target_id = target
        db.add(
            event(
                SYSTEM,
                action,
                at=self.clock(),
                session_id=session_id,
                target_kind=kind,
                target_id=target_id,
                details={"repair": repair, **details},
            )
        )


async def pending_checkpoints(db: AsyncSession, session_id: uuid.UUID) -> list[Checkpoint]:
    """The session's pending checkpoints, oldest first, as the meta DB has them now."""
    found = await db.scalars(
        sa.select(Checkpoint)
        .where(
            col(Checkpoint.session_id) == session_id,
            col(Checkpoint.status) == CheckpointStatus.PENDING,
        )
        .order_by(col(Checkpoint.created_at), col(Checkpoint.id))
        .execution_options(populate_existing=True)
    )
    return list(found)


__all__ = ["COUNTERS", "Recovery", "pending_checkpoints"]
