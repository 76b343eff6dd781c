"""Agent sessions: provisioning a Neon project per session (with a root checkpoint of its
empty database), reading them, handing their owner the connection URI, and deleting them.

Every workflow writes its intent to the meta DB first, then calls the control plane, then
records the outcome, so a crash leaves a row a reconciler can finish or undo.
"""

from __future__ import annotations

import builtins
import contextlib
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.neon import (
    CreatedProject,
    DefaultEndpointSettings,
    NeonClient,
    NeonError,
    NeonNotFound,
    SnapshotCreated,
)
from agentdb.tiers import Tier, Tiers
from agentdb.wire import SessionView
from meta_schema import (
    AgentSession,
    Branch,
    BranchStatus,
    Checkpoint,
    CheckpointStatus,
    Event,
    SessionStatus,
    User,
    WarmProject,
)
from meta_schema._base import new_id

from ._common import (
    LIVE_BRANCH_NAME,
    MAX_IDEMPOTENCY_KEY,
    MAX_NAME,
    SYSTEM,
    UNFINISHED,
    Actor,
    Clock,
    SessionFactory,
    SessionLocks,
    WorkflowKillSwitch,
    check_limit,
    check_text,
    describe,
    event,
    fill_from_snapshot,
    load_session,
    operation_ids,
    system_clock,
)
from ._errors import Conflict, ControlPlaneFailed, LimitExceeded, UserNotFound
from ._recovery import Recovery, pending_checkpoints
from ._secrets import Secrets

if TYPE_CHECKING:
    from .warm_pool import WarmPool

log = structlog.get_logger(__name__)

#: Names inside every session's project; each project has its own roles and databases.
DATABASE_NAME = "app"
ROLE_NAME = "agent"


#: Every session's project is named this prefix + the session id.
PROJECT_PREFIX = "agentdb-"


class AfterCreate(Protocol):
    async def __call__(self, session_id: uuid.UUID, *, actor: Actor) -> object: ...


def project_name(session_id: uuid.UUID, prefix: str = PROJECT_PREFIX) -> str:
    """The control plane's name for a session's project: how a lost create is found again, and
    how the reconciler tells this installation's projects from anything else in the account."""
    return f"{prefix}{session_id}"


def project_spec(tier: Tier | None, fallback: DefaultEndpointSettings | None) -> dict[str, Any]:
    """What a session's project is made with besides its name and organization: the live
    branch, database and role names, and the tier's compute, quotas and history retention
    (its compute over `fallback`'s)."""
    return {
        "branch_name": LIVE_BRANCH_NAME,
        "database_name": DATABASE_NAME,
        "role_name": ROLE_NAME,
        "default_endpoint_settings": fallback if tier is None else tier.endpoint_settings(fallback),
        "settings": None if tier is None else tier.project_settings(),
        "history_retention_seconds": None if tier is None else tier.history_retention_seconds,
    }


class SessionService:
    """Creates, reads and deletes agent sessions."""

    def __init__(
        self,
        sessions: SessionFactory,
        neon: NeonClient,
        secrets: Secrets,
        *,
        clock: Clock = system_clock,
        locks: SessionLocks | None = None,
        default_org_id: str | None = None,
        project_prefix: str = PROJECT_PREFIX,
        endpoint_settings: DefaultEndpointSettings | None = None,
        tiers: Tiers | None = None,
        kill: WorkflowKillSwitch | None = None,
        warm: WarmPool | None = None,
    ) -> None:
        """`warm`: the pool of ready projects creates take from before making one;
        `default_org_id`: the Neon organization for users without one of their own (or
        their tier's); `project_prefix`: what this installation's project names start with;
        `endpoint_settings`: each session's compute (autoscaling limits, suspend timeout) where
        the user's tier sets none; `tiers`: what each tier gives and caps (without them, every
        session gets `endpoint_settings` and no limits apply). Raises `TiersError` when a
        tier's compute range does not fit with `endpoint_settings`."""
        self._sessions = sessions
        self._neon = neon
        self._secrets = secrets
        self._clock = clock
        self._default_org_id = default_org_id
        self._project_prefix = project_prefix
        self._endpoint_settings = endpoint_settings
        self._tiers = tiers
        for tier in tiers.tiers if tiers is not None else ():
            tier.endpoint_settings(endpoint_settings)  # checked once, before any session
        self._locks = locks or SessionLocks(sessions)
        self._kill = kill or WorkflowKillSwitch()
        self._warm = warm
        #: Runs on each session a create made, once it is ready, before the create answers
        #: (the fleet's baseline migrations); it must record its own failures, not raise.
        self.after_create: AfterCreate | None = None

    def _db(self) -> AsyncSession:
        # Rows stay readable after commit: reloading them implicitly would be blocking IO.
        return self._sessions(expire_on_commit=False)

    # --- reading -------------------------------------------------------------------------------

    async def get(self, session_id: uuid.UUID) -> SessionView:
        async with self._db() as db:
            return SessionView.of(await load_session(db, session_id))

    async def list(
        self,
        user_id: uuid.UUID | None,
        *,
        include_deleted: bool = False,
        status: SessionStatus | None = None,
        limit: int | None = None,
        after: uuid.UUID | None = None,
    ) -> list[SessionView]:
        """Sessions oldest first (ids are UUIDv7: id order is creation order): a user's, or
        every user's with `user_id` None. Only those in `status` when given, else all but the
        deleted ones unless `include_deleted`; at most `limit`, from the one after `after`."""
        query = sa.select(AgentSession)
        if user_id is not None:
            query = query.where(col(AgentSession.user_id) == user_id)
        if status is not None:
            query = query.where(col(AgentSession.status) == status)
        elif not include_deleted:
            query = query.where(col(AgentSession.status) != SessionStatus.DELETED)
        if after is not None:
            query = query.where(col(AgentSession.id) > after)
        if limit is not None:
            check_limit(limit)
            query = query.limit(limit)
        async with self._db() as db:
            rows = await db.scalars(query.order_by(col(AgentSession.id)))
            return [SessionView.of(row) for row in rows]

    async def connection_uri(self, session_id: uuid.UUID) -> str:
        """The session database's connection URI, password included: for the session's owner
        only, never for an LLM, a browser or a log."""
        async with self._db() as db:
            row = await load_session(db, session_id)
        if row.status == SessionStatus.DELETED or row.encrypted_connection_secret is None:
            raise Conflict(f"session {session_id} has no database ({row.status})")
        return self._secrets.decrypt(row.encrypted_connection_secret)

    # --- create --------------------------------------------------------------------------------

    async def create(
        self,
        user_id: uuid.UUID,
        name: str | None = None,
        idempotency_key: str | None = None,
        *,
        actor: Actor = SYSTEM,
    ) -> SessionView:
        """Provisions a session: its project, live branch, compute, role and database, and a
        root checkpoint of the empty database. The same `idempotency_key` (per user) returns
        the session the first call created, whatever its state.

        The session gets the user's tier: its organization, compute, quota and history
        retention. Raises `UserNotFound`, `InvalidInput`, `LimitExceeded` (the user has their
        tier's `max_sessions_per_user` sessions that are not deleted, failed creates whose
        project is gone not counted; nothing is written),
        `Conflict` (the user's tier is not configured), or `ControlPlaneFailed` (the session
        is then `failed`, with its error recorded and nothing left on the control plane)."""
        check_text("name", name, MAX_NAME)
        check_text("idempotency_key", idempotency_key, MAX_IDEMPOTENCY_KEY)
        view, fresh = await self._create(user_id, name, idempotency_key, actor=actor)
        if fresh and view.status == SessionStatus.READY and self.after_create is not None:
            # After the session's lock is released: the hook's workflows take it.
            await self.after_create(view.id, actor=actor)
            view = await self.get(view.id)
        return view

    async def _create(
        self, user_id: uuid.UUID, name: str | None, idempotency_key: str | None, *, actor: Actor
    ) -> tuple[SessionView, bool]:
        """`create`'s work; also says whether this call made the session (not a replay)."""
        # The lock is taken before the intent row exists: a reconciler that finds the row
        # provisioning waits for this create instead of undoing it.
        session_id = new_id()
        async with self._locks.hold(session_id):
            async with self._db() as db:
                if idempotency_key is not None and (
                    found := await self._by_key(db, user_id, idempotency_key)
                ):
                    return SessionView.of(found), False
                # The user's row stays locked until the intent row is in: concurrent creates
                # for one user count their sessions one after the other.
                user = await db.get(User, user_id, with_for_update=True)
                if user is None or user.disabled_at is not None:
                    raise UserNotFound(user_id)
                tier = self._tier(user.tier)
                if tier is not None:
                    await self._check_session_limit(db, user, tier)
                now = self._clock()
                row = AgentSession(
                    id=session_id,
                    user_id=user_id,
                    name=name or "",
                    status=SessionStatus.PROVISIONING,
                    tier=user.tier,
                    org_id=user.org_id
                    or (tier.org_id if tier is not None else None)
                    or self._default_org_id,
                    database_name=DATABASE_NAME,
                    role_name=ROLE_NAME,
                    idempotency_key=idempotency_key,
                    created_at=now,
                    updated_at=now,
                )
                row.name = name or f"session {session_id}"
                warm = (
                    await self._warm.take(db, tier, row.org_id)
                    if self._warm is not None and tier is not None
                    else None
                )
                if warm is not None:
                    return await self._take_warm(db, row, warm, actor), True
                db.add(row)
                try:
                    db.add(self._event(actor, "session.create", row, phase="requested"))
                    await db.commit()
                except IntegrityError:
                    await db.rollback()
                    if idempotency_key is not None and (
                        found := await self._by_key(db, user_id, idempotency_key)
                    ):
                        return SessionView.of(found), False  # a concurrent call with the key won
                    raise
            self._kill.point("session_create.requested")
            return await self._provision(session_id, actor), True

    async def _take_warm(
        self, db: AsyncSession, row: AgentSession, warm: WarmProject, actor: Actor
    ) -> SessionView:
        """Makes `row` the session of a warm project (`WarmPool.take`, in `db`'s transaction):
        it gets the project's id, ids and secret, and the root checkpoint the project's
        snapshot was taken for; committed together with the pool row's removal, so a crash
        leaves either a pool project or a ready session, never half of one."""
        if row.name == f"session {row.id}":  # the default name says the session's id
            row.name = f"session {warm.id}"
        row.id = warm.id
        row.status = SessionStatus.READY
        row.project_id = warm.project_id
        row.live_branch_id = warm.live_branch_id
        row.endpoint_id = warm.endpoint_id
        row.encrypted_connection_secret = warm.encrypted_connection_secret
        root = Checkpoint(
            id=warm.root_checkpoint_id,
            session_id=row.id,
            label="root",
            message="the empty database, as the session was created",
            status=CheckpointStatus.READY,
            snapshot_id=warm.snapshot_id,
            source_branch_id=warm.source_branch_id,
            lsn=warm.lsn,
            taken_at=warm.taken_at,
            size_bytes=warm.size_bytes,
            created_at=row.created_at,
        )
        db.add(row)
        await db.flush()  # the session before its checkpoint, the checkpoint before the head
        db.add(root)
        await db.flush()
        row.head_checkpoint_id = root.id
        db.add(self._event(actor, "session.create", row, phase="succeeded", warm="true"))
        try:
            await db.commit()
        except IntegrityError:
            await db.rollback()  # the pool row is back: only a concurrent same-key create wins
            if row.idempotency_key is not None and (
                found := await self._by_key(db, row.user_id, row.idempotency_key)
            ):
                return SessionView.of(found)
            raise
        assert self._warm is not None  # noqa: S101 - it gave the project
        self._warm.taken()
        return SessionView.of(row)

    def _tier(self, name: str) -> Tier | None:
        """The tier called `name`; None without configured tiers. `Conflict` when a user's
        tier is no longer configured (renamed or removed from the tiers file)."""
        if self._tiers is None:
            return None
        tier = self._tiers.find(name)
        if tier is None:
            raise Conflict(
                f"tier {name!r} is not configured (configured: {', '.join(self._tiers.names)})"
            )
        return tier

    async def _check_session_limit(self, db: AsyncSession, user: User, tier: Tier) -> None:
        allowed = tier.max_sessions_per_user
        if allowed is None:
            return
        count = await db.scalar(
            sa.select(sa.func.count())
            .select_from(AgentSession)
            .where(
                col(AgentSession.user_id) == user.id,
                col(AgentSession.status) != SessionStatus.DELETED,
                # A failed create whose project is gone (undone at once, or by the reconciler
                # after a crash) holds nothing: it stays listed but takes no place.
                sa.not_(
                    sa.and_(
                        col(AgentSession.status) == SessionStatus.FAILED,
                        col(AgentSession.project_id).is_(None),
                    )
                ),
            )
        )
        if (count or 0) >= allowed:
            raise LimitExceeded(
                "max_sessions_per_user",
                allowed,
                f"the {tier.name} tier allows {allowed} sessions per user and user {user.id} "
                f"has {count} (failed ones still holding a project included); delete one first",
            )

    async def _by_key(
        self, db: AsyncSession, user_id: uuid.UUID, idempotency_key: str
    ) -> AgentSession | None:
        found: AgentSession | None = await db.scalar(
            sa.select(AgentSession).where(
                col(AgentSession.user_id) == user_id,
                col(AgentSession.idempotency_key) == idempotency_key,
            )
        )
        return found

    async def _provision(self, session_id: uuid.UUID, actor: Actor) -> SessionView:
        async with self._db() as db:
            row = await load_session(db, session_id)
            if row.status != SessionStatus.PROVISIONING:
                # Another workflow got the lock first (a delete, or a reconciler).
                return SessionView.of(row)
            created: CreatedProject | None = None
            root: Checkpoint | None = None
            snapshot: SnapshotCreated | None = None
            tier = self._tiers.find(row.tier) if self._tiers is not None else None
            try:
                created = await self._create_project(row, tier)
                self._kill.point("session_create.project_created")
                # Record the project before anything else can fail: it is what a retry or the
                # reconciler must find and clean up.
                self._record_project(row, created)
                root = Checkpoint(
                    session_id=row.id,
                    label="root",
                    message="the empty database, as the session was created",
                    created_at=self._clock(),
                )
                db.add(root)
                await db.commit()
                self._kill.point("session_create.project_recorded")
                assert row.project_id is not None  # noqa: S101 - set by _record_project
                assert row.live_branch_id is not None  # noqa: S101
                snapshot = await self._root_snapshot(row.project_id, row.live_branch_id, root)
                self._kill.point("session_create.snapshot_taken")
            except (NeonError, ControlPlaneFailed) as error:
                await self._undo_provisioning(
                    db, row, root=root, created=created, error=error, actor=actor
                )
                raise ControlPlaneFailed(f"creating session {row.id} failed: {error}") from error
            fill_from_snapshot(root, snapshot.snapshot, row.live_branch_id)
            row.head_checkpoint_id = root.id
            row.status = SessionStatus.READY
            row.updated_at = self._clock()
            db.add(
                self._event(
                    actor,
                    "session.create",
                    row,
                    phase="succeeded",
                    operations=operation_ids(created, snapshot),
                )
            )
            await db.commit()
            return SessionView.of(row)

    async def _create_project(self, row: AgentSession, tier: Tier | None) -> CreatedProject:
        """Creates the session's project; when the call failed in a way that may have created
        it anyway (a 5xx, a lost answer), adopts the project it made instead of failing."""
        try:
            return await self._neon.create_project(
                name=project_name(row.id, self._project_prefix),
                org_id=row.org_id,
                **project_spec(tier, self._endpoint_settings),
            )
        except NeonError as error:
            if not error.maybe_applied:
                raise
            try:
                lost = await self._lost_project(row)
            except NeonError:
                raise error from None  # the undo looks for the project again
            if lost is None:
                raise
            log.info("session.create_adopted", session_id=str(row.id), project_id=lost.project.id)
            return lost

    async def _lost_project(self, row: AgentSession) -> CreatedProject | None:
        """The project a create that went unanswered made, with its live branch, compute and
        connection URI (the password is read back: Neon stores it), once its operations are
        done; None if there is none. Raises `NeonError` if the control plane cannot say."""
        found = await self._neon.find_project(
            project_name(row.id, self._project_prefix), org_id=row.org_id
        )
        if found is None:
            return None
        operations = await self._neon.wait_for_project_operations(found.id)
        branches = [b async for b in self._neon.iter_branches(found.id)]
        live = next((b for b in branches if b.default), None)
        if live is None:
            return None
        endpoints = await self._neon.list_endpoints(found.id, branch_id=live.id)
        uri = await self._neon.connection_uri(
            found.id, database_name=DATABASE_NAME, role_name=ROLE_NAME, branch_id=live.id
        )
        return CreatedProject.model_validate(
            {
                "project": found,
                "branch": live,
                "endpoints": endpoints,
                "operations": operations,
                "connection_uris": [
                    {
                        "connection_uri": uri.get_secret_value(),
                        "connection_parameters": _parameters(uri.get_secret_value()),
                    }
                ],
            }
        )

    async def _root_snapshot(
        self, project_id: str, branch_id: str, root: Checkpoint
    ) -> SnapshotCreated:
        """The root checkpoint's snapshot; one a failed call took anyway is found by name."""
        name = str(root.id)
        try:
            return await self._neon.create_snapshot(project_id, branch_id, name=name)
        except NeonError as error:
            if not error.maybe_applied:
                raise
            lost = await self._neon.find_snapshot(project_id, name)
            if lost is None:
                raise
            operations = await self._neon.wait_for_project_operations(project_id)
            return SnapshotCreated(snapshot=lost, operations=operations)

    def _record_project(self, row: AgentSession, created: CreatedProject) -> None:
        if not created.connection_uris or not created.endpoints:
            raise ControlPlaneFailed("the new project came without a compute or connection URI")
        row.project_id = created.project.id
        # Where the project really is (Neon may infer the organization from the key).
        row.org_id = created.project.org_id or row.org_id
        row.live_branch_id = created.branch.id
        row.endpoint_id = created.endpoints[0].id
        uri = created.connection_uris[0].connection_uri.get_secret_value()
        row.encrypted_connection_secret = self._secrets.encrypt(uri)
        row.updated_at = self._clock()

    async def _undo_provisioning(
        self,
        db: AsyncSession,
        row: AgentSession,
        *,
        root: Checkpoint | None,
        created: CreatedProject | None,
        error: NeonError | ControlPlaneFailed,
        actor: Actor,
    ) -> None:
        """Deletes whatever the failed workflow created on the control plane (looking for the
        project by name when the create may have run unanswered), then marks the session
        failed. Nothing stays half-written: no project, no secret, no pending checkpoint."""
        project_id = created.project.id if created else None
        cleanup_error: str | None = None
        try:
            if project_id is None and isinstance(error, NeonError) and error.maybe_applied:
                project_id = await self._created_project(row)
            await self._delete_project(project_id)
        except NeonError as cleanup:
            cleanup_error = describe(cleanup)
        if root is not None and root in db:
            root.status = CheckpointStatus.FAILED
            root.error = describe(error)
        row.status = SessionStatus.FAILED
        row.error = describe(error)
        # Keep the project id only if it may still exist, for the reconciler to delete.
        row.project_id = project_id if cleanup_error else None
        row.live_branch_id = row.endpoint_id = None
        row.encrypted_connection_secret = None
        row.updated_at = self._clock()
        db.add(
            self._event(
                actor,
                "session.create",
                row,
                phase="failed",
                error=row.error,
                cleanup_error=cleanup_error,
            )
        )
        await db.commit()

    async def _created_project(self, row: AgentSession) -> str | None:
        """The id of the project a create that went unanswered made, found by its name."""
        found = await self._neon.find_project(
            project_name(row.id, self._project_prefix), org_id=row.org_id
        )
        return found.id if found else None

    async def _delete_project(self, project_id: str | None) -> None:
        """Deletes the session's project once its operations are done; already gone (or never
        made) counts as deleted. Raises `NeonError` when the delete failed."""
        if project_id is None:
            return
        with contextlib.suppress(NeonNotFound):
            await self._neon.wait_for_project_operations(project_id)
            await self._neon.delete_project(project_id)

    async def _resume_create(self, db: AsyncSession, row: AgentSession, recovery: Recovery) -> None:
        """A create a crash cut off is undone, as a failed one is (`_undo_provisioning`):
        the project deleted (found by name if its id was never recorded), the pending root
        checkpoint failed. Finishing it instead would need the role's password, which Neon
        returns only when the project is created; and whoever called create got no answer."""
        project_id = row.project_id or await self._created_project(row)
        await self._delete_project(project_id)
        error = "agentdb stopped while creating this session; the reconciler undid the create"
        for checkpoint in await pending_checkpoints(db, row.id):
            checkpoint.status = CheckpointStatus.FAILED
            checkpoint.error = error
        row.status = SessionStatus.FAILED
        row.error = error
        row.project_id = row.live_branch_id = row.endpoint_id = None
        row.encrypted_connection_secret = None
        row.updated_at = self._clock()
        recovery.session(db, row, "reconcile.session", "create_undone", project_id=project_id)
        await db.commit()

    # --- delete --------------------------------------------------------------------------------

    async def delete(self, session_id: uuid.UUID, *, actor: Actor = SYSTEM) -> SessionView:
        """Deletes the session's project (already gone counts as done) and marks the session
        deleted; its rows stay for the audit log. Deleting twice is fine."""
        async with self._locks.hold(session_id), self._db() as db:
            row = await load_session(db, session_id)
            if row.status == SessionStatus.DELETED:
                return SessionView.of(row)
            before = row.status
            row.status = SessionStatus.DELETING
            row.updated_at = self._clock()
            db.add(self._event(actor, "session.delete", row, phase="requested"))
            await db.commit()
            self._kill.point("session_delete.requested")
            try:
                if row.project_id is not None:
                    await self._neon.delete_project(row.project_id)
            except NeonNotFound:
                pass
            except NeonError as error:
                row.status = (
                    before
                    if before in {SessionStatus.READY, SessionStatus.FAILED}
                    else (SessionStatus.FAILED)
                )
                row.error = describe(error)
                row.updated_at = self._clock()
                db.add(self._event(actor, "session.delete", row, phase="failed", error=row.error))
                await db.commit()
                raise ControlPlaneFailed(
                    f"deleting session {session_id} failed: {error}"
                ) from error
            self._kill.point("session_delete.project_deleted")
            await record_deleted(db, row, self._clock())
            db.add(self._event(actor, "session.delete", row, phase="succeeded"))
            await db.commit()
            return SessionView.of(row)

    async def _resume_delete(self, db: AsyncSession, row: AgentSession, recovery: Recovery) -> None:
        """A delete a crash cut off is finished: the project deleted, the session recorded
        as deleted (`record_deleted`, the delete's own last step)."""
        await self._delete_project(row.project_id)
        await record_deleted(db, row, self._clock())
        recovery.session(db, row, "reconcile.session", "delete_finished")
        await db.commit()

    # --- crash recovery ------------------------------------------------------------------------

    @staticmethod
    def unfinished(cutoff: datetime) -> builtins.list[sa.Select[tuple[uuid.UUID]]]:
        """The sessions whose create or delete a crash may have cut off: in a workflow's state
        since before `cutoff`, or failed with a project an undo could not delete."""
        return [
            sa.select(col(AgentSession.id)).where(
                col(AgentSession.status).in_(UNFINISHED), col(AgentSession.updated_at) <= cutoff
            ),
            sa.select(col(AgentSession.id)).where(
                col(AgentSession.status) == SessionStatus.FAILED,
                col(AgentSession.project_id).is_not(None),
                col(AgentSession.live_branch_id).is_(None),
            ),
        ]

    async def resume(self, db: AsyncSession, row: AgentSession, recovery: Recovery) -> None:
        """Undoes an interrupted create, finishes an interrupted delete, and deletes the
        project a failed create's undo left behind. The caller holds the session's lock."""
        if row.status == SessionStatus.PROVISIONING:
            await self._resume_create(db, row, recovery)
        elif row.status == SessionStatus.DELETING:
            await self._resume_delete(db, row, recovery)
        elif row.status == SessionStatus.FAILED and row.project_id and not row.live_branch_id:
            await self._delete_project(row.project_id)
            row.project_id = None
            recovery.session(db, row, "reconcile.session", "failed_project_deleted")
            await db.commit()

    def _event(
        self,
        actor: Actor,
        action: str,
        row: AgentSession,
        *,
        phase: str,
        operations: builtins.list[str] | None = None,
        **details: str | None,
    ) -> Event:
        return event(
            actor,
            action,
            at=self._clock(),
            session_id=row.id,
            target_kind="session",
            target_id=row.id,
            details={"phase": phase, "status": row.status.value, **details},
            operation_ids=operations or (),
        )


async def record_deleted(db: AsyncSession, row: AgentSession, now: datetime) -> None:
    """Records a session whose project is gone: deleted, without its secret, and its branches
    with it (the project took them). The delete's last step, and the reconciler's when it
    finishes one a crash cut off (`_resume_delete`)."""
    row.status = SessionStatus.DELETED
    row.deleted_at = row.updated_at = now
    row.encrypted_connection_secret = None
    await db.execute(
        sa.update(Branch)
        .where(col(Branch.session_id) == row.id, col(Branch.status) != BranchStatus.DELETED)
        .values(status=BranchStatus.DELETED, encrypted_connection_secret=None)
    )


def _parameters(uri: str) -> dict[str, str]:
    """A connection URI's parts, as Neon's `connection_parameters` lists them."""
    parts = urlsplit(uri)
    return {
        "database": unquote(parts.path.lstrip("/")),
        "role": unquote(parts.username or ""),
        "host": parts.hostname or "",
        "password": unquote(parts.password or ""),
    }


__all__ = [
    "DATABASE_NAME",
    "PROJECT_PREFIX",
    "ROLE_NAME",
    "SessionService",
    "project_name",
    "project_spec",
]
