"""The reconciler: finds what a crashed workflow left half done (the rows' states say what)
and hands each session to the workflows' own recovery (`SessionService.resume`,
`CheckpointService.resume`, `BranchService.resume`), then deletes control-plane projects that
no session owns. Safe to run at any time: every repair happens under the session's workflow
lock, and a second run finds nothing."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import sqlalchemy as sa
import structlog
from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.neon import NeonClient, NeonError, NeonNotFound, Project
from meta_schema import AgentSession, SessionStatus, WarmProject

from ._common import (
    Clock,
    SessionFactory,
    SessionLocks,
    describe,
    system_clock,
)
from ._errors import ControlPlaneFailed
from ._recovery import Recovery
from ._secrets import Secrets
from .branches import BranchService
from .checkpoints import CheckpointService
from .sessions import SessionService

log = structlog.get_logger(__name__)


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
        orphans_every: timedelta = timedelta(0),
    ) -> None:
        """`orphans_every`: how often a run also lists the control plane's projects to delete
        orphans (a request per 400 projects on Neon); sessions' unfinished rows are repaired
        on every run."""
        self._sessions = sessions
        self._neon = neon
        self._clock = clock
        self._locks = locks or SessionLocks(sessions)
        self._prefix = project_prefix
        self._grace = grace
        self._orphans_every = orphans_every.total_seconds()
        self._orphans_at: float | None = None  # monotonic time of the last orphan pass
        # The workflows whose recovery this runs, in the order a session needs them: its
        # create or delete, then its checkpoints and restores, then its branches.
        self._workflows = (
            SessionService(
                sessions,
                neon,
                secrets,
                clock=clock,
                locks=self._locks,
                project_prefix=project_prefix,
            ),
            CheckpointService(sessions, neon, clock=clock, locks=self._locks),
            BranchService(sessions, neon, secrets, clock=clock, locks=self._locks),
        )

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    async def run_once(self) -> ReconcileReport:
        """One pass over everything unfinished, then over the control plane's projects.
        Control-plane errors for one session are recorded and the others still get repaired."""
        recovery = Recovery(self._clock, self._grace)
        for session_id in await self._sessions_to_repair(recovery):
            try:
                async with self._locks.hold(session_id), self._db() as db:
                    # A fresh read under the lock: another process may have finished it.
                    row = await db.get(AgentSession, session_id, populate_existing=True)
                    if row is None:
                        continue
                    for workflow in self._workflows:
                        await workflow.resume(db, row, recovery)
            except (NeonError, ControlPlaneFailed) as error:
                recovery.error(f"session {session_id}: {describe(error)}")
        moment = time.monotonic()
        if self._orphans_at is None or moment - self._orphans_at >= self._orphans_every:
            self._orphans_at = moment
            await self._delete_orphans(recovery)
        report = ReconcileReport(**recovery.counts, errors=tuple(recovery.errors))
        if report.repairs or report.errors:
            log.info(
                "reconcile.done",
                **report.model_dump(exclude={"errors"}),
                errors=len(report.errors),
            )
        return report

    async def _sessions_to_repair(self, recovery: Recovery) -> list[uuid.UUID]:
        queries = [query for w in self._workflows for query in w.unfinished(recovery.cutoff)]
        async with self._db() as db:
            found = await db.scalars(sa.union(*queries))
            return sorted(found)

    # --- orphan projects ---------------------------------------------------------------------

    async def _delete_orphans(self, recovery: Recovery) -> None:
        """Deletes projects named like a session's whose session does not exist, or ended
        (failed or deleted) without owning that project, and which are not in the warm pool
        (named after the session that will take them). Other projects are never touched."""
        async with self._db() as db:
            org_ids = list(
                await db.scalars(
                    sa.union(
                        sa.select(col(AgentSession.org_id)), sa.select(col(WarmProject.org_id))
                    )
                )
            )
        for org_id in org_ids or [None]:
            try:
                projects = [p async for p in self._neon.iter_projects(org_id=org_id)]
            except NeonError as error:
                recovery.error(f"listing projects of org {org_id}: {describe(error)}")
                continue
            for session_id, project in await self._suspects(projects):
                try:
                    async with self._locks.hold(session_id):
                        await self._delete_if_orphan(session_id, project, recovery)
                except NeonError as error:
                    recovery.error(f"orphan project {project.id}: {describe(error)}")

    async def _suspects(self, projects: list[Project]) -> list[tuple[uuid.UUID, Project]]:
        """The projects named like a session's that look orphaned, read in batches: only these
        are locked and read again one at a time (a fleet of live sessions costs a query per
        thousand, not a lock and a query each)."""
        named = [(sid, p) for p in projects if (sid := self._session_of(p)) is not None]
        suspects = []
        for start in range(0, len(named), _BATCH):
            batch = named[start : start + _BATCH]
            ids = [sid for sid, _ in batch]
            async with self._db() as db:
                # The warm pool first: a session that takes a warm project removes its pool row
                # as it appears, so read in this order, one of the two always shows it.
                warm = set(
                    await db.scalars(
                        sa.select(col(WarmProject.id)).where(col(WarmProject.id).in_(ids))
                    )
                )
                found = await db.execute(
                    sa.select(
                        col(AgentSession.id), col(AgentSession.status), col(AgentSession.project_id)
                    ).where(col(AgentSession.id).in_(ids))
                )
                rows = {sid: (status, project_id) for sid, status, project_id in found}
            for sid, project in batch:
                status, project_id = rows.get(sid, (None, None))
                if sid not in warm and _orphan(status, project_id, project.id):
                    suspects.append((sid, project))
        return suspects

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
        self, session_id: uuid.UUID, project: Project, recovery: Recovery
    ) -> None:
        async with self._db() as db:
            # One statement: a warm project taken meanwhile shows as its session or its pool
            # row, never as neither.
            of_session = col(AgentSession.id) == session_id
            warm, status, session_project = (
                await db.execute(
                    sa.select(
                        sa.exists().where(col(WarmProject.id) == session_id),
                        sa.select(col(AgentSession.status)).where(of_session).scalar_subquery(),
                        sa.select(col(AgentSession.project_id)).where(of_session).scalar_subquery(),
                    )
                )
            ).one()
            orphan = not warm and _orphan(status, session_project, project.id)
            row = await db.get(AgentSession, session_id, populate_existing=True)
            # Gone already: another process's reconciler got there first.
            if not orphan or not await self._delete_project(project.id):
                return
            recovery.project(db, row, session_id, project.id)
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


#: Sessions read in one query when looking for orphan projects.
_BATCH = 1000


def _orphan(status: SessionStatus | None, session_project: str | None, project_id: str) -> bool:
    """Whether a project named after a session is nobody's: the session does not exist, was
    deleted, or failed without owning this project."""
    return (
        status is None
        or status == SessionStatus.DELETED
        or (status == SessionStatus.FAILED and session_project != project_id)
    )


__all__ = ["ReconcileReport", "Reconciler"]
