"""Moving a user to another tier: their sessions' projects go to the tier's Neon organization
and get its limits (compute size, suspend timeout, quota, history retention).

`request` records the change and sets the user's tier in one transaction (sessions created from
then on start in the new tier); the `tier_changes` job does the rest. Progress lives on the
sessions themselves: a session whose `org_id` is the target organization has moved, and one
whose `tier` is the target tier has its limits. So the work is a convergence that any run can
resume, after a crash or a failed Neon call, without redoing what is done:

1. group the sessions still in another organization by that organization, and transfer them in
   requests of at most 400 projects (Neon's cap), recording each batch once Neon accepted it;
2. patch each remaining session's project (quota, history retention, compute defaults) and its
   computes, a few at a time, recording each session once patched.

A failed step marks the change `failed` with what moved and what did not; the job retries it,
up to `max_attempts` runs, and `GET /v1/users/{id}/tier-changes` shows it all along.
"""

from __future__ import annotations

import asyncio
import builtins
import uuid
from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.neon import DefaultEndpointSettings, NeonClient, NeonError, ProjectSettings
from agentdb.neon._account import MAX_TRANSFER_PROJECTS
from agentdb.tiers import Tier, Tiers
from agentdb.wire import TierChangeView
from meta_schema import ActorScope, AgentSession, SessionStatus, TierChange, TierChangeStatus, User

from ._common import SYSTEM, Actor, Clock, SessionFactory, describe, event, system_clock
from ._errors import InvalidInput, NotFound, UserNotFound

log = structlog.get_logger(__name__)

#: How many sessions' limits are patched at once (each is 2+ control-plane requests).
PATCH_CONCURRENCY = 8
MAX_ATTEMPTS = 5
_UNFINISHED = (TierChangeStatus.RUNNING, TierChangeStatus.FAILED)
# Sessions whose project exists: everything but the deleted and the never-provisioned.
_GONE = (SessionStatus.DELETED, SessionStatus.DELETING)


class TierChangeNotFound(NotFound):
    def __init__(self, change_id: uuid.UUID) -> None:
        super().__init__(f"no tier change {change_id}")
        self.change_id = change_id


class _Failed(Exception):  # noqa: N818 - internal: a step failed, the message says which
    pass


class TierChangeService:
    def __init__(
        self,
        sessions: SessionFactory,
        neon: NeonClient,
        *,
        tiers: Tiers,
        endpoint_settings: DefaultEndpointSettings | None = None,
        default_org_id: str | None = None,
        clock: Clock = system_clock,
        concurrency: int = PATCH_CONCURRENCY,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        """`endpoint_settings` and `default_org_id`: the settings' defaults, as
        `SessionService` applies them at creation."""
        self._sessions = sessions
        self._neon = neon
        self._tiers = tiers
        self._endpoint_settings = endpoint_settings
        self._default_org_id = default_org_id
        self._clock = clock
        self._concurrency = concurrency
        self._max_attempts = max_attempts

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    async def request(
        self, user_id: uuid.UUID, tier: str, *, actor: Actor = SYSTEM
    ) -> TierChangeView:
        """Moves the user to `tier`: sets their tier now and records the change for the
        `tier_changes` job (call `advance` to run it at once). An unfinished earlier change is
        superseded. Raises `UserNotFound` or `InvalidInput("tier", ...)`."""
        target = self._find(tier)
        async with self._db() as db:
            user = await db.get(User, user_id, with_for_update=True)
            if user is None or user.disabled_at is not None:
                raise UserNotFound(user_id)
            now = self._clock()
            superseded = await db.scalars(
                sa.update(TierChange)
                .where(
                    col(TierChange.user_id) == user_id,
                    col(TierChange.status).in_(_UNFINISHED),
                )
                .values(status=TierChangeStatus.SUPERSEDED, finished_at=now, updated_at=now)
                .returning(col(TierChange.id))
            )
            superseded_ids = [str(found) for found in superseded]
            total = await db.scalar(
                sa.select(sa.func.count())
                .select_from(AgentSession)
                .where(
                    col(AgentSession.user_id) == user_id,
                    col(AgentSession.status).not_in(_GONE),
                )
            )
            row = TierChange(
                user_id=user_id,
                from_tier=user.tier,
                to_tier=target.name,
                to_org_id=user.org_id or target.org_id or self._default_org_id,
                sessions_total=total or 0,
                actor=actor.id,
                request_id=actor.request_id,
                created_at=now,
                updated_at=now,
            )
            user.tier = target.name
            db.add(row)
            db.add(
                event(
                    actor,
                    "user.tier_change",
                    at=now,
                    session_id=None,
                    target_kind="user",
                    target_id=user_id,
                    details={
                        "phase": "requested",
                        "change_id": str(row.id),
                        "from_tier": row.from_tier,
                        "to_tier": row.to_tier,
                        "to_org_id": row.to_org_id,
                        "sessions": row.sessions_total,
                        "superseded": list(superseded_ids),
                    },
                )
            )
            await db.commit()
            log.info(
                "tier_change.requested",
                change_id=str(row.id),
                user_id=str(user_id),
                from_tier=row.from_tier,
                to_tier=row.to_tier,
                sessions=row.sessions_total,
            )
            return TierChangeView.of(row)

    async def get(self, user_id: uuid.UUID, change_id: uuid.UUID) -> TierChangeView:
        async with self._db() as db:
            row = await db.get(TierChange, change_id)
            if row is None or row.user_id != user_id:
                raise TierChangeNotFound(change_id)
            return TierChangeView.of(row)

    async def list(self, user_id: uuid.UUID, *, limit: int = 50) -> builtins.list[TierChangeView]:
        """The user's tier changes, newest first."""
        async with self._db() as db:
            if await db.get(User, user_id) is None:
                raise UserNotFound(user_id)
            rows = await db.scalars(
                sa.select(TierChange)
                .where(col(TierChange.user_id) == user_id)
                .order_by(col(TierChange.created_at).desc(), col(TierChange.id).desc())
                .limit(limit)
            )
            return [TierChangeView.of(row) for row in rows]

    async def run_pending(self) -> int:
        """The `tier_changes` job: advances every unfinished change that has attempts left;
        returns how many finished."""
        async with self._db() as db:
            ids = (
                await db.scalars(
                    sa.select(col(TierChange.id))
                    .where(
                        col(TierChange.status).in_(_UNFINISHED),
                        col(TierChange.attempts) < self._max_attempts,
                    )
                    .order_by(col(TierChange.created_at))
                )
            ).all()
        finished = 0
        for change_id in ids:
            view = await self.advance(change_id)
            finished += view.status == TierChangeStatus.FINISHED
        return finished

    async def advance(self, change_id: uuid.UUID) -> TierChangeView:
        """Runs the change as far as it goes: moves and patches what is left. A failure is
        recorded on the change (`failed`, with the error), not raised."""
        async with self._db() as db:
            row = await db.get(TierChange, change_id, with_for_update=True)
            if row is None:
                raise TierChangeNotFound(change_id)
            if row.status not in _UNFINISHED:
                return TierChangeView.of(row)
            row.attempts += 1
            row.status = TierChangeStatus.RUNNING
            row.updated_at = self._clock()
            await db.commit()
        tier = self._find(row.to_tier)
        try:
            await self._transfer(row)
            pending = await self._patch(row, tier)
        except _Failed as failure:
            return await self._finish(row.id, TierChangeStatus.FAILED, str(failure))
        if pending:
            # Sessions still being provisioned under the old tier: the next run takes them.
            return await self._finish(row.id, TierChangeStatus.RUNNING, None)
        return await self._finish(row.id, TierChangeStatus.FINISHED, None)

    # --- the steps ---------------------------------------------------------------------------

    async def _live_sessions(self, user_id: uuid.UUID) -> builtins.list[AgentSession]:
        async with self._db() as db:
            return list(
                await db.scalars(
                    sa.select(AgentSession)
                    .where(
                        col(AgentSession.user_id) == user_id,
                        col(AgentSession.status).not_in(_GONE),
                    )
                    .order_by(col(AgentSession.created_at))
                )
            )

    async def _transfer(self, change: TierChange) -> None:
        target = change.to_org_id
        if target is None:
            return
        by_org: dict[str, builtins.list[AgentSession]] = defaultdict(list)
        for session in await self._live_sessions(change.user_id):
            if session.project_id is None or session.org_id == target:
                continue
            source = session.org_id or await self._project_org(session)
            if source == target:
                await self._set_org([session.id], target)
                continue
            by_org[source].append(session)
        for source, sessions in by_org.items():
            for start in range(0, len(sessions), MAX_TRANSFER_PROJECTS):
                batch = sessions[start : start + MAX_TRANSFER_PROJECTS]
                await self._transfer_batch(change, source, target, batch)

    async def _transfer_batch(
        self, change: TierChange, source: str, target: str, batch: Sequence[AgentSession]
    ) -> None:
        ids = [session.project_id for session in batch if session.project_id is not None]
        try:
            await self._neon.transfer_projects(
                source_org_id=source, destination_org_id=target, project_ids=ids
            )
        except NeonError as error:
            moved = await self._count_moved(change)
            raise _Failed(
                f"transferring {len(ids)} projects from organization {source} to {target} "
                f"failed ({moved} of {change.sessions_total} sessions moved so far): "
                f"{describe(error)}"
            ) from error
        await self._set_org([session.id for session in batch], target)
        async with self._db() as db:
            await db.execute(
                sa.update(TierChange)
                .where(col(TierChange.id) == change.id)
                .values(
                    sessions_moved=TierChange.sessions_moved + len(batch),
                    transfer_requests=TierChange.transfer_requests + 1,
                    updated_at=self._clock(),
                )
            )
            db.add(
                event(
                    Actor("system", ActorScope.SYSTEM, change.request_id),
                    "user.tier_change",
                    at=self._clock(),
                    session_id=None,
                    target_kind="user",
                    target_id=change.user_id,
                    details={
                        "phase": "transferred",
                        "change_id": str(change.id),
                        "from_org_id": source,
                        "to_org_id": target,
                        "projects": len(ids),
                    },
                )
            )
            await db.commit()

    async def _patch(self, change: TierChange, tier: Tier) -> int:
        """Applies the tier's limits to every session that lacks them; returns how many
        sessions could not be done yet (still provisioning)."""
        sessions = [
            s for s in await self._live_sessions(change.user_id) if s.tier != change.to_tier
        ]
        waiting = sum(1 for s in sessions if s.status == SessionStatus.PROVISIONING)
        ready = [s for s in sessions if s.project_id is not None]
        gate = asyncio.Semaphore(self._concurrency)
        failures: builtins.list[str] = []

        async def one(session: AgentSession) -> None:
            async with gate:
                if failures:
                    return  # stop starting new ones after a failure; the retry resumes
                try:
                    await self._apply_limits(session, tier)
                except NeonError as error:
                    failures.append(f"session {session.id}: {describe(error)}")
                    return
                await self._mark_patched(change, session.id)

        await asyncio.gather(*(one(session) for session in ready))
        if failures:
            done = await self._count_patched(change)
            raise _Failed(
                f"applying the {tier.name} tier's limits failed ({done} of "
                f"{change.sessions_total} sessions done): {failures[0]}"
            )
        return waiting

    async def _apply_limits(self, session: AgentSession, tier: Tier) -> None:
        assert session.project_id is not None  # noqa: S101 - filtered by the caller
        endpoint = tier.endpoint_settings(self._endpoint_settings)
        await self._neon.update_project(
            session.project_id,
            settings=ProjectSettings(quota=tier.quota_update()),
            default_endpoint_settings=endpoint,
            history_retention_seconds=tier.history_retention_seconds,
        )
        if endpoint is None:
            return
        for compute in await self._neon.list_endpoints(session.project_id):
            await self._neon.update_endpoint(
                session.project_id,
                compute.id,
                autoscaling_limit_min_cu=endpoint.autoscaling_limit_min_cu,
                autoscaling_limit_max_cu=endpoint.autoscaling_limit_max_cu,
                suspend_timeout_seconds=endpoint.suspend_timeout_seconds,
            )

    # --- bookkeeping ---------------------------------------------------------------------------

    async def _project_org(self, session: AgentSession) -> str:
        """The organization a session's project is in, for sessions recorded without one."""
        assert session.project_id is not None  # noqa: S101 - filtered by the caller
        try:
            project = await self._neon.get_project(session.project_id)
        except NeonError as error:
            raise _Failed(f"session {session.id}: {describe(error)}") from error
        if project.org_id is None:
            raise _Failed(f"session {session.id}: its project reports no organization")
        await self._set_org([session.id], project.org_id)
        return project.org_id

    async def _set_org(self, session_ids: Sequence[uuid.UUID], org_id: str) -> None:
        async with self._db() as db:
            await db.execute(
                sa.update(AgentSession)
                .where(col(AgentSession.id).in_(session_ids))
                .values(org_id=org_id, updated_at=self._clock())
            )
            await db.commit()

    async def _mark_patched(self, change: TierChange, session_id: uuid.UUID) -> None:
        async with self._db() as db:
            await db.execute(
                sa.update(AgentSession)
                .where(col(AgentSession.id) == session_id)
                .values(tier=change.to_tier, updated_at=self._clock())
            )
            await db.execute(
                sa.update(TierChange)
                .where(col(TierChange.id) == change.id)
                .values(sessions_updated=TierChange.sessions_updated + 1)
            )
            await db.commit()

    async def _count_moved(self, change: TierChange) -> int:
        async with self._db() as db:
            found = await db.get(TierChange, change.id, populate_existing=True)
            return found.sessions_moved if found is not None else 0

    async def _count_patched(self, change: TierChange) -> int:
        async with self._db() as db:
            found = await db.get(TierChange, change.id, populate_existing=True)
            return found.sessions_updated if found is not None else 0

    async def _finish(
        self, change_id: uuid.UUID, status: TierChangeStatus, error: str | None
    ) -> TierChangeView:
        async with self._db() as db:
            row = await db.get(TierChange, change_id, populate_existing=True, with_for_update=True)
            if row is None:
                raise TierChangeNotFound(change_id)
            if row.status in _UNFINISHED:  # a newer change may have superseded it meanwhile
                now = self._clock()
                row.status = status
                row.error = error
                row.updated_at = now
                if status != TierChangeStatus.RUNNING:
                    row.finished_at = now if status == TierChangeStatus.FINISHED else None
                    db.add(
                        event(
                            Actor("system", ActorScope.SYSTEM, row.request_id),
                            "user.tier_change",
                            at=now,
                            session_id=None,
                            target_kind="user",
                            target_id=row.user_id,
                            details={
                                "phase": "succeeded"
                                if status == TierChangeStatus.FINISHED
                                else "failed",
                                "change_id": str(row.id),
                                "to_tier": row.to_tier,
                                "sessions_moved": row.sessions_moved,
                                "sessions_updated": row.sessions_updated,
                                "error": error,
                            },
                        )
                    )
                await db.commit()
            if status == TierChangeStatus.FAILED:
                log.error(
                    "tier_change.failed",
                    change_id=str(change_id),
                    user_id=str(row.user_id),
                    attempts=row.attempts,
                    error=error,
                )
            return TierChangeView.of(row)

    def _find(self, name: str) -> Tier:
        tier = self._tiers.find(name) if isinstance(name, str) else None
        if tier is None:
            raise InvalidInput("tier", f"must be one of {', '.join(self._tiers.names)}")
        return tier


__all__ = ["TierChangeNotFound", "TierChangeService", "TierChangeView"]
