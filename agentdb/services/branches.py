"""Dev and preview branches: copies of a session's database beside the live one, each with its
own compute and connection URI, that expire. A dev branch is a writable copy of the live
database as it is now or of a checkpoint; a preview shows a checkpoint. Neither changes the
live database.

Every workflow writes its intent first (a `pending` row), then calls the control plane, then
records the outcome; the control plane's branch is named "<kind>-<row id>", so a reconciler
finds one whose creation was interrupted.
"""

from __future__ import annotations

import builtins
import contextlib
import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.neon import Branch as NeonBranch
from agentdb.neon import (
    Endpoint,
    EndpointOptions,
    NeonClient,
    NeonError,
    NeonNotFound,
)
from agentdb.wire import BranchView
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
    MAX_IDEMPOTENCY_KEY,
    MAX_NAME,
    SYSTEM,
    Actor,
    Clock,
    SessionFactory,
    SessionGate,
    SessionLocks,
    WorkflowKillSwitch,
    check_text,
    describe,
    event,
    load_session,
    neon_branch_name,
    system_clock,
)
from ._errors import BranchNotFound, CheckpointNotFound, Conflict, ControlPlaneFailed, InvalidInput
from ._recovery import Recovery
from ._secrets import Secrets
from .checkpoints import load_ready_session

#: The kinds this service manages; `replaced` rows belong to restores (CheckpointService).
_KINDS = (BranchKind.DEV, BranchKind.PREVIEW)
#: States in which a branch may still exist on the control plane and can be deleted.
_DELETABLE = (BranchStatus.READY, BranchStatus.FAILED, BranchStatus.DELETING)


class BranchService:
    """Creates, reads, resets, deletes and expires a session's dev and preview branches."""

    def __init__(
        self,
        sessions: SessionFactory,
        neon: NeonClient,
        secrets: Secrets,
        *,
        clock: Clock = system_clock,
        locks: SessionLocks | None = None,
        default_ttl: timedelta = timedelta(hours=24),
        max_ttl: timedelta = timedelta(days=30),
        kill: WorkflowKillSwitch | None = None,
        gate: SessionGate | None = None,
    ) -> None:
        """`gate`: the same `SessionGate` as the SQL service's (SQL calls wait while a branch
        is copied from the live database)."""
        if not timedelta(0) < default_ttl <= max_ttl:
            raise ValueError("default_ttl must be positive and at most max_ttl")
        self._sessions = sessions
        self._neon = neon
        self._secrets = secrets
        self._clock = clock
        self._locks = locks or SessionLocks(sessions)
        self._default_ttl = default_ttl
        self._max_ttl = max_ttl
        self._kill = kill or WorkflowKillSwitch()
        self._gate = SessionGate() if gate is None else gate

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    # --- reading -------------------------------------------------------------------------------

    async def get(self, session_id: uuid.UUID, branch_id: uuid.UUID) -> BranchView:
        async with self._db() as db:
            await load_session(db, session_id)
            return BranchView.of(await self._load(db, session_id, branch_id))

    async def list(
        self, session_id: uuid.UUID, *, include_deleted: bool = False
    ) -> builtins.list[BranchView]:
        """The session's dev and preview branches, oldest first."""
        query = sa.select(Branch).where(
            col(Branch.session_id) == session_id, col(Branch.kind).in_(_KINDS)
        )
        if not include_deleted:
            query = query.where(col(Branch.status) != BranchStatus.DELETED)
        async with self._db() as db:
            await load_session(db, session_id)
            rows = await db.scalars(query.order_by(col(Branch.created_at), col(Branch.id)))
            return [BranchView.of(row) for row in rows]

    async def connection_uri(self, session_id: uuid.UUID, branch_id: uuid.UUID) -> str:
        """The branch's connection URI, password included: for the session's owner only,
        never for an LLM, a browser or a log. `Conflict` unless the branch is ready."""
        async with self._db() as db:
            session = await load_session(db, session_id)
            row = await self._load(db, session_id, branch_id)
        if session.status == SessionStatus.DELETED:
            # Deleting the session deleted its project, and every branch with it.
            raise Conflict(f"session {session_id} is deleted")
        if row.status != BranchStatus.READY or row.encrypted_connection_secret is None:
            raise Conflict(f"branch {branch_id} is {row.status}, not ready")
        return self._secrets.decrypt(row.encrypted_connection_secret)

    async def _load(self, db: AsyncSession, session_id: uuid.UUID, branch_id: uuid.UUID) -> Branch:
        found = await db.get(Branch, branch_id, populate_existing=True)
        # Another session's branch, or a restore's replaced one, is as unknown as a made-up id.
        if found is None or found.session_id != session_id or found.kind not in _KINDS:
            raise BranchNotFound(branch_id)
        return found

    # --- create --------------------------------------------------------------------------------

    async def create(
        self,
        session_id: uuid.UUID,
        *,
        name: str | None = None,
        checkpoint_id: uuid.UUID | None = None,
        ttl: timedelta | None = None,
        idempotency_key: str | None = None,
        actor: Actor = SYSTEM,
    ) -> BranchView:
        """A dev branch: a writable copy of the live database as it is now, or of
        `checkpoint_id`, with its own compute and connection URI, deleted after `ttl`
        (default `default_ttl`, at most `max_ttl`). The same `idempotency_key` returns the
        branch the first call created.

        Raises `InvalidInput`, `CheckpointNotFound` (unknown, another session's or not
        ready), `SessionBusy`/`Conflict` (the session is not ready), or `ControlPlaneFailed`
        (the branch is then `failed`, with nothing left on the control plane)."""
        check_text("name", name, MAX_NAME)
        return await self._create(
            BranchKind.DEV,
            session_id,
            name=name,
            checkpoint_id=checkpoint_id,
            ttl=ttl,
            idempotency_key=idempotency_key,
            actor=actor,
        )

    async def preview(
        self,
        session_id: uuid.UUID,
        checkpoint_id: uuid.UUID,
        *,
        ttl: timedelta | None = None,
        idempotency_key: str | None = None,
        actor: Actor = SYSTEM,
    ) -> BranchView:
        """A preview of `checkpoint_id`: its data on a branch of its own, with its own
        connection URI; the live database is untouched. Expires like a dev branch."""
        return await self._create(
            BranchKind.PREVIEW,
            session_id,
            name=None,
            checkpoint_id=checkpoint_id,
            ttl=ttl,
            idempotency_key=idempotency_key,
            actor=actor,
        )

    async def _create(
        self,
        kind: BranchKind,
        session_id: uuid.UUID,
        *,
        name: str | None,
        checkpoint_id: uuid.UUID | None,
        ttl: timedelta | None,
        idempotency_key: str | None,
        actor: Actor,
    ) -> BranchView:
        check_text("idempotency_key", idempotency_key, MAX_IDEMPOTENCY_KEY)
        lifetime = self._checked_ttl(ttl)
        async with self._locks.hold(session_id), self._db() as db:
            if idempotency_key is not None:
                earlier = await db.scalar(
                    sa.select(Branch).where(
                        col(Branch.session_id) == session_id,
                        col(Branch.idempotency_key) == idempotency_key,
                        col(Branch.kind).in_(_KINDS),
                    )
                )
                if earlier is not None:
                    return BranchView.of(earlier)
            session = await load_ready_session(db, session_id)
            source = None
            if checkpoint_id is not None:
                source = await self._source(db, session_id, checkpoint_id)
            now = self._clock()
            row = Branch(
                session_id=session_id,
                kind=kind,
                name=name or await self._default_name(db, kind, session_id, source),
                status=BranchStatus.PENDING,
                source_checkpoint_id=checkpoint_id,
                expires_at=now + lifetime,
                idempotency_key=idempotency_key,
                created_at=now,
            )
            db.add(row)
            db.add(self._event(actor, "branch.create", row, phase="requested"))
            await db.commit()
            self._kill.point("branch.requested")
            await self._provision(db, session, row, source, actor)
            return BranchView.of(row)

    def _checked_ttl(self, ttl: timedelta | None) -> timedelta:
        if ttl is None:
            return self._default_ttl
        if ttl <= timedelta(0):
            raise InvalidInput("ttl_seconds", "must be positive")
        if ttl > self._max_ttl:
            limit = int(self._max_ttl.total_seconds())
            raise InvalidInput("ttl_seconds", f"must be at most {limit} seconds")
        return ttl

    async def _source(
        self, db: AsyncSession, session_id: uuid.UUID, checkpoint_id: uuid.UUID
    ) -> Checkpoint:
        found = await db.get(Checkpoint, checkpoint_id, populate_existing=True)
        if (
            found is None
            or found.session_id != session_id
            or found.status != CheckpointStatus.READY
            or found.snapshot_id is None
        ):
            raise CheckpointNotFound(checkpoint_id)
        return found

    async def _default_name(
        self,
        db: AsyncSession,
        kind: BranchKind,
        session_id: uuid.UUID,
        source: Checkpoint | None,
    ) -> str:
        if kind == BranchKind.PREVIEW and source is not None:
            return f"preview of {source.label or source.id}"[:MAX_NAME]
        earlier = await db.scalar(
            sa.select(sa.func.count())
            .select_from(Branch)
            .where(col(Branch.session_id) == session_id, col(Branch.kind) == kind)
        )
        return f"{kind.value} {(earlier or 0) + 1}"

    async def _provision(
        self,
        db: AsyncSession,
        session: AgentSession,
        row: Branch,
        source: Checkpoint | None,
        actor: Actor,
    ) -> None:
        """Creates the branch and its compute, records its ids and encrypted connection URI;
        on failure deletes whatever was created and marks the row failed."""
        assert session.project_id is not None  # noqa: S101 - checked by load_ready_session
        assert session.live_branch_id is not None  # noqa: S101
        project_id, name = session.project_id, neon_branch_name(row.kind, row.id)
        operations: builtins.list[str] = []
        try:
            try:
                branch, endpoints, operations = await self._make(
                    session.id, project_id, name, session.live_branch_id, source
                )
            except NeonError as error:
                # A 5xx or a lost answer: the branch may exist; adopt it rather than fail.
                if not error.maybe_applied:
                    raise
                try:
                    lost = await self._neon.find_branch(project_id, name)
                    if lost is not None:
                        waited = await self._neon.wait_for_project_operations(project_id)
                        operations = [op.id for op in waited]
                except NeonError:
                    raise error from None  # the undo looks for the branch again
                if lost is None:
                    raise
                branch, endpoints = lost, []
            row.branch_id = branch.id
            endpoint = await self._compute(project_id, branch.id, endpoints)
            row.endpoint_id = endpoint.id
            uri = await self._neon.connection_uri(
                project_id,
                database_name=session.database_name or "",
                role_name=session.role_name or "",
                branch_id=branch.id,
                endpoint_id=endpoint.id,
            )
        except (NeonError, ControlPlaneFailed) as error:
            cleanup_error = await self._undo(project_id, row, error)
            row.status = BranchStatus.FAILED
            row.error = describe(error)
            row.endpoint_id = None
            db.add(
                self._event(
                    actor,
                    "branch.create",
                    row,
                    phase="failed",
                    error=row.error,
                    cleanup_error=cleanup_error,
                )
            )
            await db.commit()
            raise ControlPlaneFailed(f"creating branch {row.id} failed: {error}") from error
        self._kill.point("branch.created")
        row.encrypted_connection_secret = self._secrets.encrypt(uri.get_secret_value())
        row.status = BranchStatus.READY
        db.add(
            self._event(
                actor,
                "branch.create",
                row,
                phase="succeeded",
                operations=operations,
                neon_branch=branch.id,
            )
        )
        await db.commit()

    async def _make(
        self,
        session_id: uuid.UUID,
        project_id: str,
        name: str,
        live_branch_id: str,
        source: Checkpoint | None,
    ) -> tuple[NeonBranch, builtins.list[Endpoint], builtins.list[str]]:
        """Creates the branch on the control plane: from the live branch as it is now, or
        restored from the checkpoint's snapshot. Returns it, its computes and operation ids."""
        if source is None:
            async with self._gate.closed(session_id):
                created = await self._neon.create_branch(
                    project_id,
                    name=name,
                    parent_id=live_branch_id,
                    endpoints=[EndpointOptions(type="read_write")],
                )
            return created.branch, created.endpoints, [op.id for op in created.operations]
        assert source.snapshot_id is not None  # noqa: S101 - checked by _source
        # Not finalized: a new branch with a compute of its own; live is untouched.
        restored = await self._neon.restore_snapshot(
            project_id, source.snapshot_id, target_branch_id=live_branch_id, name=name
        )
        return restored.branch, restored.endpoints, [op.id for op in restored.operations]

    async def _compute(
        self, project_id: str, branch_id: str, endpoints: builtins.list[Endpoint]
    ) -> Endpoint:
        """The branch's read-write compute, from the create's answer or else by asking."""
        found = endpoints or await self._neon.list_endpoints(project_id, branch_id=branch_id)
        for endpoint in found:
            if endpoint.type == "read_write":
                return endpoint
        raise ControlPlaneFailed(f"branch {branch_id} came without a read-write compute")

    async def _undo(
        self, project_id: str, row: Branch, error: NeonError | ControlPlaneFailed
    ) -> str | None:
        """Deletes the branch a failed create made (looking for it by name when the call may
        have run unanswered). Returns why that failed; the row then keeps the branch id for
        a reconciler."""
        try:
            if row.branch_id is None and isinstance(error, NeonError) and error.maybe_applied:
                lost = await self._neon.find_branch(project_id, neon_branch_name(row.kind, row.id))
                row.branch_id = lost.id if lost else None
                if lost is not None:
                    # Its operations were never waited for; deleting now would meet 423s.
                    await self._neon.wait_for_project_operations(project_id)
            if row.branch_id is not None:
                await self._neon.delete_branch(project_id, row.branch_id)
        except NeonNotFound:
            pass
        except NeonError as cleanup:
            return describe(cleanup)
        row.branch_id = None
        return None

    # --- reset ---------------------------------------------------------------------------------

    async def reset(
        self, session_id: uuid.UUID, branch_id: uuid.UUID, *, actor: Actor = SYSTEM
    ) -> BranchView:
        """Puts the branch back where it started: a copy of the live database as it is now
        (for branches made from it), or the checkpoint's state again. What was written on
        the branch is gone; its connection URI keeps working (open connections are ended)."""
        async with self._locks.hold(session_id), self._db() as db:
            session = await load_ready_session(db, session_id)
            row = await self._load(db, session_id, branch_id)
            if row.status != BranchStatus.READY or row.branch_id is None:
                raise Conflict(f"branch {branch_id} is {row.status}, not ready")
            source = None
            if row.source_checkpoint_id is not None:
                source = await db.get(Checkpoint, row.source_checkpoint_id, populate_existing=True)
                if (
                    source is None
                    or source.status != CheckpointStatus.READY
                    or source.snapshot_id is None
                ):
                    raise Conflict(
                        f"branch {branch_id} came from checkpoint {row.source_checkpoint_id},"
                        " which no longer exists"
                    )
            db.add(self._event(actor, "branch.reset", row, phase="requested"))
            await db.commit()
            assert session.project_id is not None  # noqa: S101 - checked by load_ready_session
            assert session.live_branch_id is not None  # noqa: S101
            old_id = row.branch_id
            try:
                if source is None:
                    # Neon's "reset from parent", from the live branch as it is now (after a
                    # restore the branch's parent is the replaced "(old)" one).
                    async with self._gate.closed(session_id):
                        changed = await self._neon.restore_branch(
                            session.project_id, old_id, source_branch_id=session.live_branch_id
                        )
                    operations = [op.id for op in changed.operations]
                else:
                    assert source.snapshot_id is not None  # noqa: S101 - checked above
                    # Restored onto the branch and finalized: the new branch takes over its
                    # name, compute and connection string; the old one becomes "(old)".
                    restored = await self._neon.restore_snapshot(
                        session.project_id,
                        source.snapshot_id,
                        target_branch_id=old_id,
                        finalize_restore=True,
                    )
                    row.branch_id = restored.branch.id
                    operations = [op.id for op in restored.operations]
            except NeonError as error:
                if source is not None:
                    await self._adopt_lost_reset(db, session.project_id, row)
                row.error = describe(error)
                db.add(self._event(actor, "branch.reset", row, phase="failed", error=row.error))
                await db.commit()
                raise ControlPlaneFailed(f"resetting branch {branch_id} failed: {error}") from error
            row.error = None
            if row.branch_id != old_id:
                operations += await self._drop_old(db, session.project_id, row, old_id)
            db.add(
                self._event(
                    actor,
                    "branch.reset",
                    row,
                    phase="succeeded",
                    operations=operations,
                    neon_branch=row.branch_id,
                )
            )
            await db.commit()
            return BranchView.of(row)

    async def _adopt_lost_reset(self, db: AsyncSession, project_id: str, row: Branch) -> None:
        """A finalized restore failed unanswered: if it ran, the branch's name now belongs
        to a new branch; record that one and clean up the old."""
        old_id = row.branch_id
        assert old_id is not None  # noqa: S101
        try:
            found = await self._neon.find_branch(project_id, neon_branch_name(row.kind, row.id))
        except NeonError:
            return
        if found is not None and found.id != old_id:
            row.branch_id = found.id
            await self._drop_old(db, project_id, row, old_id)

    async def _drop_old(
        self, db: AsyncSession, project_id: str, row: Branch, old_id: str
    ) -> builtins.list[str]:
        """Records the branch a reset replaced as a `replaced` row (in the commit that records
        the new id) and deletes it; if that fails it stays `deleting` for
        `CheckpointService.cleanup_replaced` to retry."""
        old = Branch(
            session_id=row.session_id,
            kind=BranchKind.REPLACED,
            name=f"{row.name} (old)"[:MAX_NAME],
            status=BranchStatus.READY,
            branch_id=old_id,
            created_at=self._clock(),
        )
        db.add(old)
        await db.commit()
        try:
            deleted = await self._neon.delete_branch(project_id, old_id)
        except NeonNotFound:
            deleted = None
        except NeonError as error:
            old.status, old.error = BranchStatus.DELETING, describe(error)
            return []
        old.status = BranchStatus.DELETED
        return [op.id for op in deleted.operations] if deleted else []

    # --- delete and expire ---------------------------------------------------------------------

    async def delete(
        self, session_id: uuid.UUID, branch_id: uuid.UUID, *, actor: Actor = SYSTEM
    ) -> BranchView:
        """Deletes the branch and its compute (already gone counts as done); the row stays,
        `deleted`. Deleting twice is fine."""
        return await self._delete(session_id, branch_id, actor=actor, reason="requested")

    async def expire(self, *, now: datetime | None = None) -> int:
        """Deletes every dev and preview branch (of any session) whose expiry has passed;
        returns how many. Meant for a periodic job; a branch whose deletion fails stays for
        the next run, with the error recorded."""
        now = now or self._clock()
        async with self._db() as db:
            due = (
                await db.execute(
                    sa.select(col(Branch.session_id), col(Branch.id))
                    .where(
                        col(Branch.kind).in_(_KINDS),
                        col(Branch.status).in_(_DELETABLE),
                        col(Branch.expires_at) <= now,
                    )
                    .order_by(col(Branch.expires_at))
                )
            ).all()
        deleted = 0
        for session_id, branch_id in due:
            try:
                view = await self._delete(session_id, branch_id, actor=SYSTEM, reason="expired")
            except ControlPlaneFailed:
                continue
            deleted += view.status == BranchStatus.DELETED
        return deleted

    async def _delete(
        self, session_id: uuid.UUID, branch_id: uuid.UUID, *, actor: Actor, reason: str
    ) -> BranchView:
        async with self._locks.hold(session_id), self._db() as db:
            session = await load_session(db, session_id)
            row = await self._load(db, session_id, branch_id)
            if row.status == BranchStatus.DELETED:
                return BranchView.of(row)
            interrupted = row.status == BranchStatus.PENDING
            row.status = BranchStatus.DELETING
            db.add(self._event(actor, "branch.delete", row, phase="requested", reason=reason))
            await db.commit()
            operations: builtins.list[str] = []
            project_id = session.project_id
            try:
                if project_id is not None and row.branch_id is None and interrupted:
                    lost = await self._neon.find_branch(
                        project_id, neon_branch_name(row.kind, row.id)
                    )
                    row.branch_id = lost.id if lost else None
                if project_id is not None and row.branch_id is not None:
                    deleted = await self._neon.delete_branch(project_id, row.branch_id)
                    operations = [op.id for op in deleted.operations] if deleted else []
            except NeonNotFound:
                pass
            except NeonError as error:
                # Stays `deleting`: deleting again (or the next expire) retries.
                row.error = describe(error)
                db.add(self._event(actor, "branch.delete", row, phase="failed", error=row.error))
                await db.commit()
                raise ControlPlaneFailed(f"deleting branch {branch_id} failed: {error}") from error
            row.status = BranchStatus.DELETED
            row.error = None
            row.encrypted_connection_secret = None
            db.add(
                self._event(
                    actor,
                    "branch.delete",
                    row,
                    phase="succeeded",
                    operations=operations,
                    reason=reason,
                )
            )
            await db.commit()
            return BranchView.of(row)

    # --- crash recovery ------------------------------------------------------------------------

    @staticmethod
    def unfinished(cutoff: datetime) -> builtins.list[sa.Select[tuple[uuid.UUID]]]:
        """The sessions with a branch a crash left half made or half deleted (see `_stuck`)."""
        return [sa.select(col(Branch.session_id)).where(_stuck(cutoff))]

    async def resume(self, db: AsyncSession, row: AgentSession, recovery: Recovery) -> None:
        """Dev and preview branches a crash cut off: a pending one's create (whatever it made
        is deleted, as `_undo` does, and it fails); a deleting one's delete (finished; gone
        counts as done); a failed one whose cleanup failed kept its control-plane id (deleted
        now). Replaced branches are `CheckpointService.cleanup_replaced`'s. The caller holds
        the session's lock."""
        stuck = await db.scalars(
            sa.select(Branch)
            .where(col(Branch.session_id) == row.id, _stuck(recovery.cutoff))
            .order_by(col(Branch.created_at), col(Branch.id))
            .execution_options(populate_existing=True)
        )
        for branch in builtins.list(stuck):
            if row.project_id is not None:
                await self._delete_made(row.project_id, branch)
            if branch.status == BranchStatus.PENDING:
                branch.status = BranchStatus.FAILED
                branch.error = "agentdb stopped while creating this branch; it was removed"
                repair = "branch_failed"
            elif branch.status == BranchStatus.DELETING:
                branch.status = BranchStatus.DELETED
                branch.error = None
                repair = "branch_deleted"
            else:
                repair = "failed_branch_deleted"
            branch.branch_id = None if branch.status == BranchStatus.FAILED else branch.branch_id
            branch.endpoint_id = None
            branch.encrypted_connection_secret = None
            recovery.branch(db, branch, repair)
            await db.commit()

    async def _delete_made(self, project_id: str, branch: Branch) -> None:
        """Deletes the control-plane branch of a row, found by name when a create was cut off
        before its id was recorded; already gone counts as deleted."""
        branch_id = branch.branch_id
        with contextlib.suppress(NeonNotFound):
            if branch_id is None and branch.status == BranchStatus.PENDING:
                found = await self._neon.find_branch(
                    project_id, neon_branch_name(branch.kind, branch.id)
                )
                branch_id = found.id if found else None
            if branch_id is not None:
                await self._neon.delete_branch(project_id, branch_id)

    def _event(
        self,
        actor: Actor,
        action: str,
        row: Branch,
        *,
        phase: str,
        operations: builtins.list[str] | None = None,
        **details: str | None,
    ) -> Event:
        return event(
            actor,
            action,
            at=self._clock(),
            session_id=row.session_id,
            target_kind="branch",
            target_id=row.id,
            details={"phase": phase, "kind": row.kind.value, "status": row.status.value, **details},
            operation_ids=operations or (),
        )


def _stuck(cutoff: datetime) -> sa.ColumnElement[bool]:
    """Dev and preview branch rows an interrupted workflow left: a create (once older than
    `cutoff`: it may be about to take the lock), a delete, or a failed create's cleanup."""
    return sa.and_(
        col(Branch.kind).in_(_KINDS),
        sa.or_(
            col(Branch.status) == BranchStatus.DELETING,
            sa.and_(col(Branch.status) == BranchStatus.PENDING, col(Branch.created_at) <= cutoff),
            sa.and_(col(Branch.status) == BranchStatus.FAILED, col(Branch.branch_id).is_not(None)),
        ),
    )


__all__ = ["BranchService", "neon_branch_name"]
