"""The reconciler: finishes or undoes what a crashed workflow left half done (the rows' states
say what), and deletes control-plane projects that no session owns. Safe to run at any time:
every repair happens under the session's workflow lock, and a second run finds nothing."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import structlog
from pydantic import BaseModel, ConfigDict, JsonValue
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.neon import Branch as NeonBranch
from agentdb.neon import NeonClient, NeonError, NeonNotFound, Project, Snapshot
from meta_schema import (
    AgentSession,
    Branch,
    BranchKind,
    BranchStatus,
    Checkpoint,
    CheckpointStatus,
    SessionStatus,
)

from ._common import (
    LIVE_BRANCH_NAME,
    REPLACED_BRANCH_NAME,
    RETAINED,
    SYSTEM,
    UNFINISHED,
    Clock,
    SessionFactory,
    SessionLocks,
    describe,
    event,
    fill_from_snapshot,
    system_clock,
)
from ._errors import ControlPlaneFailed
from ._replaced import ReplacedBranches, replaced_row
from ._secrets import Secrets
from .branches import neon_branch_name
from .sessions import record_deleted

log = structlog.get_logger(__name__)

#: Session states in which a pending checkpoint is still that workflow's to finish.
_CHECKPOINT_OWNERS = (SessionStatus.PROVISIONING, SessionStatus.CHECKPOINTING)
_OWN_KINDS = (BranchKind.DEV, BranchKind.PREVIEW)


@dataclass
class _Tally:
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def count(self, counter: str) -> None:
        self.counts[counter] = self.counts.get(counter, 0) + 1

    def error(self, text: str) -> None:
        self.errors.append(text)
        log.warning("reconcile.failed", error=text)


class ReconcileReport(BaseModel):
    """What one reconciler run repaired, per kind, and what it could not (one line each)."""

    model_config = ConfigDict(frozen=True)

    sessions_failed: int = 0
    sessions_deleted: int = 0
    checkpoints_completed: int = 0
    checkpoints_failed: int = 0
    restores_completed: int = 0
    restores_rolled_back: int = 0
    restore_branches_deleted: int = 0
    replaced_branches_deleted: int = 0
    branches_failed: int = 0
    branches_deleted: int = 0
    failed_branches_deleted: int = 0
    failed_projects_deleted: int = 0
    orphan_projects_deleted: int = 0
    errors: tuple[str, ...] = ()

    @property
    def repairs(self) -> int:
        """How many repairs the run made (errors not counted)."""
        counts = self.model_dump(exclude={"errors"})
        return sum(value for value in counts.values() if isinstance(value, int))


class Reconciler:
    """Repairs the meta DB and the control plane after crashes; see `run_once`.

    Pass the same `SessionLocks` as the services of this process, so a workflow still running
    here finishes before its session is looked at (other processes wait on the advisory lock).
    `grace` skips intent rows younger than that: `SessionService.create` commits its row just
    before it takes the lock, and a run must not undo a create that is about to start.
    """

    def __init__(
        self,
        sessions: SessionFactory,
        neon: NeonClient,
        secrets: Secrets,
        *,
        clock: Clock = system_clock,
        locks: SessionLocks | None = None,
        project_prefix: str = "agentdb-",
        grace: timedelta = timedelta(seconds=30),
    ) -> None:
        self._sessions = sessions
        self._neon = neon
        # Kept for finishing a create one day; undoing it needs no secret.
        self._secrets = secrets
        self._clock = clock
        self._locks = locks or SessionLocks(sessions)
        self._prefix = project_prefix
        self._grace = grace
        # The restore's own handling of the branch it replaced (its children, its snapshots).
        self._replaced = ReplacedBranches(neon, clock, recheck=timedelta(hours=1))

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    async def run_once(self) -> ReconcileReport:
        """One pass over everything unfinished, then over the control plane's projects.
        Control-plane errors for one session are recorded and the others still get repaired."""
        tally = _Tally()
        for session_id in await self._sessions_to_repair():
            try:
                async with self._locks.hold(session_id):
                    await self._repair(session_id, tally)
            except (NeonError, ControlPlaneFailed) as error:
                tally.error(f"session {session_id}: {describe(error)}")
        await self._delete_orphans(tally)
        report = ReconcileReport(**tally.counts, errors=tuple(tally.errors))
        if report.repairs or report.errors:
            log.info(
                "reconcile.done",
                **report.model_dump(exclude={"errors"}),
                errors=len(report.errors),
            )
        return report

    async def _sessions_to_repair(self) -> list[uuid.UUID]:
        cutoff = self._clock() - self._grace
        queries = [
            sa.select(col(AgentSession.id)).where(
                col(AgentSession.status).in_(UNFINISHED), col(AgentSession.updated_at) <= cutoff
            ),
            # A create whose undo could not delete the project kept its id for a later run.
            sa.select(col(AgentSession.id)).where(
                col(AgentSession.status) == SessionStatus.FAILED,
                col(AgentSession.project_id).is_not(None),
                col(AgentSession.live_branch_id).is_(None),
            ),
            sa.select(col(Checkpoint.session_id)).where(
                col(Checkpoint.status) == CheckpointStatus.PENDING,
                col(Checkpoint.created_at) <= cutoff,
            ),
            sa.select(col(Branch.session_id)).where(_stuck_branch(cutoff)),
        ]
        async with self._db() as db:
            found = await db.scalars(sa.union(*queries))
            return sorted(found)

    async def _repair(self, session_id: uuid.UUID, tally: _Tally) -> None:
        """Everything one session needs, under its lock, from a fresh read of its rows."""
        async with self._db() as db:
            row = await db.get(AgentSession, session_id, populate_existing=True)
            if row is None:
                return
            if row.status == SessionStatus.PROVISIONING:
                await self._undo_create(db, row, tally)
            elif row.status == SessionStatus.CHECKPOINTING:
                await self._finish_checkpoint(db, row, tally)
            elif row.status == SessionStatus.RESTORING:
                await self._finish_restore(db, row, tally)
            elif row.status == SessionStatus.DELETING:
                await self._finish_delete(db, row, tally)
            elif row.status == SessionStatus.FAILED and row.project_id and not row.live_branch_id:
                await self._delete_project(row.project_id)
                row.project_id = None
                self._record(db, row, "reconcile.session", "failed_project_deleted", tally)
                await db.commit()
            await self._fail_stuck_checkpoints(db, row, tally)
            await self._repair_branches(db, row, tally)

    # --- sessions ----------------------------------------------------------------------------

    async def _undo_create(self, db: AsyncSession, row: AgentSession, tally: _Tally) -> None:
        """Undoes an interrupted create, as `SessionService` does after a failure: deletes the
        project (found by name if its id was never recorded), fails the pending root
        checkpoint. Finishing it instead would need the role's password, which Neon returns
        only when the project is created; and whoever called create got no answer anyway."""
        project_id = row.project_id
        if project_id is None:
            found = await self._neon.find_project(f"{self._prefix}{row.id}", org_id=row.org_id)
            project_id = found.id if found else None
        if project_id is not None:
            await self._delete_project(project_id)
        error = "agentdb stopped while creating this session; the reconciler undid the create"
        for checkpoint in await self._pending_checkpoints(db, row.id):
            checkpoint.status = CheckpointStatus.FAILED
            checkpoint.error = error
        row.status = SessionStatus.FAILED
        row.error = error
        row.project_id = row.live_branch_id = row.endpoint_id = None
        row.encrypted_connection_secret = None
        row.updated_at = self._clock()
        self._record(db, row, "reconcile.session", "create_undone", tally, project_id=project_id)
        await db.commit()

    async def _finish_checkpoint(self, db: AsyncSession, row: AgentSession, tally: _Tally) -> None:
        """A snapshot named after the pending checkpoint means it was taken: complete the
        checkpoint (it becomes the head); no snapshot means it never was: fail it."""
        pending = await self._pending_checkpoints(db, row.id)
        snapshots: dict[str, Snapshot] = {}
        if pending and row.project_id is not None:
            await self._neon.wait_for_project_operations(row.project_id)
            # Oldest first, so the newest of several with one name wins.
            listed = await self._neon.list_snapshots(row.project_id)
            snapshots = {s.name: s for s in sorted(listed, key=_created)}
        for checkpoint in pending:
            snapshot = snapshots.get(str(checkpoint.id))
            if snapshot is not None and row.live_branch_id is not None:
                fill_from_snapshot(checkpoint, snapshot, row.live_branch_id)
                row.head_checkpoint_id = checkpoint.id
                repair = "checkpoint_completed"
            else:
                checkpoint.status = CheckpointStatus.FAILED
                checkpoint.error = "agentdb stopped before the snapshot was taken"
                repair = "checkpoint_failed"
            self._record_checkpoint(db, checkpoint, repair, tally)
        row.status = SessionStatus.READY
        row.updated_at = self._clock()
        await db.commit()

    async def _finish_restore(self, db: AsyncSession, row: AgentSession, tally: _Tally) -> None:
        """The branch named "main" tells whether the restore was finalized: a new id means it
        was (the old live branch is now "main (old)"), the same id means the database is as
        it was. Either way, branches the restore made but never finalized are deleted."""
        project_id = row.project_id
        if project_id is None:
            raise ControlPlaneFailed(f"session {row.id} is restoring but has no project")
        await self._neon.wait_for_project_operations(project_id)
        branches = [b async for b in self._neon.iter_branches(project_id)]
        live = next((b for b in branches if b.name == LIVE_BRANCH_NAME), None)
        if live is None:
            raise ControlPlaneFailed(f"project {project_id} has no branch {LIVE_BRANCH_NAME!r}")
        replaced = row.live_branch_id
        outcome: str | None = None
        if live.id != replaced:
            target = row.restore_target_id or await self._restored_checkpoint(db, row, live)
            row.live_branch_id = live.id
            if target is not None:
                row.head_checkpoint_id = target
            row.error = None
            if replaced is not None:
                outcome = await self._record_replaced(db, row, replaced, branches, tally)
            repair = "restore_completed"
        else:
            row.error = "agentdb stopped during a restore, which did not happen; nothing changed"
            repair = "restore_rolled_back"
        # Before the session is ready: if a delete fails, the next run starts over.
        keep = await self._known_branches(db, row)
        for branch in branches:
            if branch.name == LIVE_BRANCH_NAME or branch.id in keep or branch.name in keep:
                continue
            await self._delete_branch(project_id, branch.id)
            self._record(
                db, row, "reconcile.restore", "restore_branch_deleted", tally, branch=branch.id
            )
        row.restore_target_id = None
        row.status = SessionStatus.READY
        row.updated_at = self._clock()
        self._record(
            db,
            row,
            "reconcile.restore",
            repair,
            tally,
            live_branch=live.id,
            replaced_branch=replaced if outcome else None,
            replaced_branch_outcome=outcome,
        )
        await db.commit()

    async def _restored_checkpoint(
        self, db: AsyncSession, row: AgentSession, live: NeonBranch
    ) -> uuid.UUID | None:
        """Without a recorded restore target: the checkpoint whose snapshot the live branch was
        restored from."""
        if live.restored_from is None:
            return None
        found: uuid.UUID | None = await db.scalar(
            sa.select(col(Checkpoint.id)).where(
                col(Checkpoint.session_id) == row.id,
                col(Checkpoint.snapshot_id) == live.restored_from,
            )
        )
        return found

    async def _record_replaced(
        self,
        db: AsyncSession,
        row: AgentSession,
        replaced: str,
        branches: list[NeonBranch],
        tally: _Tally,
    ) -> str | None:
        """Records the replaced live branch as the restore does (`replaced_row`) and leaves it
        to the same `ReplacedBranches.drop`: deleted at once unless a retained checkpoint's
        snapshot was taken from it or children are in the way (then `ready` for
        `cleanup_replaced`); a failed delete leaves it `deleting`, with the error, for that
        job to retry. Returns the row's status (None if it was recorded already)."""
        known = await db.scalar(
            sa.select(col(Branch.id)).where(
                col(Branch.session_id) == row.id, col(Branch.branch_id) == replaced
            )
        )
        if known is not None:
            return None
        name = next((b.name for b in branches if b.id == replaced), REPLACED_BRANCH_NAME)
        old = replaced_row(row.id, replaced, self._clock(), name)
        db.add(old)
        await self._replaced.drop(db, row, old)
        if old.status == BranchStatus.DELETED:
            tally.count("replaced_branches_deleted")
        elif old.status == BranchStatus.DELETING:
            tally.error(f"replaced branch {replaced} of session {row.id}: {old.error}")
        return old.status.value

    async def _known_branches(self, db: AsyncSession, row: AgentSession) -> set[str]:
        """Ids and names of every branch this session has a reason to keep: the live one, its
        dev, preview and replaced branches, and the sources of retained checkpoints."""
        keep: set[str] = {row.live_branch_id} if row.live_branch_id else set()
        for kind, branch_id, branch_row in await db.execute(
            sa.select(col(Branch.kind), col(Branch.branch_id), col(Branch.id)).where(
                col(Branch.session_id) == row.id
            )
        ):
            keep.add(neon_branch_name(kind, branch_row))
            if branch_id is not None:
                keep.add(branch_id)
        sources = await db.scalars(
            sa.select(col(Checkpoint.source_branch_id)).where(
                col(Checkpoint.session_id) == row.id,
                col(Checkpoint.status).in_(RETAINED),
                col(Checkpoint.source_branch_id).is_not(None),
            )
        )
        keep.update(source for source in sources if source is not None)
        return keep

    async def _finish_delete(self, db: AsyncSession, row: AgentSession, tally: _Tally) -> None:
        if row.project_id is not None:
            await self._delete_project(row.project_id)
        await record_deleted(db, row, self._clock())
        self._record(db, row, "reconcile.session", "delete_finished", tally)
        await db.commit()

    # --- checkpoints and branches ------------------------------------------------------------

    async def _pending_checkpoints(
        self, db: AsyncSession, session_id: uuid.UUID
    ) -> list[Checkpoint]:
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

    async def _fail_stuck_checkpoints(
        self, db: AsyncSession, row: AgentSession, tally: _Tally
    ) -> None:
        """Pending checkpoints no workflow owns any more (the session is not taking one)."""
        if row.status in _CHECKPOINT_OWNERS:
            return
        cutoff = self._clock() - self._grace
        for checkpoint in await self._pending_checkpoints(db, row.id):
            if checkpoint.created_at > cutoff:
                continue
            checkpoint.status = CheckpointStatus.FAILED
            checkpoint.error = "left pending by an interrupted workflow"
            self._record_checkpoint(db, checkpoint, "checkpoint_failed", tally)
        await db.commit()

    async def _repair_branches(self, db: AsyncSession, row: AgentSession, tally: _Tally) -> None:
        """Dev and preview branches: a pending one's create was interrupted (delete whatever
        it made, fail it); a deleting one's delete was (finish it; gone counts as done); a
        failed one whose cleanup failed kept its Neon id (delete it now). Replaced branches
        are `CheckpointService.cleanup_replaced`'s."""
        stuck = await db.scalars(
            sa.select(Branch)
            .where(
                col(Branch.session_id) == row.id,
                _stuck_branch(self._clock() - self._grace),
            )
            .order_by(col(Branch.created_at), col(Branch.id))
            .execution_options(populate_existing=True)
        )
        for branch in list(stuck):
            if row.project_id is not None:
                branch_id = branch.branch_id
                if branch_id is None and branch.status == BranchStatus.PENDING:
                    name = neon_branch_name(branch.kind, branch.id)
                    branch_id = await self._find_branch(row.project_id, name)
                if branch_id is not None:
                    await self._delete_branch(row.project_id, branch_id)
            if branch.status == BranchStatus.PENDING:
                branch.status = BranchStatus.FAILED
                branch.error = "agentdb stopped while creating this branch; it was removed"
                repair, counter = "branch_failed", "branches_failed"
            elif branch.status == BranchStatus.DELETING:
                branch.status = BranchStatus.DELETED
                branch.error = None
                repair, counter = "branch_deleted", "branches_deleted"
            else:
                repair, counter = "failed_branch_deleted", "failed_branches_deleted"
            branch.branch_id = None if branch.status == BranchStatus.FAILED else branch.branch_id
            branch.endpoint_id = None
            branch.encrypted_connection_secret = None
            tally.count(counter)
            db.add(
                event(
                    SYSTEM,
                    "reconcile.branch",
                    at=self._clock(),
                    session_id=row.id,
                    target_kind="branch",
                    target_id=branch.id,
                    details={"repair": repair, "kind": branch.kind.value},
                )
            )
            await db.commit()

    # --- orphan projects ---------------------------------------------------------------------

    async def _delete_orphans(self, tally: _Tally) -> None:
        """Deletes projects named like a session's whose session does not exist, or ended
        (failed or deleted) without owning that project. Other projects are never touched."""
        async with self._db() as db:
            org_ids = list(await db.scalars(sa.select(col(AgentSession.org_id)).distinct()))
        for org_id in org_ids or [None]:
            try:
                projects = [p async for p in self._neon.iter_projects(org_id=org_id)]
            except NeonError as error:
                tally.error(f"listing projects of org {org_id}: {describe(error)}")
                continue
            for project in projects:
                session_id = self._session_of(project)
                if session_id is None:
                    continue
                try:
                    async with self._locks.hold(session_id):
                        await self._delete_if_orphan(session_id, project, tally)
                except NeonError as error:
                    tally.error(f"orphan project {project.id}: {describe(error)}")

    def _session_of(self, project: Project) -> uuid.UUID | None:
        """The session id in a project's name, if the name is exactly prefix + a UUID."""
        if not project.name.startswith(self._prefix):
            return None
        rest = project.name.removeprefix(self._prefix)
        try:
            session_id = uuid.UUID(rest)
        except ValueError:
            return None
        return session_id if str(session_id) == rest else None

    async def _delete_if_orphan(
        self, session_id: uuid.UUID, project: Project, tally: _Tally
    ) -> None:
        async with self._db() as db:
            row = await db.get(AgentSession, session_id, populate_existing=True)
            orphan = (
                row is None
                or row.status == SessionStatus.DELETED
                or (row.status == SessionStatus.FAILED and row.project_id != project.id)
            )
            # Gone already: another process's reconciler got there first.
            if not orphan or not await self._delete_project(project.id):
                return
            tally.count("orphan_projects_deleted")
            db.add(
                event(
                    SYSTEM,
                    "reconcile.project",
                    at=self._clock(),
                    session_id=session_id,
                    target_kind="project",
                    target_id=project.id,
                    details={
                        "repair": "orphan_project_deleted",
                        "session_status": row.status.value if row else None,
                    },
                )
            )
            await db.commit()

    # --- helpers -----------------------------------------------------------------------------

    async def _delete_project(self, project_id: str) -> bool:
        """Deletes the project; False if it was already gone."""
        try:
            await self._neon.wait_for_project_operations(project_id)
            await self._neon.delete_project(project_id)
        except NeonNotFound:
            return False
        return True

    async def _delete_branch(self, project_id: str, branch_id: str) -> None:
        with contextlib.suppress(NeonNotFound):
            await self._neon.delete_branch(project_id, branch_id)

    async def _find_branch(self, project_id: str, name: str) -> str | None:
        try:
            found = await self._neon.find_branch(project_id, name)
        except NeonNotFound:
            return None
        return found.id if found else None

    def _record(
        self,
        db: AsyncSession,
        row: AgentSession,
        action: str,
        repair: str,
        tally: _Tally,
        **details: JsonValue,
    ) -> None:
        counter = _COUNTERS[repair]
        tally.count(counter)
        db.add(
            event(
                SYSTEM,
                action,
                at=self._clock(),
                session_id=row.id,
                target_kind="session",
                target_id=row.id,
                details={"repair": repair, "status": row.status.value, **details},
            )
        )

    def _record_checkpoint(
        self, db: AsyncSession, checkpoint: Checkpoint, repair: str, tally: _Tally
    ) -> None:
        counter = _COUNTERS[repair]
        tally.count(counter)
        db.add(
            event(
                SYSTEM,
                "reconcile.checkpoint",
                at=self._clock(),
                session_id=checkpoint.session_id,
                target_kind="checkpoint",
                target_id=checkpoint.id,
                details={"repair": repair, "status": checkpoint.status.value},
            )
        )


_COUNTERS = {
    "create_undone": "sessions_failed",
    "delete_finished": "sessions_deleted",
    "failed_project_deleted": "failed_projects_deleted",
    "checkpoint_completed": "checkpoints_completed",
    "checkpoint_failed": "checkpoints_failed",
    "restore_completed": "restores_completed",
    "restore_rolled_back": "restores_rolled_back",
    "restore_branch_deleted": "restore_branches_deleted",
}


def _created(snapshot: Snapshot) -> datetime:
    return snapshot.created_at or datetime.min.replace(tzinfo=UTC)


def _stuck_branch(cutoff: datetime) -> sa.ColumnElement[bool]:
    """Dev and preview branch rows an interrupted workflow left: a create (once older than
    the grace period: it may be about to take the lock), a delete, or a failed create's
    cleanup."""
    return sa.and_(
        col(Branch.kind).in_(_OWN_KINDS),
        sa.or_(
            col(Branch.status) == BranchStatus.DELETING,
            sa.and_(col(Branch.status) == BranchStatus.PENDING, col(Branch.created_at) <= cutoff),
            sa.and_(col(Branch.status) == BranchStatus.FAILED, col(Branch.branch_id).is_not(None)),
        ),
    )


__all__ = ["ReconcileReport", "Reconciler"]
