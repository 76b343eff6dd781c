"""Consumption as the local control plane keeps and reports it: hourly buckets per project
(`UsageHourRecord`, written by the meter in `_meter`), this billing period's totals (the UTC
calendar month) behind a project's counters and its quota checks, and the consumption history
responses (legacy per-project metrics and v2), grouped into hourly, daily or monthly timeframes.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ._models import (
    EndpointRecord,
    PeriodUsage,
    ProjectRecord,
    UsageHourRecord,
    now,
)
from ._store import Tx

JSON = dict[str, Any]

HOUR = timedelta(hours=1)
# Quotas that suspend every compute of a project (logical size is enforced per branch).
COMPUTE_QUOTAS = (
    "active_time_seconds",
    "compute_time_seconds",
    "written_data_bytes",
    "data_transfer_bytes",
)


# --- time ---------------------------------------------------------------------------------------


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def month_of(moment: datetime) -> datetime:
    return hour_of(moment).replace(day=1, hour=0)


def next_month(month: datetime) -> datetime:
    return (month + timedelta(days=32)).replace(day=1)


def bucket_id(project_id: str, hour: datetime) -> str:
    return f"{project_id}/{hour:%Y%m%dT%H}"


# --- reading buckets ----------------------------------------------------------------------------


@dataclass
class HourUsage:
    """One hour of one project, with sizes forward-filled from earlier hours."""

    start: datetime
    active_s: int = 0
    compute_s: int = 0
    written: int = 0
    transfer: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # largest in the hour
    hours: float = 1.0  # how much of the hour the project existed (the current hour: so far)

    def byte_hours(self, size: str) -> int:
        return int(self.sizes.get(size, 0) * self.hours)

    def byte_months(self, size: str) -> int:
        month = month_of(self.start)
        hours_in_month = (next_month(month) - month) / HOUR
        return int(self.sizes.get(size, 0) * self.hours / hours_in_month)


def hours_of(
    project: ProjectRecord,
    buckets: Iterable[UsageHourRecord],
    before: UsageHourRecord | None,
    start: datetime,
    end: datetime,
) -> list[HourUsage]:
    """The project's hours in [start, end) up to now, from its buckets in that range and the
    last bucket `before` it. Times are rounded to the hour's second per bucket (`round`), so
    hourly, daily and period figures add up exactly."""
    current = now()
    by_hour = {b.created_at: b for b in buckets}
    carried = dict(before.last_sizes) if before is not None else {}
    born = project.created_at
    result = []
    hour = max(hour_of(start), hour_of(born))
    while hour < end and hour <= current:
        span_start, span_end = max(hour, born), min(hour + HOUR, current)
        usage = HourUsage(start=hour, hours=max(0.0, (span_end - span_start) / HOUR))
        bucket = by_hour.get(hour)
        if bucket is not None:
            usage.active_s = round(bucket.active_time_s)
            usage.compute_s = round(bucket.compute_time_s)
            usage.written = bucket.written_data_bytes
            usage.transfer = bucket.data_transfer_bytes
            usage.sizes = {k: max(v, carried.get(k, 0)) for k, v in bucket.sizes.items()}
            carried = dict(bucket.last_sizes)
        else:
            usage.sizes = dict(carried)
        result.append(usage)
        hour += HOUR
    return result


async def period_usage(tx: Tx, projects: Sequence[ProjectRecord]) -> dict[str, PeriodUsage]:
    """This billing period's counters of `projects`, from their buckets (two queries)."""
    period = month_of(now())
    ids = [p.id for p in projects]
    buckets: dict[str, list[UsageHourRecord]] = defaultdict(list)
    for b in await tx.list_since(UsageHourRecord, ids, period):
        buckets[b.project_id].append(b)
    before = {b.project_id: b for b in await tx.latest(UsageHourRecord, ids, before=period)}
    endpoints: dict[str, list[EndpointRecord]] = defaultdict(list)
    for e in await tx.list_in(EndpointRecord, ids):
        endpoints[e.project_id].append(e)
    result = {}
    for p in projects:
        hours = hours_of(p, buckets[p.id], before.get(p.id), period, next_month(period))
        last = hours[-1].sizes if hours else {}
        actives = [e.last_active for e in endpoints[p.id] if e.last_active is not None]
        result[p.id] = PeriodUsage(
            period_start=period,
            period_end=next_month(period),
            active_time_seconds=sum(h.active_s for h in hours),
            compute_time_seconds=sum(h.compute_s for h in hours),
            written_data_bytes=sum(h.written for h in hours),
            data_transfer_bytes=sum(h.transfer for h in hours),
            data_storage_bytes_hour=sum(h.byte_hours("synthetic") for h in hours),
            synthetic_storage_size=last.get("synthetic", 0),
            compute_last_active_at=max(actives, default=None),
        )
    return result


async def exact_totals(tx: Tx, project_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Unrounded sums of this period's buckets, for quota checks."""
    totals: dict[str, dict[str, float]] = {pid: defaultdict(float) for pid in project_ids}
    for b in await tx.list_since(UsageHourRecord, project_ids, month_of(now())):
        t = totals[b.project_id]
        t["active_time_seconds"] += b.active_time_s
        t["compute_time_seconds"] += b.compute_time_s
        t["written_data_bytes"] += b.written_data_bytes
        t["data_transfer_bytes"] += b.data_transfer_bytes
    return totals


def quota_breach(p: ProjectRecord, totals: dict[str, float]) -> str | None:
    """The message naming the first compute quota the project is over, or None."""
    for name in COMPUTE_QUOTAS:
        limit = p.quota.get(name)
        used = totals.get(name, 0.0)
        if limit is not None and used > limit:
            shown = f"{used:.1f}" if name.endswith("seconds") else f"{int(used)}"
            return (
                f"project {p.id} is over its {name} quota (used {shown} of {limit} this billing "
                "period): its computes are suspended until the quota is raised or the period ends"
            )
    return None


def period_id(project_id: str, month: datetime) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"agentdb-localplane/{project_id}/{month:%Y-%m}"))


# --- consumption history responses ---------------------------------------------------------------

LEGACY_METRICS = (
    "active_time_seconds",
    "compute_time_seconds",
    "written_data_bytes",
    "synthetic_storage_size_bytes",
    "data_storage_bytes_hour",
    "logical_size_bytes",
    "logical_size_bytes_hour",
)
# Always present in a legacy timeframe (required by the spec), whatever `metrics` asks.
LEGACY_REQUIRED = LEGACY_METRICS[:4]
V2_METRICS = (
    "compute_unit_seconds",
    "root_branch_bytes_month",
    "child_branch_bytes_month",
    "instant_restore_bytes_month",
    "public_network_transfer_bytes",
    "private_network_transfer_bytes",
    "extra_branches_month",
    "snapshot_storage_bytes_month",
)
#: How far back each granularity reaches (Neon's limits; 406 beyond).
GRANULARITY_WINDOWS = {
    "hourly": timedelta(hours=168),
    "daily": timedelta(days=60),
    "monthly": timedelta(days=365),
}
HISTORY_START = datetime(2024, 3, 1, tzinfo=UTC)


def floor_to(moment: datetime, granularity: str) -> datetime:
    if granularity == "hourly":
        return hour_of(moment)
    if granularity == "daily":
        return hour_of(moment).replace(hour=0)
    return month_of(moment)


def _step(start: datetime, granularity: str) -> datetime:
    if granularity == "hourly":
        return start + HOUR
    if granularity == "daily":
        return start + timedelta(days=1)
    return next_month(start)


def _metric(name: str, hours: list[HourUsage]) -> int:  # noqa: C901, PLR0911 - a case per metric
    match name:
        case "active_time_seconds":
            return sum(h.active_s for h in hours)
        case "compute_time_seconds" | "compute_unit_seconds":
            return sum(h.compute_s for h in hours)
        case "written_data_bytes":
            return sum(h.written for h in hours)
        case "public_network_transfer_bytes":
            return sum(h.transfer for h in hours)
        case "synthetic_storage_size_bytes":
            return max((h.sizes.get("synthetic", 0) for h in hours), default=0)
        case "logical_size_bytes":
            return max((h.sizes.get("logical", 0) for h in hours), default=0)
        case "data_storage_bytes_hour":
            return sum(h.byte_hours("synthetic") for h in hours)
        case "logical_size_bytes_hour":
            return sum(h.byte_hours("logical") for h in hours)
        case "root_branch_bytes_month" | "child_branch_bytes_month":
            return sum(h.byte_months(name.split("_", maxsplit=1)[0]) for h in hours)
        case "snapshot_storage_bytes_month":
            return sum(h.byte_months("snapshot") for h in hours)
    return 0  # not measured locally: instant restore, private transfer, extra branches


def project_consumption(
    project_id: str, hours: list[HourUsage], granularity: str, metrics: Sequence[str], *, v2: bool
) -> JSON:
    """One project's periods (UTC months) of timeframes; timeframes where every reported
    metric is zero are left out, as Neon does."""
    by_frame: dict[datetime, list[HourUsage]] = defaultdict(list)
    for h in hours:
        by_frame[floor_to(h.start, granularity)].append(h)
    periods: dict[datetime, list[JSON]] = defaultdict(list)
    for frame, frame_hours in sorted(by_frame.items()):
        values = {name: _metric(name, frame_hours) for name in metrics}
        if not any(values.values()):
            continue
        timeframe: JSON = {
            "timeframe_start": _ts(frame),
            "timeframe_end": _ts(_step(frame, granularity)),
        }
        if v2:
            timeframe["metrics"] = [{"metric_name": k, "value": v} for k, v in values.items()]
        else:
            timeframe |= values
        periods[month_of(frame)].append(timeframe)
    current = month_of(now())
    return {
        "project_id": project_id,
        "periods": [
            {
                "period_id": period_id(project_id, month),
                "period_plan": "local",
                "period_start": _ts(month),
                **({"period_end": _ts(next_month(month))} if month < current else {}),
                "consumption": frames,
            }
            for month, frames in sorted(periods.items())
        ],
    }


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
