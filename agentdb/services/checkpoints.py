"""Checkpoints: snapshots of a session's live database, kept as a tree, restoring one in place
(same connection URI), deleting one, and diffing two (or one against the live database). One
mutating workflow per session at a time (`SessionLocks`)."""

from __future__ import annotations

import builtins
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import sqlalchemy as sa
import structlog
from pydantic import JsonValue
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.neon import Branch as NeonBranch
from agentdb.neon import (
    NeonClient,
    NeonError,
    NeonNotFound,
    Snapshot,
    SnapshotCreated,
)
from agentdb.tiers import Tiers
from agentdb.wire import CheckpointTree, CheckpointView, DiffView, SessionView
from meta_schema import (
    AgentSession,
    Branch,
    BranchKind,
    BranchStatus,
    Checkpoint,
    CheckpointStatus,
    Event,
    SessionStatus,
)

from ._common import (
    LIVE_BRANCH_NAME,
    MAX_CODE_REF,
    MAX_IDEMPOTENCY_KEY,
    MAX_MESSAGE,
    MAX_NAME,
    REPLACED_BRANCH_NAME,
    RETAINED,
    SYSTEM,
    UNFINISHED,
    Actor,
    Clock,
    SessionFactory,
    SessionGate,
    SessionLocks,
    WorkflowKillSwitch,
    check_text,
    describe,
    event,
    fill_from_snapshot,
    load_session,
    neon_branch_name,
    operation_ids,
    system_clock,
)
from ._errors import (
    CheckpointNotFound,
    Conflict,
    ControlPlaneFailed,
    InvalidInput,
    ServiceError,
    SessionBusy,
    SessionNotFound,
)
from ._recovery import Recovery, pending_checkpoints
from ._replaced import ReplacedBranches, replaced_row
from .diff import DatabaseDescription, compare, describe_snapshot, describe_uri, reading_error

log = structlog.get_logger(__name__)

MAX_METADATA_BYTES = 64 * 1024
#: Session states in which a pending checkpoint is still that workflow's to finish.
_CHECKPOINT_OWNERS = (SessionStatus.PROVISIONING, SessionStatus.CHECKPOINTING)


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore answers: the restored checkpoint, now the head, and the session."""

    checkpoint: CheckpointView
    session: SessionView


async def load_ready_session(db: AsyncSession, session_id: uuid.UUID) -> AgentSession:
    """The session, if no workflow left it mid-way (`SessionBusy`) and it has a database
    (`Conflict` when failed or deleted)."""
    row = await load_session(db, session_id)
    if row.status in UNFINISHED:
        raise SessionBusy(session_id, row.status.value)
    if row.status != SessionStatus.READY or row.project_id is None:
        raise Conflict(f"session {session_id} is {row.status}")
    return row


class CheckpointService:
    """Takes, lists and restores a session's checkpoints."""

    def __init__(
        self,
        sessions: SessionFactory,
        neon: NeonClient,
        *,
        clock: Clock = system_clock,
        locks: SessionLocks | None = None,
        tiers: Tiers | None = None,
        blocked_recheck: timedelta = timedelta(hours=1),
        kill: WorkflowKillSwitch | None = None,
        gate: SessionGate | None = None,
        prune_soon: Callable[[], None] | None = None,
    ) -> None:
        """`tiers`: each session's tier caps its checkpoints (`max_checkpoints_per_session`);
        without them, every checkpoint is kept until deleted. `prune_soon`: called after a
        checkpoint to have `prune_pending` run soon (the `prune_checkpoints` job), so the
        checkpoint answers without waiting for retention's deletes; without it, `create`
        prunes before it answers. `blocked_recheck`: how often a
        replaced branch whose cleanup a child branch agentdb does not manage blocks is tried
        again. `gate`: the same `SessionGate` as the SQL service's (SQL calls wait while a
        checkpoint or restore has the live database)."""
        self._sessions = sessions
        self._neon = neon
        self._clock = clock
        self._locks = locks or SessionLocks(sessions)
        self._gate = SessionGate() if gate is None else gate
        self._tiers = tiers
        self._replaced = ReplacedBranches(neon, clock, recheck=blocked_recheck)
        self._kill = kill or WorkflowKillSwitch()
        self._prune_soon = prune_soon
        # Sessions whose last checkpoint may have put them past their tier's limit.
        self._over_limit: set[uuid.UUID] = set()

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    # --- reading -------------------------------------------------------------------------------

    async def get(self, session_id: uuid.UUID, checkpoint_id: uuid.UUID) -> CheckpointView:
        async with self._db() as db:
            await load_session(db, session_id)
            found = await self._load(db, session_id, checkpoint_id)
            return CheckpointView.of(found, parent_id=await _visible_parent(db, found))

    async def list(self, session_id: uuid.UUID) -> CheckpointTree:
        """The session's checkpoint tree, oldest first, with its head. Deleted checkpoints are
        left out; their children hang under the nearest ancestor that is not deleted."""
        async with self._db() as db:
            row = await load_session(db, session_id)
            found = list(
                await db.scalars(
                    sa.select(Checkpoint)
                    .where(col(Checkpoint.session_id) == session_id)
                    .order_by(col(Checkpoint.created_at), col(Checkpoint.id))
                )
            )
        by_id = {c.id: c for c in found}

        def visible(parent_id: uuid.UUID | None) -> uuid.UUID | None:
            while parent_id is not None and (parent := by_id.get(parent_id)) is not None:
                if parent.status != CheckpointStatus.DELETED:
                    break
                parent_id = parent.parent_id
            return parent_id

        return CheckpointTree(
            session_id=session_id,
            head_id=row.head_checkpoint_id,
            checkpoints=[
                CheckpointView.of(c, parent_id=visible(c.parent_id))
                for c in found
                if c.status != CheckpointStatus.DELETED
            ],
        )

    async def _load(
        self, db: AsyncSession, session_id: uuid.UUID, checkpoint_id: uuid.UUID
    ) -> Checkpoint:
        found = await db.get(Checkpoint, checkpoint_id, populate_existing=True)
        # Another session's checkpoint is as unknown as a made-up id.
        if found is None or found.session_id != session_id:
            raise CheckpointNotFound(checkpoint_id)
        if found.status == CheckpointStatus.DELETED:
            raise CheckpointNotFound(checkpoint_id)
        return found

    async def _ready_session(self, db: AsyncSession, session_id: uuid.UUID) -> AgentSession:
        return await load_ready_session(db, session_id)

    async def _ready_checkpoint(
        self, db: AsyncSession, session_id: uuid.UUID, checkpoint_id: uuid.UUID
    ) -> Checkpoint:
        checkpoint = await self._load(db, session_id, checkpoint_id)
        if checkpoint.status != CheckpointStatus.READY or checkpoint.snapshot_id is None:
            raise Conflict(f"checkpoint {checkpoint_id} is {checkpoint.status}")
        return checkpoint

    # --- create --------------------------------------------------------------------------------

    async def create(
        self,
        session_id: uuid.UUID,
        label: str | None = None,
        message: str | None = None,
        metadata: dict[str, JsonValue] | None = None,
        *,
        idempotency_key: str | None = None,
        actor: Actor = SYSTEM,
        reason: str | None = None,
        held: bool = False,
        code_ref: str | None = None,
    ) -> CheckpointView:
        """Snapshots the session's database as it is now, as a child of the head checkpoint,
        which it becomes. The same `idempotency_key` returns the checkpoint taken first.
        Then, if the session's tier keeps fewer checkpoints, the oldest ones are pruned
        (`prune`). `reason`: why agentdb took it when nobody asked (its events say so).
        `held`: the caller holds the session's lock already (a workflow that checkpoints
        as one of its steps)."""
        check_text("label", label, MAX_NAME)
        check_text("message", message, MAX_MESSAGE)
        check_text("idempotency_key", idempotency_key, MAX_IDEMPOTENCY_KEY)
        check_text("code_ref", code_ref, MAX_CODE_REF)
        meta = _checked_metadata(metadata)
        lock: contextlib.AbstractAsyncContextManager[None] = (
            contextlib.nullcontext() if held else self._locks.hold(session_id)
        )
        async with lock, self._db() as db:
            if idempotency_key is not None:
                earlier = await db.scalar(
                    sa.select(Checkpoint).where(
                        col(Checkpoint.session_id) == session_id,
                        col(Checkpoint.idempotency_key) == idempotency_key,
                    )
                )
                if earlier is not None:
                    return CheckpointView.of(earlier)
            row = await self._ready_session(db, session_id)
            assert row.project_id is not None  # noqa: S101 - checked by _ready_session
            assert row.live_branch_id is not None  # noqa: S101
            checkpoint = Checkpoint(
                session_id=session_id,
                parent_id=row.head_checkpoint_id,
                label=label,
                message=message,
                meta=meta,
                code_ref=code_ref,
                idempotency_key=idempotency_key,
                created_at=self._clock(),
            )
            db.add(checkpoint)
            row.status = SessionStatus.CHECKPOINTING
            row.updated_at = self._clock()
            db.add(
                self._event(
                    actor, "checkpoint.create", checkpoint, phase="requested", reason=reason
                )
            )
            await db.commit()
            self._kill.point("checkpoint.requested")
            try:
                async with self._gate.closed(session_id):
                    created = await self._snapshot(row.project_id, row.live_branch_id, checkpoint)
            except NeonError as error:
                checkpoint.status = CheckpointStatus.FAILED
                checkpoint.error = row.error = describe(error)
                row.status = SessionStatus.READY  # the live database is untouched
                row.updated_at = self._clock()
                db.add(
                    self._event(
                        actor, "checkpoint.create", checkpoint, phase="failed", error=row.error
                    )
                )
                await db.commit()
                raise ControlPlaneFailed(f"checkpoint of {session_id} failed: {error}") from error
            self._kill.point("checkpoint.snapshot_taken")
            fill_from_snapshot(checkpoint, created.snapshot, row.live_branch_id)
            row.head_checkpoint_id = checkpoint.id
            row.status = SessionStatus.READY
            row.error = None
            row.updated_at = self._clock()
            db.add(
                self._event(
                    actor,
                    "checkpoint.create",
                    checkpoint,
                    phase="succeeded",
                    operations=operation_ids(created),
                    reason=reason,
                )
            )
            await db.commit()
            view = CheckpointView.of(checkpoint)
            limited = self._checkpoint_limit(row.tier) is not None
        # After the lock is released: pruning deletes through `delete`, which takes it.
        if limited and self._prune_soon is not None:
            self._over_limit.add(session_id)
            self._prune_soon()
        elif limited:
            await self.prune(session_id, actor=actor)
        return view

    async def _snapshot(
        self, project_id: str, branch_id: str, checkpoint: Checkpoint
    ) -> SnapshotCreated:
        """Takes the snapshot named after the checkpoint; if the call failed in a way that may
        have taken it anyway, finds that one instead of taking a second."""
        name = str(checkpoint.id)
        try:
            return await self._neon.create_snapshot(project_id, branch_id, name=name)
        except NeonError as error:
            if not error.maybe_applied:
                raise
            try:
                lost = await self._neon.find_snapshot(project_id, name)
            except NeonError:
                raise error from None
            if lost is None:
                raise
            operations = await self._neon.wait_for_project_operations(project_id)
            return SnapshotCreated(snapshot=lost, operations=operations)

    async def _resume_checkpoint(
        self, db: AsyncSession, row: AgentSession, recovery: Recovery
    ) -> None:
        """A checkpoint a crash cut off: a snapshot named after it means it was taken, so it
        is completed (and becomes the head); no snapshot means it never was: it fails."""
        pending = await pending_checkpoints(db, row.id)
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
            recovery.checkpoint(db, checkpoint, repair)
        row.status = SessionStatus.READY
        row.updated_at = self._clock()
        await db.commit()

    async def _fail_stuck_checkpoints(
        self, db: AsyncSession, row: AgentSession, recovery: Recovery
    ) -> None:
        """Pending checkpoints no workflow owns any more (the session is not taking one)."""
        if row.status in _CHECKPOINT_OWNERS:
            return
        for checkpoint in await pending_checkpoints(db, row.id):
            if checkpoint.created_at > recovery.cutoff:
                continue
            checkpoint.status = CheckpointStatus.FAILED
            checkpoint.error = "left pending by an interrupted workflow"
            recovery.checkpoint(db, checkpoint, "checkpoint_failed")
        await db.commit()

    # --- restore -------------------------------------------------------------------------------

    async def restore(
        self,
        session_id: uuid.UUID,
        checkpoint_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        reason: str | None = None,
        held: bool = False,
    ) -> Restored:
        """Puts the session's database back to `checkpoint_id`, in place: the connection URI
        stays, open connections are ended. Later checkpoints are kept; the next checkpoint is
        a child of this one. Returns the restored checkpoint (the new head) and the session as
        the restore left it.

        The replaced live branch is recorded as a `replaced` branch and deleted at once unless
        a retained checkpoint was taken from it (then `cleanup_replaced` deletes it later).
        `reason` and `held` as for `create`."""
        lock: contextlib.AbstractAsyncContextManager[None] = (
            contextlib.nullcontext() if held else self._locks.hold(session_id)
        )
        async with lock, self._db() as db:
            row = await self._ready_session(db, session_id)
            checkpoint = await self._ready_checkpoint(db, session_id, checkpoint_id)
            assert row.project_id is not None  # noqa: S101 - checked by _ready_session
            assert checkpoint.snapshot_id is not None  # noqa: S101 - checked above
            replaced = row.live_branch_id
            assert replaced is not None  # noqa: S101
            row.status = SessionStatus.RESTORING
            # What a reconciler needs to finish the restore if this process dies mid-way.
            row.restore_target_id = checkpoint.id
            row.updated_at = self._clock()
            db.add(
                self._event(
                    actor, "checkpoint.restore", checkpoint, phase="requested", reason=reason
                )
            )
            await db.commit()
            self._kill.point("restore.requested")
            operations: builtins.list[str] = []
            try:
                # Always name the live branch: Neon's default target can be an "(old)" one.
                async with self._gate.closed(session_id):
                    restored = await self._neon.restore_snapshot(
                        row.project_id,
                        checkpoint.snapshot_id,
                        target_branch_id=replaced,
                        finalize_restore=True,
                    )
                live_id = restored.branch.id
                operations = operation_ids(restored)
            except NeonError as error:
                lost = await self._lost_restore(row.project_id, replaced, error)
                if lost is None:
                    await self._fail_restore(
                        db, row, checkpoint, replaced, error=error, actor=actor
                    )
                    raise ControlPlaneFailed(f"restore of {session_id} failed: {error}") from error
                live_id = lost
            self._kill.point("restore.restored")
            # The new live branch id and the replaced one in one commit: from here on every
            # call must target the new one, and the old one is never lost track of.
            row.live_branch_id = live_id
            row.head_checkpoint_id = checkpoint.id
            row.status = SessionStatus.READY
            row.restore_target_id = None
            row.error = None
            row.updated_at = self._clock()
            old = self._replaced_row(row, replaced)
            db.add(old)
            await db.commit()
            self._kill.point("restore.recorded")
            cleanup_operations = await self._drop_replaced(db, row, old)
            db.add(
                self._event(
                    actor,
                    "checkpoint.restore",
                    checkpoint,
                    phase="succeeded",
                    operations=[*operations, *cleanup_operations],
                    replaced_branch=replaced,
                    replaced_branch_outcome=old.status.value,
                    live_branch=live_id,
                )
            )
            await db.commit()
            parent_id = await _visible_parent(db, checkpoint)
            return Restored(CheckpointView.of(checkpoint, parent_id=parent_id), SessionView.of(row))

    async def _lost_restore(self, project_id: str, replaced: str, error: NeonError) -> str | None:
        """After a restore call that failed in a way that may have run it anyway (a 5xx, a lost
        answer): the new live branch's id once its operations are done, or None if the live
        branch is still the one it replaced (or the control plane cannot say)."""
        if not error.maybe_applied:
            return None
        try:
            await self._neon.wait_for_project_operations(project_id)
        except NeonError:
            return None
        live = await self._live_branch(project_id)
        return live if live not in {None, replaced} else None

    async def _fail_restore(
        self,
        db: AsyncSession,
        row: AgentSession,
        checkpoint: Checkpoint,
        replaced: str,
        *,
        error: NeonError,
        actor: Actor,
    ) -> None:
        """Records a restore that failed; if it ran after all (the live branch changed
        meanwhile), the live database is the checkpoint's and the old one is recorded."""
        assert row.project_id is not None  # noqa: S101 - restores need a project
        row.live_branch_id = await self._live_branch(row.project_id) or replaced
        if row.live_branch_id != replaced:
            # The restore happened after all: the live database is the checkpoint's,
            # and the "(old)" branch needs cleaning up (by `cleanup_replaced`).
            row.head_checkpoint_id = checkpoint.id
            db.add(self._replaced_row(row, replaced))
        row.status = SessionStatus.READY
        row.restore_target_id = None
        row.error = describe(error)
        row.updated_at = self._clock()
        db.add(
            self._event(actor, "checkpoint.restore", checkpoint, phase="failed", error=row.error)
        )
        await db.commit()

    def _replaced_row(self, row: AgentSession, branch_id: str) -> Branch:
        return replaced_row(row.id, branch_id, self._clock())

    async def _drop_replaced(
        self, db: AsyncSession, row: AgentSession, old: Branch
    ) -> builtins.list[str]:
        """Deletes a replaced branch (see `ReplacedBranches.drop`): kept while a retained
        checkpoint was taken from it; agentdb's finished child branches go first; other
        children leave it `ready` and blocked, with the reason in its `error`."""
        return await self._replaced.drop(db, row, old)

    async def _resume_restore(
        self, db: AsyncSession, row: AgentSession, recovery: Recovery
    ) -> None:
        """A restore a crash cut off. The branch named "main" tells whether it was finalized:
        a new id means it was (the old live branch is now "main (old)", recorded and dropped
        as `restore` does), the same id means the database is as it was. Either way, branches
        the restore made but never finalized are deleted."""
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
                outcome = await self._resume_replaced(db, row, replaced, branches, recovery)
            repair = "restore_completed"
        else:
            row.error = "agentdb stopped during a restore, which did not happen; nothing changed"
            repair = "restore_rolled_back"
        # Before the session is ready: if a delete fails, the next run starts over.
        keep = await self._known_branches(db, row)
        for branch in branches:
            if branch.name == LIVE_BRANCH_NAME or branch.id in keep or branch.name in keep:
                continue
            with contextlib.suppress(NeonNotFound):
                await self._neon.delete_branch(project_id, branch.id)
            recovery.session(
                db, row, "reconcile.restore", "restore_branch_deleted", branch=branch.id
            )
        row.restore_target_id = None
        row.status = SessionStatus.READY
        row.updated_at = self._clock()
        recovery.session(
            db,
            row,
            "reconcile.restore",
            repair,
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

    async def _resume_replaced(
        self,
        db: AsyncSession,
        row: AgentSession,
        replaced: str,
        branches: builtins.list[NeonBranch],
        recovery: Recovery,
    ) -> str | None:
        """Records the replaced live branch as `restore` does and drops it the same way
        (`_drop_replaced`); a failed delete leaves it `deleting`, with the error, for
        `cleanup_replaced` to retry. Returns the row's status (None if it was recorded
        already)."""
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
        await self._drop_replaced(db, row, old)
        if old.status == BranchStatus.DELETED:
            recovery.count("replaced_branches_deleted")
        elif old.status == BranchStatus.DELETING:
            recovery.error(f"replaced branch {replaced} of session {row.id}: {old.error}")
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

    # --- crash recovery ------------------------------------------------------------------------

    @staticmethod
    def unfinished(cutoff: datetime) -> builtins.list[sa.Select[tuple[uuid.UUID]]]:
        """The sessions with a checkpoint left pending since before `cutoff` (a checkpoint or
        restore in a session's state is `SessionService.unfinished`'s to find)."""
        return [
            sa.select(col(Checkpoint.session_id)).where(
                col(Checkpoint.status) == CheckpointStatus.PENDING,
                col(Checkpoint.created_at) <= cutoff,
            )
        ]

    async def resume(self, db: AsyncSession, row: AgentSession, recovery: Recovery) -> None:
        """Finishes an interrupted checkpoint or restore and fails the pending checkpoints no
        workflow owns any more. The caller holds the session's lock."""
        if row.status == SessionStatus.CHECKPOINTING:
            await self._resume_checkpoint(db, row, recovery)
        elif row.status == SessionStatus.RESTORING:
            await self._resume_restore(db, row, recovery)
        await self._fail_stuck_checkpoints(db, row, recovery)

    async def cleanup_replaced(self) -> int:
        """Deletes, in every session, the replaced live branches that no retained checkpoint
        needs any more (and retries those whose deletion failed). One blocked by child branches
        is reported once (`branch.cleanup_blocked`) and tried again only when a child may be
        gone. Returns how many were deleted. Meant for a periodic job."""
        async with self._db() as db:
            candidates = (
                await db.execute(
                    sa.select(col(Branch.id), col(Branch.session_id))
                    .where(
                        col(Branch.kind) == BranchKind.REPLACED,
                        col(Branch.status).in_((BranchStatus.READY, BranchStatus.DELETING)),
                    )
                    .order_by(col(Branch.created_at))
                )
            ).all()
        deleted = 0
        for branch_id, session_id in candidates:
            async with self._locks.hold(session_id), self._db() as db:
                old = await db.get(Branch, branch_id, populate_existing=True)
                if old is None or old.status not in {BranchStatus.READY, BranchStatus.DELETING}:
                    continue  # someone else got to it
                if await self._replaced.still_blocked(db, old):
                    continue  # reported once; tried again when a child ends or expires
                before: BranchStatus = old.status
                operations = await self._drop_replaced(db, await load_session(db, session_id), old)
                after: BranchStatus = old.status
                if after != before or after == BranchStatus.DELETING:
                    db.add(
                        event(
                            SYSTEM,
                            "branch.delete",
                            at=self._clock(),
                            session_id=session_id,
                            target_kind="branch",
                            target_id=old.id,
                            details={
                                "kind": old.kind.value,
                                "status": old.status.value,
                                "error": old.error,
                            },
                            operation_ids=operations,
                        )
                    )
                await db.commit()
                deleted += after == BranchStatus.DELETED
        return deleted

    async def _live_branch(self, project_id: str) -> str | None:
        """After a restore whose outcome is unknown: the id of the branch now live (the
        restore keeps the live branch's name), or None if the control plane cannot say."""
        try:
            found = await self._neon.find_branch(project_id, LIVE_BRANCH_NAME)
        except NeonError:
            return None
        return found.id if found else None

    # --- retention -----------------------------------------------------------------------------

    def _checkpoint_limit(self, tier_name: str) -> int | None:
        """How many ready checkpoints the tier keeps per session (None: no limit)."""
        tier = self._tiers.find(tier_name) if self._tiers is not None else None
        return tier.max_checkpoints_per_session if tier is not None else None

    async def prune(
        self, session_id: uuid.UUID, *, actor: Actor = SYSTEM
    ) -> builtins.list[uuid.UUID]:
        """Deletes (snapshots included, through `delete`, each recorded as a
        `checkpoint.delete` event with `reason: retention`) the oldest checkpoints beyond the
        session tier's `max_checkpoints_per_session`, and returns their ids, oldest first.

        Every ready checkpoint counts, but the head (the live database descends from it), the
        root (the empty database, the session's "start over") and pinned ones are never
        pruned: a session with many pinned checkpoints keeps more than the limit. A failure
        stops pruning without raising (the next checkpoint retries); it is logged, and a
        failed snapshot delete is recorded as `delete` records it."""
        async with self._db() as db:
            row = await load_session(db, session_id)
            allowed = self._checkpoint_limit(row.tier)
            if allowed is None:
                return []
            ready = list(
                await db.scalars(
                    sa.select(Checkpoint)
                    .where(
                        col(Checkpoint.session_id) == session_id,
                        col(Checkpoint.status) == CheckpointStatus.READY,
                    )
                    .order_by(col(Checkpoint.created_at), col(Checkpoint.id))
                )
            )
        excess = len(ready) - allowed
        candidates = [
            c
            for c in ready
            if not c.pinned and c.parent_id is not None and c.id != row.head_checkpoint_id
        ]
        pruned: builtins.list[uuid.UUID] = []
        for checkpoint in candidates[: max(excess, 0)]:
            try:
                await self.delete(session_id, checkpoint.id, actor=actor, reason="retention")
            except ServiceError as error:
                log.warning(
                    "checkpoint.prune_failed",
                    session_id=str(session_id),
                    checkpoint_id=str(checkpoint.id),
                    error=describe(error),
                )
                break
            pruned.append(checkpoint.id)
        return pruned

    async def prune_pending(self) -> int:
        """The `prune_checkpoints` job: prunes (`prune`) every session a checkpoint taken in
        this process may have put past its tier's limit, and returns how many it pruned. A
        session whose pruning failed, or that a crash forgot, is pruned after its next
        checkpoint (`prune` deletes every checkpoint past the limit, not one)."""
        pruned = 0
        while self._over_limit:
            session_id = self._over_limit.pop()
            try:
                pruned += len(await self.prune(session_id))
            except SessionNotFound:
                continue  # deleted since
        return pruned

    async def pin(
        self,
        session_id: uuid.UUID,
        checkpoint_id: uuid.UUID,
        *,
        pinned: bool = True,
        actor: Actor = SYSTEM,
    ) -> CheckpointView:
        """Pins (or with `pinned=False` unpins) a checkpoint: retention never prunes a pinned
        one; deleting it explicitly still works. Recorded as `checkpoint.pin` / `.unpin`;
        pinning twice is fine (nothing is recorded when nothing changes)."""
        async with self._locks.hold(session_id), self._db() as db:
            await load_session(db, session_id)
            checkpoint = await self._load(db, session_id, checkpoint_id)
            if checkpoint.pinned != pinned:
                checkpoint.pinned = pinned
                action = "checkpoint.pin" if pinned else "checkpoint.unpin"
                db.add(self._event(actor, action, checkpoint, phase="succeeded"))
                await db.commit()
            return CheckpointView.of(checkpoint, parent_id=await _visible_parent(db, checkpoint))

    # --- delete --------------------------------------------------------------------------------

    async def delete(
        self,
        session_id: uuid.UUID,
        checkpoint_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        reason: str | None = None,
    ) -> CheckpointView:
        """Deletes a checkpoint's snapshot (already gone counts as done) and drops it from the
        tree; its children hang under its parent from then on. The head checkpoint cannot be
        deleted (`Conflict`): the live database descends from it. A deleted checkpoint is
        gone: deleting it again raises `CheckpointNotFound`, like any unknown id. `reason`
        (e.g. "retention") goes into its events."""
        async with self._locks.hold(session_id), self._db() as db:
            row = await self._ready_session(db, session_id)
            checkpoint = await self._load(db, session_id, checkpoint_id)
            assert row.project_id is not None  # noqa: S101 - checked by _ready_session
            if checkpoint.id == row.head_checkpoint_id:
                raise Conflict(
                    f"checkpoint {checkpoint_id} is the session's head (the live database "
                    "descends from it); take or restore another checkpoint first"
                )
            if checkpoint.status == CheckpointStatus.PENDING:
                raise Conflict(f"checkpoint {checkpoint_id} is still being taken")
            operations: builtins.list[str] = []
            if checkpoint.snapshot_id is not None:
                checkpoint.status = CheckpointStatus.DELETING
                db.add(
                    self._event(
                        actor, "checkpoint.delete", checkpoint, phase="requested", reason=reason
                    )
                )
                await db.commit()
                try:
                    operations = [
                        op.id
                        for op in await self._neon.delete_snapshot(
                            row.project_id, checkpoint.snapshot_id
                        )
                    ]
                except NeonNotFound:
                    pass
                except NeonError as error:
                    # Stays `deleting`: its snapshot may be gone or not; deleting again retries.
                    checkpoint.error = describe(error)
                    db.add(
                        self._event(
                            actor,
                            "checkpoint.delete",
                            checkpoint,
                            phase="failed",
                            error=checkpoint.error,
                            reason=reason,
                        )
                    )
                    await db.commit()
                    raise ControlPlaneFailed(
                        f"deleting checkpoint {checkpoint_id} failed: {error}"
                    ) from error
            checkpoint.status = CheckpointStatus.DELETED
            checkpoint.error = None
            db.add(
                self._event(
                    actor,
                    "checkpoint.delete",
                    checkpoint,
                    phase="succeeded",
                    operations=operations,
                    reason=reason,
                )
            )
            await db.commit()
            return CheckpointView.of(checkpoint, parent_id=await _visible_parent(db, checkpoint))

    # --- diff ----------------------------------------------------------------------------------

    async def diff(
        self,
        session_id: uuid.UUID,
        checkpoint_id: uuid.UUID,
        against: uuid.UUID | None = None,
        *,
        actor: Actor = SYSTEM,
    ) -> DiffView:
        """What changed from `checkpoint_id` to `against` (another checkpoint) or, without
        it, to the live database as it is now: tables, columns, indexes, constraints, views,
        types, functions and row counts.

        A checkpoint is read once, through a temporary branch restored from its snapshot,
        and its description is kept (a checkpoint never changes): later diffs of it need no
        control plane."""
        async with self._locks.hold(session_id), self._db() as db:
            row = await load_session(db, session_id)
            source = await self._ready_checkpoint(db, session_id, checkpoint_id)
            target = None
            if against is not None:
                target = await self._ready_checkpoint(db, session_id, against)
            before = await self._description(db, row, source, actor)
            if target is not None:
                after = await self._description(db, row, target, actor)
            else:
                after = await self._live_description(db, session_id)
        return compare(
            before,
            after,
            session_id=session_id,
            from_checkpoint_id=checkpoint_id,
            to_checkpoint_id=against,
        )

    async def _description(
        self, db: AsyncSession, row: AgentSession, checkpoint: Checkpoint, actor: Actor
    ) -> DatabaseDescription:
        cached = DatabaseDescription.from_summary(checkpoint.summary)
        if cached is not None:
            return cached
        row = await self._ready_session(db, row.id)
        assert row.project_id is not None  # noqa: S101 - checked by _ready_session
        assert row.live_branch_id is not None  # noqa: S101
        assert checkpoint.snapshot_id is not None  # noqa: S101 - checked by _ready_checkpoint
        try:
            reading = await describe_snapshot(
                self._neon,
                row.project_id,
                checkpoint.snapshot_id,
                live_branch_id=row.live_branch_id,
                database_name=row.database_name or "",
                role_name=row.role_name or "",
                branch_name=f"diff-{checkpoint.id}",
            )
        except NeonError as error:
            raise ControlPlaneFailed(
                f"reading checkpoint {checkpoint.id} failed: {describe(error)}"
            ) from error
        except psycopg.Error as error:
            # Not chained: a traceback would print what `reading_error` withholds.
            raise ControlPlaneFailed(
                f"reading checkpoint {checkpoint.id} failed: {reading_error(error)}"
            ) from None
        description = reading.description
        checkpoint.summary = description.model_dump(mode="json")
        checkpoint.schema_hash = description.schema_hash()
        db.add(
            self._event(
                actor,
                "checkpoint.describe",
                checkpoint,
                phase="succeeded",
                operations=reading.operation_ids,
                temporary_branch=reading.branch_id,
                cleanup_error=reading.cleanup_error,
            )
        )
        await db.commit()
        return description

    async def _live_description(
        self, db: AsyncSession, session_id: uuid.UUID
    ) -> DatabaseDescription:
        row = await self._ready_session(db, session_id)
        assert row.project_id is not None  # noqa: S101 - checked by _ready_session
        try:
            uri = await self._neon.connection_uri(
                row.project_id,
                database_name=row.database_name or "",
                role_name=row.role_name or "",
                branch_id=row.live_branch_id,
            )
            return await describe_uri(uri)
        except NeonError as error:
            raise ControlPlaneFailed(
                f"reading the live database of {session_id} failed: {describe(error)}"
            ) from error
        except psycopg.Error as error:
            raise ControlPlaneFailed(
                f"reading the live database of {session_id} failed: {reading_error(error)}"
            ) from None

    def _event(
        self,
        actor: Actor,
        action: str,
        checkpoint: Checkpoint,
        *,
        phase: str,
        operations: builtins.list[str] | None = None,
        reason: str | None = None,
        **details: str | None,
    ) -> Event:
        if reason is not None:  # why a workflow ran when the caller did not ask for it
            details["reason"] = reason
        return event(
            actor,
            action,
            at=self._clock(),
            session_id=checkpoint.session_id,
            target_kind="checkpoint",
            target_id=checkpoint.id,
            details={"phase": phase, "status": checkpoint.status.value, **details},
            operation_ids=operations or (),
        )


def _created(snapshot: Snapshot) -> datetime:
    return snapshot.created_at or datetime.min.replace(tzinfo=UTC)


async def _visible_parent(db: AsyncSession, checkpoint: Checkpoint) -> uuid.UUID | None:
    """The nearest ancestor that is not deleted (what the tree shows as the parent)."""
    parent_id = checkpoint.parent_id
    while parent_id is not None:
        parent = await db.get(Checkpoint, parent_id)
        if parent is None or parent.status != CheckpointStatus.DELETED:
            return parent_id
        parent_id = parent.parent_id
    return None


def _checked_metadata(metadata: dict[str, JsonValue] | None) -> dict[str, JsonValue]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidInput("metadata", "must be a JSON object")
    try:
        encoded = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidInput("metadata", f"must be plain JSON ({error})") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidInput("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    loaded: dict[str, JsonValue] = json.loads(encoded)
    return loaded


__all__ = ["MAX_METADATA_BYTES", "REPLACED_BRANCH_NAME", "CheckpointService", "Restored"]
