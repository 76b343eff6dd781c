"""Usage: what sessions consumed, read from the control plane into `usage_samples` and
reported per billing period and metric; and the quota check that turns "connection refused" or
"read-only transaction" into an error that tells the agent why.

The `poll_usage` job reads consumption per organization, 100 projects per request (Neon's cap),
from two endpoints: the legacy per-project history, whose metrics are the ones Neon's quotas use
(active and compute time, written data, logical and synthetic size), and the v2 history for
network transfer. Each request passes the Neon client's consumption limiter (30 a minute, Neon's
limit), and the job runs at most every 15 minutes, Neon's refresh interval. Daily timeframes
are kept, one row per session, metric and day, updated in place while the day is running.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

import sqlalchemy as sa
import structlog
from pydantic import BaseModel, ConfigDict
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.neon import NeonClient, NeonError
from agentdb.neon._account import MAX_CONSUMPTION_PROJECTS
from agentdb.tiers import Tiers
from agentdb.wire import MetricUsage, PeriodUsage, UsageReport
from meta_schema import AgentSession, SessionStatus, UsageSample, User

from ._common import Clock, SessionFactory, describe, load_session, system_clock
from ._errors import QuotaExceeded, UserNotFound

log = structlog.get_logger(__name__)

Aggregate = Literal["sum", "last"]


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: Literal["seconds", "bytes"]
    #: "sum": consumed in each timeframe (a period's total is the sum); "last": a size at the
    #: end of each timeframe (a period's value is the latest one).
    aggregate: Aggregate


METRICS = (
    Metric("active_time_seconds", "seconds", "sum"),
    Metric("compute_time_seconds", "seconds", "sum"),
    Metric("written_data_bytes", "bytes", "sum"),
    Metric("data_transfer_bytes", "bytes", "sum"),
    Metric("logical_size_bytes", "bytes", "last"),
    Metric("synthetic_storage_size_bytes", "bytes", "last"),
)
_BY_NAME = {metric.name: metric for metric in METRICS}
#: Read from `GET /consumption_history/projects` (the names Neon's quotas use).
LEGACY_METRICS = (
    "active_time_seconds",
    "compute_time_seconds",
    "written_data_bytes",
    "logical_size_bytes",
    "synthetic_storage_size_bytes",
)
#: Read from `GET /consumption_history/v2/projects`, stored as `data_transfer_bytes`.
V2_TRANSFER = "public_network_transfer_bytes"
#: Quotas that suspend the compute when used up (the logical size only blocks writes).
TIME_QUOTAS = ("active_time_seconds", "compute_time_seconds", "written_data_bytes")
TRANSFER_QUOTA = "data_transfer_bytes"
MAX_PERIODS = 24
DECEMBER = 12
_KIB = 1024
_DAY = timedelta(days=1)


class _Reading(NamedTuple):
    project_id: str
    metric: str
    start: datetime
    end: datetime
    value: int


class PollResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    sessions: int
    samples: int
    requests: int
    skipped: list[str]


def period_bounds(at: datetime) -> tuple[datetime, datetime]:
    """The billing period (calendar month, UTC) that contains `at`."""
    start = at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == DECEMBER
        else start.replace(month=start.month + 1)
    )
    return start, end


class UsageService:
    def __init__(
        self,
        sessions: SessionFactory,
        neon: NeonClient,
        *,
        tiers: Tiers | None = None,
        min_interval: timedelta = timedelta(minutes=15),
        clock: Clock = system_clock,
    ) -> None:
        """`min_interval`: the least time between polls, across every process sharing the
        meta DB (Neon refreshes consumption about every 15 minutes)."""
        self._sessions = sessions
        self._neon = neon
        self._tiers = tiers
        self._min_interval = min_interval
        self._clock = clock

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    # --- polling -------------------------------------------------------------------------------

    async def poll(self, *, force: bool = False) -> PollResult:
        """The `poll_usage` job: reads this billing period's consumption (and the last one's,
        on the period's first day) of every session with a project into `usage_samples`.
        Does nothing when the last poll (by any process) is less than `min_interval` ago,
        unless `force`."""
        now = self._clock()
        if not force:
            async with self._db() as db:
                last = await db.scalar(sa.select(sa.func.max(col(UsageSample.collected_at))))
            if last is not None and now - last < self._min_interval:
                return PollResult(
                    sessions=0,
                    samples=0,
                    requests=0,
                    skipped=[f"polled at {last:%H:%M:%S}, less than {self._min_interval} ago"],
                )
        start, _ = period_bounds(now - _DAY)
        end = now.replace(hour=0, minute=0, second=0, microsecond=0) + _DAY
        async with self._db() as db:
            rows = (
                await db.execute(
                    sa.select(
                        col(AgentSession.id),
                        col(AgentSession.project_id),
                        col(AgentSession.org_id),
                    )
                    .where(
                        col(AgentSession.project_id).is_not(None),
                        col(AgentSession.status) != SessionStatus.DELETED,
                    )
                    .order_by(col(AgentSession.created_at))
                )
            ).all()
        by_org: dict[str | None, dict[str, uuid.UUID]] = defaultdict(dict)
        for session_id, project_id, org_id in rows:
            by_org[org_id][project_id] = session_id
        samples, requests, skipped = 0, 0, []
        for org_id, projects in by_org.items():
            ids = list(projects)
            for first in range(0, len(ids), MAX_CONSUMPTION_PROJECTS):
                batch = ids[first : first + MAX_CONSUMPTION_PROJECTS]
                found, made, problems = await self._read(org_id, batch, start, end)
                requests += made
                skipped += problems
                samples += await self._store(
                    [(projects[r.project_id], r) for r in found if r.project_id in projects], now
                )
        for problem in skipped:
            log.warning("usage.poll_skipped", reason=problem)
        return PollResult(sessions=len(rows), samples=samples, requests=requests, skipped=skipped)

    async def _read(
        self, org_id: str | None, project_ids: Sequence[str], start: datetime, end: datetime
    ) -> tuple[list[_Reading], int, list[str]]:
        """One batch's readings, the number of requests made, and what could not be read
        (e.g. an organization whose plan lacks the endpoint)."""
        found: list[_Reading] = []
        problems: list[str] = []
        requests = 1
        try:
            found += await self._read_legacy(org_id, project_ids, start, end)
        except NeonError as error:
            problems.append(f"consumption of organization {org_id}: {describe(error)}")
        if org_id is not None:  # the v2 endpoint needs the organization
            requests += 1
            try:
                found += await self._read_transfer(org_id, project_ids, start, end)
            except NeonError as error:
                problems.append(f"network transfer of organization {org_id}: {describe(error)}")
        return found, requests, problems

    async def _read_legacy(
        self, org_id: str | None, project_ids: Sequence[str], start: datetime, end: datetime
    ) -> list[_Reading]:
        page = await self._neon.legacy_consumption_history(
            org_id=org_id,
            from_=start,
            to=end,
            granularity="daily",
            metrics=LEGACY_METRICS,
            project_ids=project_ids,
            limit=len(project_ids),
        )
        return [
            _Reading(
                project.project_id,
                metric,
                frame.timeframe_start,
                frame.timeframe_end or frame.timeframe_start + _DAY,
                value,
            )
            for project in page.projects
            for period in project.periods
            for frame in period.consumption
            if frame.timeframe_start is not None
            for metric in LEGACY_METRICS
            if (value := getattr(frame, metric)) is not None
        ]

    async def _read_transfer(
        self, org_id: str, project_ids: Sequence[str], start: datetime, end: datetime
    ) -> list[_Reading]:
        page = await self._neon.consumption_history(
            org_id=org_id,
            from_=start,
            to=end,
            granularity="daily",
            metrics=[V2_TRANSFER],
            project_ids=project_ids,
            limit=len(project_ids),
        )
        return [
            _Reading(
                project.project_id,
                TRANSFER_QUOTA,
                frame.timeframe_start,
                frame.timeframe_end or frame.timeframe_start + _DAY,
                int(value.value),
            )
            for project in page.projects
            for period in project.periods
            for frame in period.consumption
            if frame.timeframe_start is not None
            for value in frame.metrics
            if value.metric_name == V2_TRANSFER
        ]

    async def _store(self, found: Iterable[tuple[uuid.UUID, _Reading]], now: datetime) -> int:
        values = [
            {
                "id": uuid.uuid4(),
                "session_id": session_id,
                "metric": reading.metric,
                "period_start": reading.start,
                "period_end": reading.end,
                "value": reading.value,
                "collected_at": now,
            }
            for session_id, reading in found
        ]
        if not values:
            return 0
        statement = insert(UsageSample).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=["session_id", "metric", "period_start"],
            set_={
                "value": statement.excluded.value,
                "period_end": statement.excluded.period_end,
                "collected_at": statement.excluded.collected_at,
            },
        )
        async with self._db() as db:
            await db.execute(statement)
            await db.commit()
        return len(values)

    # --- reports -------------------------------------------------------------------------------

    async def session_usage(self, session_id: uuid.UUID, *, periods: int = 3) -> UsageReport:
        """The session's usage in its latest `periods` billing periods, with its tier's
        quotas. Raises `SessionNotFound`."""
        async with self._db() as db:
            row = await load_session(db, session_id)
            samples = await self._samples(db, [session_id])
        tier = self._tiers.find(row.tier) if self._tiers is not None else None
        quota = tier.quota if tier is not None else None
        return UsageReport(
            user_id=row.user_id,
            session_id=session_id,
            tier=row.tier,
            sessions=1,
            polled_at=max((s.collected_at for s in samples), default=None),
            periods=_periods(samples, periods, quota.model_dump() if quota else {}),
        )

    async def user_usage(self, user_id: uuid.UUID, *, periods: int = 3) -> UsageReport:
        """The user's usage over all their sessions. Raises `UserNotFound`."""
        async with self._db() as db:
            user = await db.get(User, user_id)
            if user is None:
                raise UserNotFound(user_id)
            ids = list(
                await db.scalars(
                    sa.select(col(AgentSession.id)).where(col(AgentSession.user_id) == user_id)
                )
            )
            samples = await self._samples(db, ids)
        return UsageReport(
            user_id=user_id,
            session_id=None,
            tier=user.tier,
            sessions=len(ids),
            polled_at=max((s.collected_at for s in samples), default=None),
            periods=_periods(samples, periods, {}),
        )

    async def _samples(self, db: AsyncSession, session_ids: list[uuid.UUID]) -> list[UsageSample]:
        if not session_ids:
            return []
        return list(
            await db.scalars(
                sa.select(UsageSample)
                .where(col(UsageSample.session_id).in_(session_ids))
                .order_by(col(UsageSample.period_start))
            )
        )

    # --- quotas --------------------------------------------------------------------------------

    async def quota_problem(self, session_id: uuid.UUID) -> QuotaExceeded | None:
        """The quota the session is over right now, from the control plane's current counters
        (not the polled samples), or None. Never raises: it only explains another failure."""
        try:
            async with self._db() as db:
                row = await load_session(db, session_id)
            if row.project_id is None:
                return None
            project = await self._neon.get_project(row.project_id)
            quota = project.settings.quota if project.settings else None
            if quota is None:
                return None
            until = project.consumption_period_end
            for metric in (*TIME_QUOTAS, TRANSFER_QUOTA):
                limit, used = getattr(quota, metric), getattr(project, metric)
                if limit and used is not None and used >= limit:
                    return QuotaExceeded(
                        metric,
                        used,
                        limit,
                        f"session {session_id} used {_amount(metric, used)} of its "
                        f"{_amount(metric, limit)} {metric} quota this billing period, so its "
                        "compute is suspended"
                        + (f" until the period ends ({until:%Y-%m-%d %H:%M} UTC)" if until else "")
                        + "; raising the quota (a higher tier for the user) resumes it",
                    )
            limit = quota.logical_size_bytes
            if limit and row.live_branch_id is not None:
                branch = await self._neon.get_branch(row.project_id, row.live_branch_id)
                used = branch.logical_size
                if used is not None and used >= limit:
                    return QuotaExceeded(
                        "logical_size_bytes",
                        used,
                        limit,
                        f"session {session_id}'s database holds {_amount('b', used)}, over its "
                        f"{_amount('b', limit)} logical_size_bytes quota, so writes fail (reads "
                        "work); restore a smaller checkpoint or raise the quota (a higher tier "
                        "for the user)",
                    )
        except Exception:  # an explanation must not hide the original error
            log.warning("usage.quota_check_failed", session_id=str(session_id), exc_info=True)
        return None


def _periods(
    samples: Sequence[UsageSample], limit: int, quota: dict[str, int | None]
) -> list[PeriodUsage]:
    """Samples grouped by billing period and metric: "sum" metrics add up their timeframes
    (over sessions too); "last" metrics take each session's latest timeframe, summed over
    sessions."""
    sums: dict[datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    latest: dict[tuple[datetime, str, uuid.UUID], tuple[datetime, int]] = {}
    for sample in samples:
        period, _ = period_bounds(sample.period_start)
        metric = _BY_NAME.get(sample.metric)
        if metric is None:
            continue
        if metric.aggregate == "sum":
            sums[period][metric.name] += sample.value
        else:
            key = (period, metric.name, sample.session_id)
            if key not in latest or latest[key][0] <= sample.period_start:
                latest[key] = (sample.period_start, sample.value)
            sums[period].setdefault(metric.name, 0)
    for (period, name, _session), (_at, value) in latest.items():
        sums[period][name] += value
    result = []
    for period in sorted(sums, reverse=True)[: max(1, min(limit, MAX_PERIODS))]:
        metrics = []
        for metric in METRICS:
            if metric.name not in sums[period]:
                continue
            value = sums[period][metric.name]
            cap = quota.get(metric.name) or None
            metrics.append(
                MetricUsage(
                    metric=metric.name,
                    unit=metric.unit,
                    value=value,
                    quota=cap,
                    used_fraction=round(value / cap, 4) if cap else None,
                )
            )
        result.append(
            PeriodUsage(period_start=period, period_end=period_bounds(period)[1], metrics=metrics)
        )
    return result


def _amount(metric: str, value: int) -> str:
    if metric.endswith("seconds"):
        return f"{value} s"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < _KIB or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= _KIB
    return f"{value} B"  # pragma: no cover


__all__ = [
    "METRICS",
    "MetricUsage",
    "PeriodUsage",
    "PollResult",
    "UsageReport",
    "UsageService",
    "period_bounds",
]
