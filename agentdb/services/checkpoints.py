"""Checkpoints: snapshots of a session's live database, kept as a tree, and restoring one in
place (same connection URI). One mutating workflow per session at a time (`SessionLocks`)."""

from __future__ import annotations

import builtins
import json
import uuid

import sqlalchemy as sa
from pydantic import JsonValue
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.neon import (
    NeonClient,
    NeonError,
    NeonNotFound,
    SnapshotCreated,
)
from meta_schema import AgentSession, Checkpoint, CheckpointStatus, Event, SessionStatus

from ._common import (
    LIVE_BRANCH_NAME,
    MAX_IDEMPOTENCY_KEY,
    MAX_MESSAGE,
    MAX_NAME,
    SYSTEM,
    Actor,
    Clock,
    SessionFactory,
    SessionLocks,
    check_text,
    describe,
    event,
    fill_from_snapshot,
    load_session,
    operation_ids,
    system_clock,
)
from ._errors import CheckpointNotFound, Conflict, ControlPlaneFailed, InvalidInput, SessionBusy
from ._views import CheckpointTree, CheckpointView

MAX_METADATA_BYTES = 64 * 1024
#: Session states that mean a workflow is running; found under the lock, one was interrupted.
_UNFINISHED = frozenset(
    {
        SessionStatus.PROVISIONING,
        SessionStatus.CHECKPOINTING,
        SessionStatus.RESTORING,
        SessionStatus.DELETING,
    }
)
#: Checkpoints whose snapshot is (or may be) kept, so their source branch must stay.
_RETAINED = (CheckpointStatus.PENDING, CheckpointStatus.READY, CheckpointStatus.DELETING)


class CheckpointService:
    """Takes, lists and restores a session's checkpoints."""

    def __init__(
        self,
        sessions: SessionFactory,
        neon: NeonClient,
        *,
        clock: Clock = system_clock,
        locks: SessionLocks | None = None,
    ) -> None:
        self._sessions = sessions
        self._neon = neon
        self._clock = clock
        self._locks = locks or SessionLocks(sessions)

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    # --- reading -------------------------------------------------------------------------------

    async def get(self, session_id: uuid.UUID, checkpoint_id: uuid.UUID) -> CheckpointView:
        async with self._db() as db:
            await load_session(db, session_id)
            return CheckpointView.of(await self._load(db, session_id, checkpoint_id))

    async def list(self, session_id: uuid.UUID) -> CheckpointTree:
        """The session's checkpoint tree, oldest first, with its head."""
        async with self._db() as db:
            row = await load_session(db, session_id)
            found = await db.scalars(
                sa.select(Checkpoint)
                .where(
                    col(Checkpoint.session_id) == session_id,
                    col(Checkpoint.status) != CheckpointStatus.DELETED,
                )
                .order_by(col(Checkpoint.created_at), col(Checkpoint.id))
            )
            return CheckpointTree(
                session_id=session_id,
                head_id=row.head_checkpoint_id,
                checkpoints=[CheckpointView.of(c) for c in found],
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
        row = await load_session(db, session_id)
        if row.status in _UNFINISHED:
            raise SessionBusy(session_id, row.status.value)
        if row.status != SessionStatus.READY or row.project_id is None:
            raise Conflict(f"session {session_id} is {row.status}")
        return row

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
    ) -> CheckpointView:
        """Snapshots the session's database as it is now, as a child of the head checkpoint,
        which it becomes. The same `idempotency_key` returns the checkpoint taken first."""
        check_text("label", label, MAX_NAME)
        check_text("message", message, MAX_MESSAGE)
        check_text("idempotency_key", idempotency_key, MAX_IDEMPOTENCY_KEY)
        meta = _checked_metadata(metadata)
        async with self._locks.hold(session_id), self._db() as db:
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
                idempotency_key=idempotency_key,
                created_at=self._clock(),
            )
            db.add(checkpoint)
            row.status = SessionStatus.CHECKPOINTING
            row.updated_at = self._clock()
            db.add(self._event(actor, "checkpoint.create", checkpoint, phase="requested"))
            await db.commit()
            try:
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
                )
            )
            await db.commit()
            return CheckpointView.of(checkpoint)

    async def _snapshot(
        self, project_id: str, branch_id: str, checkpoint: Checkpoint
    ) -> SnapshotCreated:
        """Takes the snapshot named after the checkpoint; if the call failed in a way that may
        have taken it anyway, finds that one instead of taking a second."""
        name = str(checkpoint.id)
        try:
            return await self._neon.create_snapshot(project_id, branch_id, name=name)
        except NeonError as error:
            if not getattr(error, "maybe_applied", False):
                raise
            try:
                lost = await self._neon.find_snapshot(project_id, name)
            except NeonError:
                raise error from None
            if lost is None:
                raise
            operations = await self._neon.wait_for_project_operations(project_id)
            return SnapshotCreated(snapshot=lost, operations=operations)

    # --- restore -------------------------------------------------------------------------------

    async def restore(
        self, session_id: uuid.UUID, checkpoint_id: uuid.UUID, *, actor: Actor = SYSTEM
    ) -> CheckpointView:
        """Puts the session's database back to `checkpoint_id`, in place: the connection URI
        stays, open connections are ended. Later checkpoints are kept; the next checkpoint is
        a child of this one. Returns the restored checkpoint (the new head)."""
        async with self._locks.hold(session_id), self._db() as db:
            row = await self._ready_session(db, session_id)
            checkpoint = await self._load(db, session_id, checkpoint_id)
            if checkpoint.status != CheckpointStatus.READY or checkpoint.snapshot_id is None:
                raise Conflict(f"checkpoint {checkpoint_id} is {checkpoint.status}")
            assert row.project_id is not None  # noqa: S101 - checked by _ready_session
            replaced = row.live_branch_id
            assert replaced is not None  # noqa: S101
            row.status = SessionStatus.RESTORING
            row.updated_at = self._clock()
            db.add(self._event(actor, "checkpoint.restore", checkpoint, phase="requested"))
            await db.commit()
            try:
                # Always name the live branch: Neon's default target can be an "(old)" one.
                restored = await self._neon.restore_snapshot(
                    row.project_id,
                    checkpoint.snapshot_id,
                    target_branch_id=replaced,
                    finalize_restore=True,
                )
            except NeonError as error:
                row.live_branch_id = await self._live_branch(row.project_id) or replaced
                row.status = SessionStatus.READY
                row.error = describe(error)
                row.updated_at = self._clock()
                db.add(
                    self._event(
                        actor, "checkpoint.restore", checkpoint, phase="failed", error=row.error
                    )
                )
                await db.commit()
                raise ControlPlaneFailed(f"restore of {session_id} failed: {error}") from error
            # The new live branch id first: from here on every call must target it.
            row.live_branch_id = restored.branch.id
            row.head_checkpoint_id = checkpoint.id
            row.status = SessionStatus.READY
            row.error = None
            row.updated_at = self._clock()
            await db.commit()
            cleanup_operations, outcome = await self._drop_replaced(db, row, replaced)
            db.add(
                self._event(
                    actor,
                    "checkpoint.restore",
                    checkpoint,
                    phase="succeeded",
                    operations=[*operation_ids(restored), *cleanup_operations],
                    replaced_branch=replaced,
                    replaced_branch_outcome=outcome,
                    live_branch=restored.branch.id,
                )
            )
            await db.commit()
            return CheckpointView.of(checkpoint)

    async def _drop_replaced(
        self, db: AsyncSession, row: AgentSession, replaced: str
    ) -> tuple[builtins.list[str], str]:
        """Deletes the "(old)" branch a restore left, unless a retained checkpoint's snapshot
        was taken from it (whether Neon keeps such snapshots without their branch is
        unconfirmed; the local plane does). Returns its operations and the outcome
        ("deleted", "kept" or why it failed); a failure leaves the branch for retention."""
        assert row.project_id is not None  # noqa: S101
        needed = await db.scalar(
            sa.select(sa.func.count())
            .select_from(Checkpoint)
            .where(
                col(Checkpoint.session_id) == row.id,
                col(Checkpoint.source_branch_id) == replaced,
                col(Checkpoint.status).in_(_RETAINED),
            )
        )
        if needed:
            return [], "kept"
        try:
            deleted = await self._neon.delete_branch(row.project_id, replaced)
        except NeonNotFound:
            return [], "deleted"
        except NeonError as error:
            return [], f"failed: {describe(error)}"
        return operation_ids(deleted), "deleted"

    async def _live_branch(self, project_id: str) -> str | None:
        """After a restore whose outcome is unknown: the id of the branch now live (the
        restore keeps the live branch's name), or None if the control plane cannot say."""
        try:
            found = await self._neon.find_branch(project_id, LIVE_BRANCH_NAME)
        except NeonError:
            return None
        return found.id if found else None

    def _event(
        self,
        actor: Actor,
        action: str,
        checkpoint: Checkpoint,
        *,
        phase: str,
        operations: builtins.list[str] | None = None,
        **details: str | None,
    ) -> Event:
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


__all__ = ["MAX_METADATA_BYTES", "CheckpointService"]
