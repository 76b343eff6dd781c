"""Consumption metering and quota enforcement of the local control plane.

`meter()` takes one measurement of the whole cluster (a background task calls it every
`localplane_meter_interval_s`) with one superuser connection and four cluster-wide queries,
whatever the number of projects, and writes only what changed:

* **Activity.** An endpoint runs while its branch's databases see client activity: a connected
  backend that is not the plane's own superuser, or changed `pg_stat_database` counters
  (`xact_commit + xact_rollback`, `sessions`). Like Neon's auto-suspend it stays running
  `suspend_timeout_seconds` (0 = 300 s, -1 = never) after the last activity, then turns idle
  WITHOUT closing its databases: the next activity wakes it. Active time is the tick's wall time
  (monotonic clock) for each running endpoint. There is no autoscaling locally, so compute time
  is active time x `autoscaling_limit_min_cu`. The plane's own maintenance connections to a
  project database (creating it, Data API set-up) change its counters too and count as activity.
* **Written bytes** = the cluster's WAL growth (`pg_current_wal_insert_lsn()`), attributed
  exactly for live backends with PostgreSQL 18's `pg_stat_get_backend_wal(pid)`; what no
  backend reported (backends that ended first, autovacuum, backends that report late) goes to
  the project databases whose tuples changed (`tup_inserted + tup_updated + tup_deleted`
  growth), in proportion; a database with live backends gets its share as prepaid, and what
  its backends report later is first set against it, so nothing is counted twice.
  Error: statistics reach shared memory up to ~10 s after a transaction (a backend flushes them
  at most once a second, and at the latest 10 s later while idle, or when it exits), so a
  write can land in a later tick; WAL while no database changed tuples waits up to 15 s for
  one (then it is dropped: undercount); unreported WAL is shared by tuple counts, so when
  several databases change at once, one with wide rows is undercharged and the others
  overcharged; WAL of autovacuum and checkpoints goes to the databases changing tuples then.
  WAL that the plane's own sessions write (its state database, DDL, copies) is never billed; a
  copy reports its WAL when it ends, and while one runs no unreported WAL goes to tenants. The
  embedded cluster runs with `wal_level = minimal`, so rows written into a table created or
  truncated in the same transaction (CREATE TABLE AS, TRUNCATE + COPY) write no WAL and are not
  counted.
  Measured: 8 MiB of 1 KiB rows give 1.0-1.2x their payload in WAL (tuple and page headers,
  full-page images after a checkpoint), and up to about 2x once autovacuum has visited the new
  pages (setting hint bits writes full-page images: PostgreSQL 18 has data checksums on).
* **Logical size** of a branch = sum of `pg_database_size` of its databases (catalogs included),
  re-measured only for databases whose statistics changed.
* **Data transfer** = bytes of Data API response bodies (counted by `_rest.serve`); direct
  PostgreSQL connections are not measured.

Consumption is kept as hourly buckets per project (`UsageHourRecord`); the billing period is the
UTC calendar month. Quotas (`settings.quota`) are checked every tick and after a project PATCH:
over a time, written-data or transfer quota every endpoint is suspended (databases closed) and
starting one answers 403; over `logical_size_bytes` a branch's databases get
`default_transaction_read_only = on` and their sessions are ended (as Supabase does when a disk
fills). Unlike Neon's storage-level check, a client can override that with
`SET default_transaction_read_only = off`; the size watch then ends its backend whenever it
finds it writing (a statement running with a transaction id), but a client committing many
small transactions between two looks still writes: a guard rail, not a security boundary.

**The size watch** (`watch()`, every `Limits.size_watch_interval_s`, 0.1 s) does not wait for the
meter: statistics of a statement still running reach the meter only once it ends, so one
statement could write gigabytes past a size quota. Every interval it measures the branches whose
databases have an active client statement (one catalog query, plus `pg_database_size` of those
branches' databases only); a branch past its quota is made read-only at once, which ends its
sessions and so rolls back the statement writing. The overshoot is what one interval of writing
adds (benchmarks/neighbours.py measures it). It also keeps the cluster's disk from filling: while
the data directory's free space is under `Limits.min_free_disk_mb`, every project database is
read-only (agentdb's meta and state databases stay writable), until 25 % more than that is free.
And since any role may `SET work_mem = '8GB'` (PostgreSQL has no way to forbid it), a tenant
backend whose statement has run for a while and whose private memory is past
`Limits.backend_memory_max_mb` is ended (`pg_terminate_backend`), which rolls its statement back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
import structlog
from psycopg import AsyncConnection, sql

from agentdb.pg import ServerInfo

from . import _steps as step
from ._base import PlaneBase
from ._consumption import (
    HourUsage,
    bucket_id,
    exact_totals,
    hour_of,
    hours_of,
    quota_breach,
)
from ._engine import Engine
from ._errors import NotFound
from ._models import (
    BranchRecord,
    DatabaseRecord,
    EndpointRecord,
    OperationRecord,
    ProjectRecord,
    SnapshotRecord,
    UsageHourRecord,
    now,
)
from ._store import Store, Tx

JSON = dict[str, Any]
log = structlog.get_logger(__name__)

DEFAULT_SUSPEND_S = 300
_PROJECT_DATABASES = "lpd_"
# How long WAL nobody has reported yet waits for a database to claim it: PostgreSQL's idle
# statistics flush interval (10 s) plus a margin.
_PENDING_WAL_S = 15.0
# The meter reads every project at least this often (else only those something happened to).
_READ_ALL_S = 600.0
# Projects whose tick one meter transaction writes (projects are locked in id order, as a
# mutation locks only its own project, so this cannot deadlock with one).
_RECORD_BATCH = 50


# --- the meter ----------------------------------------------------------------------------------


@dataclass
class _DatabaseStats:
    activity: int  # xact_commit + xact_rollback + sessions
    tuples: int
    backends: int  # live client backends that are not the plane's own


@dataclass
class _Sample:
    databases: dict[str, _DatabaseStats]
    backend_wal: dict[int, tuple[str, bool, int]]  # pid -> (database, plane's own, WAL bytes)
    wal: int
    read_only: set[str]  # databases whose default_transaction_read_only is on


@dataclass
class _MeterState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    conn: AsyncConnection[Any] | None = None
    last_mono: float | None = None
    last: _Sample | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # physical database -> bytes
    latest: dict[str, UsageHourRecord] | None = None  # project -> newest bucket
    pending_wal: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, bytes)
    # database -> WAL bytes given to it from the unreported pool while it had live backends,
    # which they will report later (and must not be counted twice)
    prepaid: dict[str, float] = field(default_factory=dict)
    # The store's change watermark (`Tx.changed_since`) and when every project was last read.
    watermark: int | None = None
    read_all_at: float = -math.inf
    places: dict[str, str] = field(default_factory=dict)  # physical database -> project


@dataclass
class _WatchState:
    """What the size watch knows of the store, refreshed when it meets an unknown database."""

    conn: AsyncConnection[Any] | None = None
    places: dict[str, tuple[str, str]] = field(default_factory=dict)  # database -> project, branch
    branch_databases: dict[str, list[str]] = field(default_factory=dict)
    size_limits: dict[str, int] = field(default_factory=dict)  # project -> logical size quota
    read_only: set[str] = field(default_factory=set)  # branch ids
    refreshed: float = -math.inf
    data_dir: Path | None = None
    data_dir_known: bool = False
    disk_low: bool = False
    disk_low_applied: bool = False
    measured: dict[str, tuple[int, float]] = field(default_factory=dict)  # branch -> size, when
    # (pid, backend_start) -> the nice value it was given
    deprioritised: dict[tuple[int, datetime], int] = field(default_factory=dict)
    may_deprioritise: bool = True


def _tuple_growth(sample: _Sample, last: _Sample) -> dict[str, float]:
    """Each project database's tuple changes since `last`: its share of the WAL no backend
    reported. Other databases (the plane's state, agentdb's meta database) are written by
    long-lived pooled connections, which report their WAL themselves; their tuple changes
    would otherwise take a share of a project's unreported WAL."""
    weights: dict[str, float] = {}
    for name, stats in sample.databases.items():
        if not name.startswith(_PROJECT_DATABASES):
            continue
        before = last.databases.get(name)
        grown = stats.tuples - (before.tuples if before else 0)
        if grown > 0:
            weights[name] = grown
    return weights


@dataclass
class _ProjectTick:
    active_s: float = 0
    compute_s: float = 0
    written: int = 0
    transfer: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    # endpoint id -> (the record the change was decided on, the changed record)
    endpoints: dict[str, tuple[EndpointRecord, EndpointRecord]] = field(default_factory=dict)
    branches: dict[str, int] = field(default_factory=dict)  # branch id -> new logical size


_STATS = """
SELECT d.datname, s.xact_commit + s.xact_rollback + coalesce(s.sessions, 0),
       s.tup_inserted + s.tup_updated + s.tup_deleted
FROM pg_stat_database s JOIN pg_database d ON d.oid = s.datid
"""
_BACKENDS = """
SELECT a.pid, a.datname, a.usename = current_user, (pg_stat_get_backend_wal(a.pid)).wal_bytes
FROM pg_stat_activity a
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AND a.datname IS NOT NULL
"""
_WAL = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
_ACTIVE_TENANT_BACKENDS = r"""
SELECT a.datname, a.pid, a.backend_start,
       a.query_start < clock_timestamp() - make_interval(secs => %s),
       a.backend_xid IS NOT NULL
FROM pg_stat_activity a
WHERE a.backend_type = 'client backend' AND a.state = 'active'
  AND a.datname LIKE 'lpd\_%%' AND a.usename <> current_user
"""
# A tenant backend seen running a statement gets a lower CPU priority at once (the plane's own
# backends keep theirs, so a copy or a meta-database query is served first on a busy machine),
# and the lowest once its statement has run longer than _DEPRIORITISE_AFTER_S (so other
# tenants' short statements are served before it).
_ACTIVE_NICE = 10
_LONG_NICE = 19
_DEPRIORITISE_AFTER_S = 0.2
# A branch is re-measured only once it could have reached its quota since it was last measured
# at this write rate (faster than the disks agentdb runs on).
_MAX_WRITE_RATE = 2 * 2**30
_SIZES_OF = "SELECT datname, pg_database_size(datname) FROM pg_database WHERE datname = ANY(%s)"
# The size watch re-reads the store at most this often (when it meets an unknown database),
# and at least this often while databases are active.
_WATCH_REFRESH_MIN_S = 1.0
_WATCH_REFRESH_MAX_S = 10.0
# Writes resume once free disk is this much above the threshold (no flapping at its edge).
_DISK_RESUME_FACTOR = 1.25
_READ_ONLY = """
SELECT d.datname FROM pg_db_role_setting r JOIN pg_database d ON d.oid = r.setdatabase
WHERE r.setrole = 0 AND 'default_transaction_read_only=on' = ANY (r.setconfig)
"""


def _lower_autogroup(pid: int, nice: int) -> None:
    """Gives `pid`'s scheduling autogroup the weight of `nice`.

    PostgreSQL puts every backend in a session of its own (`setsid`), and where the kernel
    groups tasks by session (`kernel.sched_autogroup_enabled`, on by default in most
    distributions) the CPU is shared between groups first: a backend's own nice value then
    weighs only against itself, and eight busy tenant backends take eight times the CPU of
    the plane's copy whatever their nice value. Lowering the group's weight is what makes them
    yield. Only for a backend that leads its own session, so a PostgreSQL that does not call
    `setsid` never has its whole cluster (the plane's connections too) lowered."""
    if os.getsid(pid) != pid:
        return
    try:
        with open(f"/proc/{pid}/autogroup", "w") as group:  # noqa: PTH123 - a procfs knob
            group.write(str(nice))
    except FileNotFoundError:
        return  # a kernel without autogroups: the nice value is what counts
    except PermissionError:
        return  # a hardened /proc: the nice value still orders the backends among themselves


class UsageMixin(PlaneBase):
    """The meter, quota enforcement and the consumption history routes' data."""

    def __init__(
        self, store: Store, engine: Engine, server: ServerInfo, *, operation_delay_s: float = 0
    ) -> None:
        super().__init__(store, engine, server, operation_delay_s=operation_delay_s)
        self._usage = _MeterState()
        self._watch = _WatchState()
        #: Free disk under which project databases turn read-only (0: never).
        self.min_free_disk_mb = 1024
        #: Private memory past which a tenant backend running a statement is ended (0: never).
        self.backend_memory_max_mb = 1024

    async def close_meter(self) -> None:
        for state in (self._usage, self._watch):
            if state.conn is not None:
                await state.conn.close()
                state.conn = None

    async def run_meter(self, interval_s: float) -> None:
        """Calls `meter()` every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.meter()
            except Exception:
                log.exception("localplane.meter_failed")

    @property
    def unattributed_wal_bytes(self) -> int:
        """WAL the cluster wrote that no database has been billed for yet: waiting for a
        backend to report it or for a database changing tuples to share it (`_written`)."""
        return round(sum(size for _moment, size in self._usage.pending_wal))

    async def meter(self) -> frozenset[str] | None:
        """Takes one measurement: activity, written bytes, sizes, transfer; then quotas.
        Returns the projects it read: those something happened to since the last tick (None
        when it read every project, as it does at the first tick and every `_READ_ALL_S`)."""
        async with self._usage.lock:
            read = await self._measure()
            if read is not None:
                # A new billing period, if any, is met by the next tick that reads all.
                async with self._store.tx() as tx:
                    read |= await tx.blocked_projects()
            await self._enforce(read)
        return None if read is None else frozenset(read)

    # --- measuring -----------------------------------------------------------------------------

    async def _conn(self) -> AsyncConnection[Any]:
        return await self._own_conn(self._usage)

    async def _own_conn(self, state: _MeterState | _WatchState) -> AsyncConnection[Any]:
        """`state`'s superuser connection, opened again if it was closed."""
        if state.conn is None or state.conn.closed:
            state.conn = await AsyncConnection.connect(
                self._server.conninfo("postgres"), autocommit=True
            )
        return state.conn

    async def _sample(self) -> _Sample:
        conn = await self._conn()
        backends: dict[str, int] = defaultdict(int)
        backend_wal = {}
        for pid, datname, own, wal in await (await conn.execute(_BACKENDS)).fetchall():
            backend_wal[int(pid)] = (str(datname), bool(own), int(wal or 0))
            if not own:
                backends[str(datname)] += 1
        databases = {
            str(name): _DatabaseStats(int(activity), int(tuples), backends.get(str(name), 0))
            for name, activity, tuples in await (await conn.execute(_STATS)).fetchall()
        }
        row = await (await conn.execute(_WAL)).fetchone()
        read_only = {str(r[0]) for r in await (await conn.execute(_READ_ONLY)).fetchall()}
        return _Sample(databases, backend_wal, int(row[0]) if row else 0, read_only)

    def _reported(self, sample: _Sample, last: _Sample) -> tuple[dict[str, float], float]:
        """The WAL live backends reported since `last`, per client database, and in all (the
        plane's own backends included)."""
        st = self._usage
        exact: dict[str, float] = defaultdict(float)
        explained = 0.0
        for pid, (datname, own, wal) in sample.backend_wal.items():
            previous = last.backend_wal.get(pid)
            delta = wal - previous[2] if previous is not None and previous[0] == datname else wal
            reported = float(max(0, delta))
            # WAL a database was already given from the unreported pool (see `_written`) is not
            # counted again when its backend reports it, nor does it settle newer WAL.
            paid = min(reported, st.prepaid.get(datname, 0.0))
            if paid:
                st.prepaid[datname] -= paid
                reported -= paid
            explained += reported
            if not own:
                exact[datname] += reported
        return exact, explained

    def _written(
        self, sample: _Sample, last: _Sample, mono: float, *, copying: bool = False
    ) -> dict[str, float]:
        """WAL bytes written since `last`, per database (see the module docstring). While
        `copying` (a copy of the plane's ran during the sample), WAL no backend reported waits:
        the copy reports its own the moment it ends."""
        st = self._usage
        exact, explained = self._reported(sample, last)
        # WAL no backend reported yet waits (a connected backend reports its statistics up to
        # 10 s late); what backends report later settles the oldest waiting bytes.
        pending = st.pending_wal
        pending.append((mono, sample.wal - last.wal))
        while explained > 0 and pending:
            moment, size = pending[0]
            if size <= explained:
                explained -= size
                pending.pop(0)
            else:
                pending[0] = (moment, size - explained)
                explained = 0
        weights = {} if copying else _tuple_growth(sample, last)
        total = sum(weights.values())
        if total:
            remainder = sum(size for _moment, size in pending)
            pending.clear()
            for name, weight in weights.items():
                share = remainder * weight / total
                exact[name] += share
                if sample.databases[name].backends:  # they will report it later: prepaid
                    st.prepaid[name] = st.prepaid.get(name, 0.0) + share
        else:
            pending[:] = [(m, size) for m, size in pending if mono - m <= _PENDING_WAL_S]
        # What a database without live backends was prepaid will never be reported.
        for name in list(st.prepaid):
            stats = sample.databases.get(name)
            if stats is None or not stats.backends or st.prepaid[name] <= 0:
                del st.prepaid[name]
        return exact

    async def _measure(self) -> set[str] | None:  # noqa: C901, PLR0912, PLR0915 - one pass
        """Bills the tick; returns the projects it read (None: every project)."""
        st = self._usage
        mono = time.monotonic()
        elapsed = 0.0 if st.last_mono is None else mono - st.last_mono
        current = now()
        # A copy of the plane's in flight writes WAL its backend reports only when it ends.
        started, finished = self._engine.copies_started, self._engine.copies_finished
        sample = await self._sample()
        copying = started != finished or self._engine.copies_started != started
        last = st.last or sample
        written = self._written(sample, last, mono, copying=copying) if st.last is not None else {}
        active_dbs = set()
        changed_dbs = set()
        for name, stats in sample.databases.items():
            if not name.startswith(_PROJECT_DATABASES):
                continue
            before = last.databases.get(name)
            if before is None:
                # A database created since the last tick starts from zero counters.
                before = _DatabaseStats(0, 0, 0) if st.last is not None else stats
            if stats.backends or stats.activity != before.activity:
                active_dbs.add(name)
            if stats.activity != before.activity or stats.tuples != before.tuples:
                changed_dbs.add(name)
        to_size = [n for n in sample.databases if n.startswith(_PROJECT_DATABASES)]
        to_size = [n for n in to_size if n in changed_dbs or n not in st.sizes]
        if to_size:
            conn = await self._conn()
            cur = await conn.execute(
                "SELECT datname, pg_database_size(oid) FROM pg_database WHERE datname = ANY(%s)",
                (to_size,),
            )
            st.sizes.update({str(n): int(s) for n, s in await cur.fetchall()})
        st.sizes = {n: s for n, s in st.sizes.items() if n in sample.databases}
        st.last, st.last_mono = sample, mono

        # Each tick reads only the projects something happened to (a database active or
        # changed, a record changed, an endpoint running, transfer); every project, at the
        # first tick and then every _READ_ALL_S as a safety net (e.g. a new billing period).
        read_all = st.latest is None or mono - st.read_all_at >= _READ_ALL_S
        sent, self._transfer = self._transfer, defaultdict(int)
        async with self._store.tx() as tx:
            marked, st.watermark = await tx.changed_since(st.watermark)
            if st.latest is None:
                st.latest = {b.project_id: b for b in await tx.latest(UsageHourRecord, None)}
            if read_all:
                projects = {p.id: p for p in await tx.list(ProjectRecord)}
                databases = await tx.list(DatabaseRecord)
                branches = await tx.list(BranchRecord)
                endpoints = await tx.list(EndpointRecord)
                snapshots = await tx.list(SnapshotRecord)
                st.places = {d.physical: d.project_id for d in databases}
                st.read_all_at = mono
                gone = set(st.latest) - set(projects)
                wanted = set(projects)
            else:
                touched = active_dbs | changed_dbs
                touched |= {n for n in written if n.startswith(_PROJECT_DATABASES)}
                if unknown := [n for n in touched if n not in st.places]:
                    st.places.update(await tx.projects_of_databases(unknown))
                wanted = marked | set(sent) | await tx.active_projects()
                wanted |= {st.places[n] for n in touched if n in st.places}
                ids = sorted(wanted)
                projects = {p.id: p for p in await tx.ids(ProjectRecord, ids)}
                databases = await tx.list_in(DatabaseRecord, ids)
                branches = await tx.list_in(BranchRecord, ids)
                endpoints = await tx.list_in(EndpointRecord, ids)
                snapshots = await tx.list_in(SnapshotRecord, ids)
                gone = wanted - set(projects)
            if gone:
                await tx.forget_changes(sorted(gone))
        for project_id in gone:
            st.latest.pop(project_id, None)
        ticks: dict[str, _ProjectTick] = defaultdict(_ProjectTick)
        branch_dbs: dict[str, list[str]] = defaultdict(list)
        for d in databases:
            branch_dbs[d.branch_id].append(d.physical)
            if d.physical in written:
                ticks[d.project_id].written += round(written[d.physical])
        for project_id, size in sent.items():
            ticks[project_id].transfer += size
        for b in branches:
            size = sum(st.sizes.get(phys, 0) for phys in branch_dbs[b.id])
            tick = ticks[b.project_id]
            tick.sizes["logical"] = tick.sizes.get("logical", 0) + size
            kind = "root" if b.parent_id is None else "child"
            tick.sizes[kind] = tick.sizes.get(kind, 0) + size
            if branch_dbs[b.id] and size != b.logical_size:
                tick.branches[b.id] = size
        for s in snapshots:
            tick = ticks[s.project_id]
            tick.sizes["snapshot"] = tick.sizes.get("snapshot", 0) + (s.full_size or 0)
        for e in endpoints:
            busy = any(phys in active_dbs for phys in branch_dbs[e.branch_id])
            seconds, changed = _run_endpoint(e, busy=busy, elapsed=elapsed, current=current)
            tick = ticks[e.project_id]
            tick.active_s += seconds
            tick.compute_s += seconds * e.autoscaling_limit_min_cu
            if changed is not None:
                tick.endpoints[e.id] = (e, changed)
        due: list[tuple[ProjectRecord, _ProjectTick]] = []
        for project_id, tick in sorted(ticks.items()):
            if project_id not in projects:
                continue
            sizes = {k: tick.sizes.get(k, 0) for k in ("logical", "root", "child", "snapshot")}
            sizes["synthetic"] = sizes["logical"] + sizes["snapshot"]
            tick.sizes = sizes
            latest = st.latest.get(project_id)
            if not (
                tick.active_s
                or tick.written
                or tick.transfer
                or tick.endpoints
                or tick.branches
                or latest is None
                or latest.last_sizes != sizes
            ):
                continue
            due.append((projects[project_id], tick))
        # A few projects per transaction: one commit (one WAL flush) per batch rather than per
        # project, while each batch holds its projects' locks only briefly. Locks are taken in
        # project id order, as a transfer takes them, so the two never deadlock.
        due.sort(key=lambda item: item[0].id)
        for first in range(0, len(due), _RECORD_BATCH):
            async with self._store.tx() as tx:
                for project, tick in due[first : first + _RECORD_BATCH]:
                    await tx.lock(project.id)
                    await self._record_tick(tx, project, tick, current)
        return None if read_all else wanted

    async def _record_tick(
        self, tx: Tx, p: ProjectRecord, tick: _ProjectTick, current: datetime
    ) -> None:
        """Writes one project's tick; the caller holds the project's lock in `tx`."""
        st = self._usage
        assert st.latest is not None  # noqa: S101 - loaded by _measure
        hour = hour_of(current)
        if await tx.get(ProjectRecord, p.id) is None:
            return  # deleted meanwhile
        for endpoint_id, (seen, changed) in tick.endpoints.items():
            fresh = await tx.get(EndpointRecord, endpoint_id)
            # An API call may have changed it since it was read: then the API call wins.
            if (
                fresh is not None
                and fresh.updated_at == seen.updated_at
                and fresh.current_state == seen.current_state
                and fresh.auto_suspended == seen.auto_suspended
            ):
                fresh.current_state = changed.current_state
                fresh.last_active = changed.last_active
                fresh.started_at = changed.started_at
                fresh.suspended_at = changed.suspended_at
                fresh.auto_suspended = changed.auto_suspended
                await tx.put(fresh)
        for branch_id, size in tick.branches.items():
            b = await tx.get(BranchRecord, branch_id)
            if b is not None:
                b.logical_size = size
                await tx.put(b)
        bucket = await tx.get(UsageHourRecord, bucket_id(p.id, hour))
        if bucket is None:
            previous = st.latest.get(p.id)
            carried = previous.last_sizes if previous is not None else {}
            bucket = UsageHourRecord(
                id=bucket_id(p.id, hour),
                project_id=p.id,
                created_at=hour,
                sizes=dict(carried),
            )
        bucket.active_time_s += tick.active_s
        bucket.compute_time_s += tick.compute_s
        bucket.written_data_bytes += tick.written
        bucket.data_transfer_bytes += tick.transfer
        bucket.sizes = {k: max(v, bucket.sizes.get(k, 0)) for k, v in tick.sizes.items()}
        bucket.last_sizes = dict(tick.sizes)
        bucket.updated_at = current
        await tx.put(bucket)
        st.latest[p.id] = bucket

    # --- the size watch ------------------------------------------------------------------------

    async def watch(self, interval_s: float) -> None:
        """Calls `watch_sizes()` and `watch_disk()` (with `min_free_disk_mb`) every
        `interval_s` until cancelled."""
        failing = False
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.watch_sizes()
                await self.watch_disk(self.min_free_disk_mb * 1024 * 1024)
            except psycopg.OperationalError as error:
                # The server is down (being restarted): said once, tried again every round.
                if not failing:
                    log.warning("localplane.watch_failed", error=type(error).__name__)
                failing = True
                continue
            except Exception:
                log.exception("localplane.watch_failed")
            failing = False

    async def _watch_conn(self) -> AsyncConnection[Any]:
        return await self._own_conn(self._watch)

    async def _refresh_watch(self) -> None:
        async with self._store.tx() as tx:
            projects = await tx.list(ProjectRecord)
            branches = await tx.list(BranchRecord)
            databases = await tx.list(DatabaseRecord)
        w = self._watch
        w.places = {d.physical: (d.project_id, d.branch_id) for d in databases}
        w.branch_databases = defaultdict(list)
        for d in databases:
            w.branch_databases[d.branch_id].append(d.physical)
        w.size_limits = {
            p.id: limit for p in projects if (limit := p.quota.get("logical_size_bytes"))
        }
        w.read_only = {b.id for b in branches if b.read_only}
        w.measured = {b: m for b, m in w.measured.items() if b in w.branch_databases}
        w.refreshed = time.monotonic()

    async def watch_sizes(self) -> list[str]:
        """Makes read-only, at once, every branch with a statement running that is past its
        logical-size quota; returns their ids."""
        conn = await self._watch_conn()
        cur = await conn.execute(_ACTIVE_TENANT_BACKENDS, (_DEPRIORITISE_AFTER_S,))
        backends = await cur.fetchall()
        active = {str(r[0]) for r in backends}
        if not active:
            return []
        w = self._watch
        running_long = [
            (str(db), int(pid), started) for db, pid, started, long, _ in backends if long
        ]
        await self._deprioritise(
            [
                (int(pid), started, _LONG_NICE if long else _ACTIVE_NICE)
                for _, pid, started, long, _ in backends
            ]
        )
        await self._stop_read_only_writers(
            [(str(db), int(pid)) for db, pid, _, _, writes in backends if writes]
        )
        await self._cap_memory([(db, pid) for db, pid, _ in running_long])
        age = time.monotonic() - w.refreshed
        if age > _WATCH_REFRESH_MAX_S or (age > _WATCH_REFRESH_MIN_S and active - w.places.keys()):
            await self._refresh_watch()
        due: dict[str, tuple[str, int]] = {}  # branch -> project, limit
        for project_id, branch_id in sorted({w.places[d] for d in active if d in w.places}):
            limit = w.size_limits.get(project_id)
            if limit is None or branch_id in w.read_only:
                continue
            last_size, last_at = w.measured.get(branch_id, (0, -math.inf))
            if last_size + _MAX_WRITE_RATE * (time.monotonic() - last_at) >= limit:
                due[branch_id] = (project_id, limit)  # else: cannot have reached it yet
        over: list[tuple[str, str, int, int]] = []
        if due:
            # One round trip for every branch due, whatever their number.
            names = [d for b in due for d in w.branch_databases.get(b, [])]
            cur = await conn.execute(_SIZES_OF, (names,))
            sizes = {str(name): int(size) for name, size in await cur.fetchall()}
            for branch_id, (project_id, limit) in due.items():
                size = sum(sizes.get(d, 0) for d in w.branch_databases.get(branch_id, []))
                w.measured[branch_id] = (size, time.monotonic())
                if size > limit:
                    over.append((project_id, branch_id, size, limit))
        await self._stop_writes(over)
        return [branch_id for _, branch_id, _, _ in over]

    async def _stop_writes(self, over: list[tuple[str, str, int, int]]) -> None:
        """Makes each (project, branch, size, limit) of `over` read-only now."""
        w = self._watch
        if over:
            # The databases turn read-only and the statements writing end (rolling back what
            # they wrote) first: the bookkeeping below may wait for a meter tick, and they
            # would write on meanwhile. `_enforce` then finds them as it wants them.
            conn = await self._watch_conn()
            names = [d for _, b, _, _ in over for d in w.branch_databases.get(b, [])]
            for name in names:
                with contextlib.suppress(psycopg.errors.InvalidCatalogName):  # dropped meanwhile
                    await conn.execute(
                        sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
                            sql.Identifier(name)
                        )
                    )
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = ANY(%s) AND usename <> current_user",
                (names,),
            )
        for project_id, branch_id, size, limit in over:
            async with self._usage.lock, self._store.tx(project_id) as tx:
                branch = await tx.get(BranchRecord, branch_id)
                if branch is None:
                    continue
                branch.logical_size = size
                await tx.put(branch)
            async with self._usage.lock:
                await self._enforce({project_id})
            w.read_only.add(branch_id)
            log.warning(
                "localplane.size_quota_reached",
                project_id=project_id,
                branch_id=branch_id,
                logical_size=size,
                limit=limit,
            )

    async def _stop_read_only_writers(self, writing: list[tuple[str, int]]) -> list[int]:
        """Ends each (database, pid) backend that writes in a database made read-only (its
        branch is past its size quota, or the disk is nearly full): a role may lift
        `default_transaction_read_only` for its own session, and this takes the write back
        (the statement rolls back with its connection). A backend that only writes temporary
        tables is ended too: they take disk as well. Returns the pids ended."""
        w = self._watch
        ended = [
            pid
            for database, pid in writing
            if database in w.places and (w.disk_low or w.places[database][1] in w.read_only)
        ]
        if ended:
            conn = await self._watch_conn()
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid = ANY(%s) AND usename <> current_user",
                (ended,),
            )
            log.warning("localplane.read_only_write_stopped", backends=len(ended))
        return ended

    async def _deprioritise(self, backends: list[tuple[int, datetime, int]]) -> None:
        """Gives each (pid, backend_start, nice) tenant backend that lower CPU priority (and
        its scheduling group, `_lower_autogroup`) and the lowest best-effort I/O level: under
        contention the plane's statements, then other tenants' short ones, run first; on an
        idle machine they all run at full speed. Once lowered, a backend keeps it for its life
        (raising it back needs privileges). Only on this machine's own cluster, and only
        PostgreSQL processes."""
        w = self._watch
        if not backends or not w.may_deprioritise or await self._data_dir() is None:
            return
        seen: dict[tuple[int, datetime], int] = {}
        for pid, started, nice in backends:
            key = (pid, started)
            if w.deprioritised.get(key, 0) >= nice:
                seen[key] = w.deprioritised[key]
                continue
            try:
                process = psutil.Process(pid)
                if process.name() != "postgres":
                    continue
                process.nice(nice)
                process.ionice(psutil.IOPRIO_CLASS_BE, 7)
                _lower_autogroup(pid, nice)
            except (psutil.NoSuchProcess, ProcessLookupError):
                continue
            except (psutil.AccessDenied, OSError) as error:
                w.may_deprioritise = False
                log.warning("localplane.deprioritise_unavailable", error=str(error))
                return
            seen[key] = nice
        w.deprioritised = seen

    async def _cap_memory(self, backends: list[tuple[str, int]]) -> list[int]:
        """Ends each (database, pid) backend whose private memory (resident, less what it
        shares: PostgreSQL's shared buffers) is past `backend_memory_max_mb`; returns their
        pids. Only on this machine's own cluster, and only PostgreSQL processes."""
        limit = self.backend_memory_max_mb * 2**20
        if not backends or limit <= 0 or await self._data_dir() is None:
            return []
        ended = []
        for database, pid in backends:
            try:
                process = psutil.Process(pid)
                if process.name() != "postgres":
                    continue
                memory = process.memory_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            private = memory.rss - memory.shared
            if private <= limit:
                continue
            conn = await self._watch_conn()
            await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            ended.append(pid)
            log.warning(
                "localplane.backend_memory_exceeded",
                database=database,
                pid=pid,
                private_mb=private // 2**20,
                limit_mb=self.backend_memory_max_mb,
            )
        return ended

    async def _data_dir(self) -> Path | None:
        """The cluster's data directory, if it is on this machine (not an external server)."""
        w = self._watch
        if not w.data_dir_known:
            conn = await self._watch_conn()
            row = await (await conn.execute("SELECT current_setting('data_directory')")).fetchone()
            path = Path(str(row[0])) if row else None
            w.data_dir = path if path is not None and path.is_dir() else None
            w.data_dir_known = True
        return w.data_dir

    async def watch_disk(self, min_free_bytes: int) -> bool:
        """Makes every project database read-only while the data directory's disk has less
        than `min_free_bytes` free, and writable again once it has 25 % more; returns whether
        writes are stopped."""
        path = await self._data_dir()
        if path is None:
            return False
        w = self._watch
        free = shutil.disk_usage(path).free
        low = free < (min_free_bytes * _DISK_RESUME_FACTOR if w.disk_low else min_free_bytes)
        if low != w.disk_low:
            w.disk_low = low
            log.warning("localplane.disk_low" if low else "localplane.disk_ok", free_bytes=free)
            async with self._usage.lock:
                await self._apply_read_only(None)
            w.disk_low_applied = low
        elif low:
            # Databases created since (a new project, a branch) are stopped too.
            if time.monotonic() - w.refreshed > _WATCH_REFRESH_MAX_S:
                await self._refresh_watch()
            conn = await self._watch_conn()
            actual = {str(r[0]) for r in await (await conn.execute(_READ_ONLY)).fetchall()}
            if set(w.places) - actual:
                async with self._usage.lock:
                    await self._apply_read_only(None)
        return low

    @property
    def disk_low(self) -> bool:
        """Whether project databases are read-only because the disk is nearly full (set once
        they are)."""
        return self._watch.disk_low_applied

    # --- quotas --------------------------------------------------------------------------------

    async def enforce_quotas(self, project_id: str) -> None:
        """Applies the project's quotas now (after its settings changed)."""
        self._watch.refreshed = -math.inf  # the size watch re-reads the quotas
        async with self._usage.lock:
            await self._enforce({project_id})

    async def _enforce(self, only: set[str] | None) -> None:
        """Applies the quotas of every project, or of the projects in `only` (reading only
        their records: a project PATCH must not cost more with more projects)."""
        async with self._store.tx() as tx:
            if only is None:
                projects = await tx.list(ProjectRecord)
                branches = await tx.list(BranchRecord)
                endpoints = await tx.list(EndpointRecord)
            else:
                ids = sorted(only)
                projects = await tx.ids(ProjectRecord, ids)
                branches = await tx.list_in(BranchRecord, ids)
                endpoints = await tx.list_in(EndpointRecord, ids)
            watched = [p for p in projects if p.quota or p.quota_exceeded]
            totals = await exact_totals(tx, [p.id for p in watched])
            blocked = {p.id for p in watched if p.quota_exceeded}
            # Computes that came up on a blocked project (a new branch's, a preview's) are
            # suspended with the others at the next measurement.
            open_on_blocked = {
                e.project_id for e in endpoints if e.project_id in blocked and not e.door_closed
            }
        for p in watched:
            reason = quota_breach(p, totals[p.id])
            if reason != p.quota_exceeded or (reason and p.id in open_on_blocked):
                with contextlib.suppress(NotFound):  # deleted meanwhile
                    await self._set_quota_block(p.id, reason)
        by_id = {p.id: p for p in projects}
        for b in branches:
            owner = by_id.get(b.project_id)
            if owner is None:
                continue
            limit = owner.quota.get("logical_size_bytes")
            over = limit is not None and (b.logical_size or 0) > limit
            if over != b.read_only:
                async with self._store.tx(b.project_id) as tx:
                    fresh = await tx.get(BranchRecord, b.id)
                    if fresh is not None:
                        fresh.read_only = over
                        await tx.put(fresh)
                log.info("localplane.branch_read_only", branch_id=b.id, read_only=over)
        await self._apply_read_only(None if only is None else [p.id for p in projects])

    async def _set_quota_block(self, project_id: str, reason: str | None) -> None:
        """Suspends every endpoint of the project (reason set) or reopens them (None)."""
        async with self._mutation(project_id, check_idle=False) as m:
            p = await self._project(m.tx, project_id)
            p.quota_exceeded = reason
            await m.tx.put(p)
            ops = []
            for e in await m.tx.list(EndpointRecord, project_id):
                if reason is not None and not e.door_closed:
                    e.current_state, e.suspended_at, e.auto_suspended = "idle", now(), False
                    action = "suspend_compute"
                elif reason is None and e.door_closed and not e.disabled:
                    # Reopened but idle, as after Neon's auto-suspend: activity wakes it.
                    e.auto_suspended = True
                    action = "apply_config"
                else:
                    continue
                e.updated_at = now()
                await m.tx.put(e)
                for d in await self._databases(m.tx, project_id, e.branch_id):
                    m.steps.append(step.Connections(d.physical, allowed=reason is None))
                ops.append(
                    OperationRecord.new(project_id, action, branch_id=e.branch_id, endpoint_id=e.id)
                )
            if ops:
                await m.start(ops, "steps", project_id=project_id, steps=m.steps)
        log.info("localplane.quota", project_id=project_id, exceeded=reason is not None)

    async def _apply_read_only(self, project_ids: Sequence[str] | None) -> None:
        """Makes the databases of read-only branches (and only those) default to read-only
        transactions, of every project or of `project_ids`; ends their client sessions so
        that the change reaches them."""
        async with self._store.tx() as tx:
            if project_ids is None:
                branches = await tx.list(BranchRecord)
                databases = await tx.list(DatabaseRecord)
            else:
                branches = await tx.list_in(BranchRecord, project_ids)
                databases = await tx.list_in(DatabaseRecord, project_ids)
        read_only = {b.id for b in branches if b.read_only}
        wanted = {d.physical for d in databases if d.branch_id in read_only or self._watch.disk_low}
        conn = await self._conn()
        cur = await conn.execute(_READ_ONLY)
        actual = {str(r[0]) for r in await cur.fetchall()}
        actual = {n for n in actual if n.startswith(_PROJECT_DATABASES)}
        if project_ids is not None:
            actual &= {d.physical for d in databases}
        for name in sorted(wanted ^ actual):
            on = name in wanted
            template = "ALTER DATABASE {} SET default_transaction_read_only = on"
            if not on:
                template = "ALTER DATABASE {} RESET default_transaction_read_only"
            exists = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if await exists.fetchone() is None:
                continue
            await conn.execute(sql.SQL(template).format(sql.Identifier(name)))
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND usename <> current_user",
                (name,),
            )

    # --- consumption history -------------------------------------------------------------------

    async def consumption(
        self,
        *,
        org_id: str | None,
        project_ids: Sequence[str],
        start: datetime,
        end: datetime,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[tuple[ProjectRecord, list[HourUsage]]], str | None]:
        """Projects (newest first, paged by `cursor` = last project id) with their hours in
        [start, end); the routes group them into timeframes."""
        async with self._store.tx() as tx:
            projects = await tx.list(ProjectRecord)
            if org_id is not None:
                projects = [p for p in projects if p.org_id == org_id]
            if project_ids:
                projects = [p for p in projects if p.id in set(project_ids)]
            projects.reverse()
            if cursor:
                ids = [p.id for p in projects]
                projects = projects[ids.index(cursor) + 1 :] if cursor in ids else []
            page = projects[:limit]
            ids = [p.id for p in page]
            buckets: dict[str, list[UsageHourRecord]] = defaultdict(list)
            for b in await tx.list_since(UsageHourRecord, ids, start):
                buckets[b.project_id].append(b)
            before = {b.project_id: b for b in await tx.latest(UsageHourRecord, ids, before=start)}
        rows = [(p, hours_of(p, buckets[p.id], before.get(p.id), start, end)) for p in page]
        return rows, page[-1].id if page else cursor


def _run_endpoint(
    e: EndpointRecord, *, busy: bool, elapsed: float, current: datetime
) -> tuple[float, EndpointRecord | None]:
    """Seconds the endpoint ran in the tick, and its new record if the tick changed it."""
    if e.disabled or e.door_closed or e.current_state == "init":
        return 0.0, None
    if busy:
        changed = e.model_copy()
        changed.last_active = current
        if e.current_state != "active":
            changed.current_state, changed.started_at, changed.auto_suspended = (
                "active",
                current,
                False,
            )
        return elapsed, changed
    if e.current_state != "active":
        return 0.0, None
    seconds = elapsed
    if e.started_at is not None:
        seconds = min(seconds, max(0.0, (current - e.started_at).total_seconds()))
    timeout = e.suspend_timeout_seconds or DEFAULT_SUSPEND_S
    if timeout < 0:
        return seconds, None
    since = max(x for x in (e.last_active, e.started_at, e.created_at) if x is not None)
    until = since + timedelta(seconds=timeout)
    if current < until:
        return seconds, None
    changed = e.model_copy()
    changed.current_state, changed.suspended_at, changed.auto_suspended = "idle", until, True
    overrun = (current - until).total_seconds()
    return max(0.0, seconds - overrun), changed
