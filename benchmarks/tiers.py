"""Benchmark of tier changes, the local plane's meter and usage polling, on the embedded PostgreSQL.

Measures, in one run on a fresh temporary data dir (unless `--data-dir`), with PostgreSQL, the
local plane, agentdb's runtime (its background jobs running, as `agentdb serve` runs them) and
the REST API in process (httpx through `ASGITransport`, no socket). The tiers come from a TOML
file written into the data dir: `free` (organization org-bench-free, 0.25-0.5 CU, 1 GiB logical
size, 10,000 sessions per user) and `pro` (org-bench-pro, 0.5-2 CU, 10 GiB, 100 h of active
time); the plane starts with both organizations.

1. Sessions: `--sessions` (401: two transfer requests of at most 400) sessions of one `free`
   user, created through `runtime.sessions.create`, 4 at a time. Wall time, sessions/s, and
   each create's time (project, compute, role, database, root snapshot, meta rows).
2. The upgrade: `POST /v1/users/{id}/tier {"tier": "pro"}` (202), then `GET` of its `Location`
   every 20 ms until the change is `finished`. Reported: the client's wall time (POST sent to
   `finished` seen), the change's own `created_at` -> `finished_at`, and the split, from the
   control-plane requests the runtime's Neon client made (its transport notes each request's
   wall-clock start and end): the transfer phase is `created_at` -> the first project PATCH's
   start (the job's wake-up, reading the sessions, the transfer requests and their records);
   the patch phase is that PATCH's start -> `finished_at` (per session: PATCH the project's
   quota, compute defaults and history retention, list its computes, PATCH each compute; each
   PATCH's operations polled until finished; 8 sessions at a time). Then every session's
   project must be listed in org-bench-pro (`iter_projects(org_id=...)`), none in
   org-bench-free, the meta DB must show every session in `pro`, and a few projects and
   computes must carry the pro quota and CU range: the run fails loudly otherwise. Then, with
   nothing else running, `--meter-repeat` times: one project's PATCH as the change sends it,
   and the local plane's quota check that each project PATCH runs (`enforce_quotas`, which
   holds the meter's lock and reads that project's records).
3. The meter, with all N projects present: `plane.meter()` (its background interval is set
   huge, so only these calls tick). One catch-up tick (everything since the plane started),
   one settling tick, then `--meter-repeat` (5) times: an `INSERT` of one row in `--active`
   (50) sessions' databases through `runtime.sql.run` (8 at a time), a tick right after it
   (active), and two more with no activity in between (idle: nothing changed in the
   databases; endpoints stay "running" for their suspend timeout and are billed). The written
   bytes of the active projects must grow.
4. The usage poll: `runtime.usage.poll(force=True)` over the N sessions (per organization,
   100 projects per request, the legacy and the v2 consumption history each): wall time,
   requests, samples written; then `runtime.usage.user_usage(user_id)`, the report over all N
   sessions (`--meter-repeat` times).
5. The naive way of moving a project to another organization, on `--naive` (5) of the
   sessions after `--rows` (10,000) rows were put in each (~1.4 MiB of table): `pg_dump -Fc`
   of the database through its connection URI (the project's own role, as a customer would),
   a new project in org-bench-pro with the pro tier's settings (operations waited for),
   `pg_restore --no-owner --no-acl` into it through its URI, and deleting the old project.
   The copy's row count is checked; untimed, the copy is deleted and the session marked
   deleted (its project is gone). Run last, so steps 3 and 4 see all N sessions intact.
   Compared per project with the upgrade's time per session.

All Neon clients poll operations every 20 ms (as `NeonClient.for_app`, agentdb's local mode,
does) and skip Neon's client-side rate limits (700 requests/min, 40/s, and 30 consumption
requests/min): they would queue the bursts measured here behind the client, which says nothing
about agentdb's or the plane's cost; the table says how long Neon's consumption limit would
add to the poll. The runtime's reconcile and expiry jobs are set to hourly so that they do not
run inside the measurements (the `tier_changes` job, which shares the reconcile interval, is
started by the POST, as in production). The table is printed as markdown; the raw samples go
to benchmarks/results/tiers.json.

Run: `.venv/bin/python benchmarks/tiers.py [--sessions N] [--naive N] [--rows N] [--active K]
[--meter-repeat N] [--data-dir DIR]`; while developing, `--sessions 30 --naive 2`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import httpx
import psycopg
import sqlalchemy as sa
from _common import (
    JSON,
    BenchmarkError,
    Stats,
    machine_facts,
    markdown_table,
    mebibytes,
    quiet_logs,
    seconds,
    server_version,
)
from localplane import run_tool
from pydantic import SecretStr
from sqlmodel import col

from agentdb.api import create_app
from agentdb.localplane import LocalPlane, running
from agentdb.localplane import create_app as create_localplane
from agentdb.neon import DefaultEndpointSettings, NeonClient, ProjectSettings
from agentdb.neon._client import LOCAL_APP_URL
from agentdb.pg import ServerInfo, open_server
from agentdb.runtime import Runtime, open_runtime
from agentdb.settings import Settings
from meta_schema import AgentSession, TierChangeStatus

RESULTS = Path(__file__).parent / "results" / "tiers.json"
FREE_ORG, PRO_ORG = "org-bench-free", "org-bench-pro"
GIB = 2**30
PRO_ACTIVE_TIME_S = 360_000
PRO_MIN_CU, PRO_MAX_CU = 0.5, 2.0
TIERS_TOML = f"""\
default = "free"

[tiers.free]
org_id = "{FREE_ORG}"
compute_min_cu = 0.25
compute_max_cu = 0.5
logical_size_bytes = {GIB}
max_sessions_per_user = 10000

[tiers.pro]
org_id = "{PRO_ORG}"
compute_min_cu = {PRO_MIN_CU}
compute_max_cu = {PRO_MAX_CU}
logical_size_bytes = {10 * GIB}
active_time_seconds = {PRO_ACTIVE_TIME_S}
"""
#: How often `NeonClient.for_app` (agentdb's local mode) polls operations.
LOCAL_POLL_S = 0.02
#: The meter's background interval: never, within a run.
METER_OFF_S = 10.0**7
#: The reconcile and expiry jobs' interval: not within a run.
JOBS_OFF_S = 3600.0
CREATE_CONCURRENCY = 4
SQL_CONCURRENCY = 8
CHANGE_POLL_S = 0.02
CHANGE_TIMEOUT_S = 900.0
#: Neon's limit on consumption requests, which agentdb's client keeps on Neon cloud.
NEON_CONSUMPTION_PER_MIN = 30
#: Projects and computes whose settings are checked one by one after the upgrade.
SPOT_CHECKS = 5
T = TypeVar("T")


# --- the control plane's requests, as the runtime's client made them ------------------------


@dataclass(frozen=True)
class Request:
    """One control-plane request: wall-clock start and end (comparable with the meta DB's
    timestamps), method, path under /api/v2 and status."""

    start: float
    end: float
    method: str
    path: str
    status: int

    @property
    def took(self) -> float:
        return self.end - self.start


KINDS: dict[str, tuple[str, re.Pattern[str]]] = {
    "transfer": ("POST", re.compile(r"^/organizations/[^/]+/projects/transfer$")),
    "project_patch": ("PATCH", re.compile(r"^/projects/[^/]+$")),
    "endpoint_list": ("GET", re.compile(r"^/projects/[^/]+/endpoints$")),
    "endpoint_patch": ("PATCH", re.compile(r"^/projects/[^/]+/endpoints/[^/]+$")),
    "operation_poll": ("GET", re.compile(r"/operations/[^/]+$")),
    "consumption": ("GET", re.compile(r"^/consumption_history/")),
}


def kind_of(request: Request) -> str:
    for kind, (method, pattern) in KINDS.items():
        if request.method == method and pattern.search(request.path):
            return kind
    return "other"


class RecordingTransport(httpx.AsyncBaseTransport):
    """Notes every request that passes. The ASGI transport answers with the body read, so its
    return is the request's end."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self.requests: list[Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.time()
        response = await self._inner.handle_async_request(request)
        path = request.url.path.removeprefix("/api/v2")
        self.requests.append(
            Request(started, time.time(), request.method, path, response.status_code)
        )
        return response

    def between(self, start: float, end: float) -> list[Request]:
        return [r for r in self.requests if start <= r.start <= end]

    async def aclose(self) -> None:
        await self._inner.aclose()


def plane_client(recorder: RecordingTransport) -> NeonClient:
    """A client of the in-process plane without Neon's client-side limits (module docstring)."""
    return NeonClient(
        LOCAL_APP_URL,
        api_key="bench",
        transport=recorder,
        operation_poll_interval=LOCAL_POLL_S,
        rate_limit_per_min=10**9,
        burst_per_s=None,
        consumption_rate_per_min=10**9,
    )


def counts(requests: Sequence[Request]) -> dict[str, int]:
    found = dict.fromkeys([*KINDS, "other"], 0)
    for request in requests:
        found[kind_of(request)] += 1
    return found


# --- helpers -----------------------------------------------------------------------------------


@dataclass
class Bench:
    runtime: Runtime
    plane: LocalPlane
    server: ServerInfo
    http: httpx.AsyncClient
    admin: dict[str, str]
    recorder: RecordingTransport
    user_id: uuid.UUID
    workdir: Path


def expect(resp: httpx.Response, status: int) -> JSON:
    if resp.status_code != status:
        raise BenchmarkError(
            f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text}"
        )
    body: JSON = resp.json()
    return body


async def bounded(limit: int, items: Sequence[T], work: Callable[[T], Awaitable[float]]) -> Stats:
    """Runs `work` on every item, `limit` at a time; the seconds each took. An error fails
    the run."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> float:
        async with gate:
            started = time.perf_counter()
            await work(item)
            return time.perf_counter() - started

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(item)) for item in items]
    return Stats(tuple(task.result() for task in tasks))


async def session_projects(b: Bench) -> list[tuple[uuid.UUID, str, str | None, str]]:
    """(session id, project id, organization, tier) of the user's sessions, oldest first."""
    async with b.runtime.meta() as db:
        rows = await db.execute(
            sa.select(
                col(AgentSession.id),
                col(AgentSession.project_id),
                col(AgentSession.org_id),
                col(AgentSession.tier),
            )
            .where(col(AgentSession.user_id) == b.user_id)
            .order_by(col(AgentSession.created_at))
        )
        return [(sid, str(pid), org, tier) for sid, pid, org, tier in rows.all()]


def when(text: str | None) -> float:
    if text is None:
        raise BenchmarkError("the tier change has no finished_at")
    return datetime.fromisoformat(text).timestamp()


# --- 1. sessions ---------------------------------------------------------------------------------


@dataclass
class Creates:
    sessions: list[uuid.UUID]
    each: Stats
    wall_s: float


async def bench_creates(b: Bench, count: int) -> Creates:
    print(f"sessions: creating {count} free-tier sessions, {CREATE_CONCURRENCY} at a time...")
    created: list[uuid.UUID] = []

    async def create(n: int) -> None:
        view = await b.runtime.sessions.create(b.user_id, name=f"tiers bench {n}")
        created.append(view.id)
        if len(created) % 50 == 0:
            print(f"  {len(created)} created", flush=True)

    started = time.perf_counter()
    each = await bounded(CREATE_CONCURRENCY, range(count), create)
    wall = time.perf_counter() - started
    rows = await session_projects(b)
    if len(rows) != count or any(org != FREE_ORG or tier != "free" for _, _, org, tier in rows):
        raise BenchmarkError(f"expected {count} free sessions in {FREE_ORG}, found {rows[:3]}...")
    return Creates([sid for sid, *_ in rows], each, wall)


# --- 2. the upgrade ----------------------------------------------------------------------------


@dataclass
class Upgrade:
    sessions: int
    post_s: float
    client_wall_s: float
    server_wall_s: float
    transfer_phase_s: float
    patch_phase_s: float
    transfer_requests: int  # as the change recorded them
    attempts: int
    requests: dict[str, int]
    transfer_request_s: Stats
    project_patch_s: Stats
    endpoint_patch_s: Stats
    patch_alone_s: Stats
    enforce_s: Stats
    change: JSON = field(repr=False)

    @property
    def per_session_s(self) -> float:
        return self.server_wall_s / self.sessions

    @property
    def transfer_per_project_s(self) -> float:
        return self.transfer_phase_s / self.sessions


async def bench_upgrade(b: Bench, count: int, repeat: int) -> Upgrade:
    print(f"upgrade: POST /v1/users/{{id}}/tier pro, {count} sessions to move...", flush=True)
    started_wall, started = time.time(), time.perf_counter()
    resp = await b.http.post(f"/v1/users/{b.user_id}/tier", json={"tier": "pro"}, headers=b.admin)
    post_s = time.perf_counter() - started
    change = expect(resp, 202)
    location = resp.headers["Location"]
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    while change["status"] != TierChangeStatus.FINISHED:
        if change["status"] == TierChangeStatus.FAILED or time.monotonic() > deadline:
            raise BenchmarkError(f"the tier change did not finish: {change}")
        await asyncio.sleep(CHANGE_POLL_S)
        change = expect(await b.http.get(location, headers=b.admin), 200)
    client_wall = time.perf_counter() - started
    created, finished = when(change["created_at"]), when(change["finished_at"])
    requests = [
        r for r in b.recorder.between(started_wall, time.time()) if not r.path.startswith("/users")
    ]
    by_kind = counts(requests)
    patches = [r for r in requests if kind_of(r) == "project_patch"]
    first_patch = min((r.start for r in patches), default=finished)
    if change["sessions_moved"] != count or change["sessions_updated"] != count:
        raise BenchmarkError(f"the change moved or updated too few sessions: {change}")
    if by_kind["transfer"] != change["transfer_requests"]:
        raise BenchmarkError(
            f"{by_kind['transfer']} transfer requests seen, the change says "
            f"{change['transfer_requests']}"
        )
    await verify_upgrade(b, count)
    alone, enforce = await patch_alone(b, repeat)

    def took(kind: str) -> Stats:
        return Stats(tuple(r.took for r in requests if kind_of(r) == kind) or (0.0,))

    return Upgrade(
        sessions=count,
        post_s=post_s,
        client_wall_s=client_wall,
        server_wall_s=finished - created,
        transfer_phase_s=first_patch - created,
        patch_phase_s=finished - first_patch,
        transfer_requests=change["transfer_requests"],
        attempts=change["attempts"],
        requests=by_kind,
        transfer_request_s=took("transfer"),
        project_patch_s=took("project_patch"),
        endpoint_patch_s=took("endpoint_patch"),
        patch_alone_s=alone,
        enforce_s=enforce,
        change=change,
    )


async def verify_upgrade(b: Bench, count: int) -> None:
    """Every project in the pro organization and none left in the free one, every session
    recorded in pro, and a few projects and computes with the pro tier's limits."""
    neon = b.runtime.neon
    rows = await session_projects(b)
    ours = {project_id for _, project_id, _, _ in rows}
    in_pro = {p.id: p async for p in neon.iter_projects(org_id=PRO_ORG)}
    in_free = {p.id async for p in neon.iter_projects(org_id=FREE_ORG)}
    missing, left = ours - set(in_pro), ours & in_free
    if len(ours) != count or missing or left:
        raise BenchmarkError(
            f"after the upgrade, {len(missing)} of {len(ours)} projects are not in {PRO_ORG} "
            f"and {len(left)} are still in {FREE_ORG}"
        )
    wrong = [sid for sid, _, org, tier in rows if org != PRO_ORG or tier != "pro"]
    if wrong:
        raise BenchmarkError(f"{len(wrong)} sessions not recorded in pro: {wrong[:3]}")
    for _, project_id, _, _ in rows[:: max(1, len(rows) // SPOT_CHECKS)][:SPOT_CHECKS]:
        project = await neon.get_project(project_id)
        quota = project.settings.quota if project.settings else None
        if quota is None or quota.active_time_seconds != PRO_ACTIVE_TIME_S:
            raise BenchmarkError(f"project {project_id} lacks the pro quota: {quota}")
        for compute in await neon.list_endpoints(project_id):
            limits = (compute.autoscaling_limit_min_cu, compute.autoscaling_limit_max_cu)
            if limits != (PRO_MIN_CU, PRO_MAX_CU):
                raise BenchmarkError(f"compute {compute.id} has {limits} CU, not the pro range")


async def patch_alone(b: Bench, repeat: int) -> tuple[Stats, Stats]:
    """With every project present and nothing else running: the pro tier's project PATCH, as
    the change sends it (operations waited), `repeat` times on one project; and the local
    plane's quota check that every project PATCH ends with (`LocalPlane.enforce_quotas`)."""
    pro = b.runtime.tiers.find("pro")
    if pro is None:
        raise BenchmarkError("no pro tier")
    project_id = (await session_projects(b))[0][1]
    patches, checks = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        await b.runtime.neon.update_project(
            project_id,
            settings=ProjectSettings(quota=pro.quota_update()),
            history_retention_seconds=pro.history_retention_seconds,
        )
        patches.append(time.perf_counter() - started)
        started = time.perf_counter()
        await b.plane.enforce_quotas(project_id)
        checks.append(time.perf_counter() - started)
    return Stats(tuple(patches)), Stats(tuple(checks))


# --- 3. the meter ------------------------------------------------------------------------------


@dataclass
class Meter:
    projects: int
    active_sessions: int
    catch_up_s: float
    active: Stats
    idle_second: Stats
    idle_third: Stats
    written_before: int
    written_after: int


async def timed_tick(plane: LocalPlane) -> float:
    started = time.perf_counter()
    await plane.meter()
    return time.perf_counter() - started


async def written_bytes(b: Bench, project_ids: Sequence[str]) -> int:
    total = 0
    for project_id in project_ids:
        project = await b.runtime.neon.get_project(project_id)
        total += project.written_data_bytes or 0
    return total


async def bench_meter(b: Bench, sessions: Sequence[uuid.UUID], active: int, repeat: int) -> Meter:
    projects = [p async for p in b.runtime.neon.iter_projects()]
    busy = list(sessions[:active])
    print(f"meter: {len(projects)} projects, {len(busy)} active per round...", flush=True)

    async def make_table(session_id: uuid.UUID) -> None:
        await b.runtime.sql.run(session_id, "CREATE TABLE meter_probe (at timestamptz)")

    async def insert(session_id: uuid.UUID) -> None:
        await b.runtime.sql.run(session_id, "INSERT INTO meter_probe VALUES (now())")

    await bounded(SQL_CONCURRENCY, busy, make_table)
    catch_up = await timed_tick(b.plane)
    await b.plane.meter()  # settles what the catch-up tick left waiting (late statistics)
    rows = {sid: pid for sid, pid, _, _ in await session_projects(b)}
    busy_projects = [rows[sid] for sid in busy]
    before = await written_bytes(b, busy_projects)
    ticks: list[tuple[float, float, float]] = []
    for _ in range(repeat):
        await bounded(SQL_CONCURRENCY, busy, insert)
        ticks.append(
            (
                await timed_tick(b.plane),
                await timed_tick(b.plane),
                await timed_tick(b.plane),
            )
        )
    after = await written_bytes(b, busy_projects)
    if after <= before:
        raise BenchmarkError(f"the meter saw no writes in {len(busy)} active projects")
    return Meter(
        projects=len(projects),
        active_sessions=len(busy),
        catch_up_s=catch_up,
        active=Stats(tuple(t[0] for t in ticks)),
        idle_second=Stats(tuple(t[1] for t in ticks)),
        idle_third=Stats(tuple(t[2] for t in ticks)),
        written_before=before,
        written_after=after,
    )


# --- 4. the usage poll ---------------------------------------------------------------------------


@dataclass
class Usage:
    sessions: int
    wall_s: float
    requests: int
    requests_seen: dict[str, int]
    samples: int
    report: Stats
    report_sessions: int


async def bench_usage(b: Bench, count: int, repeat: int) -> Usage:
    print(f"usage: polling {count} sessions' consumption...", flush=True)
    started_wall, started = time.time(), time.perf_counter()
    result = await b.runtime.usage.poll(force=True)
    wall = time.perf_counter() - started
    seen = counts(b.recorder.between(started_wall, time.time()))
    if result.skipped or result.sessions != count or not result.samples:
        raise BenchmarkError(f"the usage poll fell short: {result}")
    reports, sessions = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        report = await b.runtime.usage.user_usage(b.user_id)
        reports.append(time.perf_counter() - started)
        sessions = report.sessions
    if sessions != count or not report.periods:
        raise BenchmarkError(f"the user's report covers {sessions} sessions, not {count}")
    return Usage(
        sessions=count,
        wall_s=wall,
        requests=result.requests,
        requests_seen=seen,
        samples=result.samples,
        report=Stats(tuple(reports)),
        report_sessions=sessions,
    )


# --- 5. the naive move ---------------------------------------------------------------------------


@dataclass
class Naive:
    rows: int
    database_bytes: int
    dump_bytes: int
    dump: Stats
    create: Stats
    restore: Stats
    delete: Stats

    @property
    def total(self) -> Stats:
        parts = zip(
            self.dump.samples,
            self.create.samples,
            self.restore.samples,
            self.delete.samples,
            strict=True,
        )
        return Stats(tuple(sum(p) for p in parts))


FILL = (
    "CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload text, n int);"
    " INSERT INTO items (payload, n) SELECT md5(g::text) || md5((g * 31)::text)"
    " || md5((g * 97)::text), (g * 7919) % 100000 FROM generate_series(1, {rows}) AS g;"
    " SELECT pg_database_size(current_database())"
)


async def count_rows(uri: str) -> int:
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        row = await (await conn.execute("SELECT count(*) FROM items")).fetchone()
    return int(row[0]) if row else 0


async def bench_naive(b: Bench, sessions: Sequence[uuid.UUID], rows: int) -> Naive:
    print(f"naive: pg_dump + new project + pg_restore + delete, {len(sessions)} sessions...")
    runtime = b.runtime
    pro = runtime.tiers.find("pro")
    if pro is None:
        raise BenchmarkError("no pro tier")
    settings = runtime.settings
    endpoint = pro.endpoint_settings(
        DefaultEndpointSettings(
            autoscaling_limit_min_cu=settings.compute_min_cu,
            autoscaling_limit_max_cu=settings.compute_max_cu,
            suspend_timeout_seconds=settings.compute_suspend_timeout_s,
        )
    )
    projects = {sid: pid for sid, pid, _, _ in await session_projects(b)}
    db_bytes, dump_bytes = 0, 0
    dumps, creates, restores, deletes = [], [], [], []
    await asyncio.to_thread(b.workdir.mkdir, parents=True, exist_ok=True)
    for n, session_id in enumerate(sessions):
        filled = await runtime.sql.run(session_id, FILL.format(rows=int(rows)))
        db_bytes = int(str(filled.rows[0][0]))
        view = await runtime.sessions.get(session_id)
        old_uri = await runtime.sessions.connection_uri(session_id)
        archive = b.workdir / f"naive-{n}.dump"
        started = time.perf_counter()
        await run_tool(b.server, "pg_dump", "-Fc", "-d", old_uri, "-f", str(archive))
        dumped = time.perf_counter()
        copy = await runtime.neon.create_project(
            name=f"naive-move-{n}",
            org_id=PRO_ORG,
            branch_name="main",
            role_name=view.role_name,
            database_name=view.database_name,
            default_endpoint_settings=endpoint,
            settings=pro.project_settings(),
            history_retention_seconds=pro.history_retention_seconds,
        )
        new_uri = copy.connection_uris[0].connection_uri.get_secret_value()
        created = time.perf_counter()
        await run_tool(
            b.server,
            "pg_restore",
            "--no-owner",
            "--no-acl",
            "--exit-on-error",
            "-d",
            new_uri,
            str(archive),
        )
        restored = time.perf_counter()
        await runtime.neon.delete_project(projects[session_id])
        deleted = time.perf_counter()
        dumps.append(dumped - started)
        creates.append(created - dumped)
        restores.append(restored - created)
        deletes.append(deleted - restored)
        dump_bytes = archive.stat().st_size
        archive.unlink()
        if (found := await count_rows(new_uri)) != rows:
            raise BenchmarkError(f"the restored copy has {found} rows, not {rows}")
        await runtime.neon.delete_project(copy.project.id)
        await runtime.sessions.delete(session_id)  # its project is gone: the session too
    await b.plane.drain()
    return Naive(
        rows=rows,
        database_bytes=db_bytes,
        dump_bytes=dump_bytes,
        dump=Stats(tuple(dumps)),
        create=Stats(tuple(creates)),
        restore=Stats(tuple(restores)),
        delete=Stats(tuple(deletes)),
    )


# --- the report ----------------------------------------------------------------------------------


def fmt(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 0.01 else seconds(value)


def row(name: str, stats: Stats, note: str = "") -> list[str]:
    span = f"{fmt(stats.low)} - {fmt(stats.high)}"
    return [name, fmt(stats.median), span, str(len(stats.samples)), note]


def single(name: str, value: str, n: int | str = "", note: str = "") -> list[str]:
    return [name, value, "", str(n), note]


def neon_consumption_wait(requests: int) -> float:
    """The least time `requests` consumption requests take under Neon's 30 a minute."""
    return 60.0 * ((requests - 1) // NEON_CONSUMPTION_PER_MIN) if requests else 0.0


@dataclass
class Results:
    creates: Creates
    upgrade: Upgrade
    meter: Meter
    usage: Usage
    naive: Naive


def report(facts: JSON, results: Results) -> str:
    creates, up, meter, usage, naive = (
        results.creates,
        results.upgrade,
        results.meter,
        results.usage,
        results.naive,
    )
    n = up.sessions
    reqs = up.requests
    rate = n / creates.wall_s
    naive_total = naive.total.median
    rows = [
        single(
            f"sessions: create {n} ({CREATE_CONCURRENCY} at a time), wall",
            seconds(creates.wall_s),
            n,
            f"{rate:.1f} sessions/s",
        ),
        row("sessions: one create", creates.each),
        single("upgrade: POST /tier answered (202)", fmt(up.post_s)),
        single(
            "upgrade: total, client (POST -> finished seen)",
            seconds(up.client_wall_s),
            n,
            f"polled every {CHANGE_POLL_S * 1000:.0f} ms",
        ),
        single(
            "upgrade: total, change created_at -> finished_at",
            seconds(up.server_wall_s),
            n,
            f"attempts {up.attempts}",
        ),
        single(
            "upgrade: transfer phase (created_at -> 1st project PATCH)",
            seconds(up.transfer_phase_s),
            n,
            f"{up.transfer_requests} transfer requests (≤ 400 projects each)",
        ),
        row("upgrade: one transfer request", up.transfer_request_s),
        single(
            "upgrade: patch phase (1st project PATCH -> finished_at)",
            seconds(up.patch_phase_s),
            n,
            f"{reqs['project_patch']} project + {reqs['endpoint_patch']} compute PATCHes, "
            f"{reqs['endpoint_list']} compute lists, {reqs['operation_poll']} operation polls",
        ),
        row("upgrade: one project PATCH request", up.project_patch_s),
        row("upgrade: one compute PATCH request", up.endpoint_patch_s),
        row(f"project PATCH alone, afterwards ({n} projects present)", up.patch_alone_s),
        row("  the quota check every project PATCH runs (enforce_quotas)", up.enforce_s),
        single("upgrade: per session (total / N)", fmt(up.per_session_s)),
        single("upgrade: transfer phase per project", fmt(up.transfer_per_project_s)),
        single("upgrade: verified", f"{n} projects in {PRO_ORG}, 0 in {FREE_ORG}"),
        row(
            f"naive move: pg_dump -Fc ({naive.rows:,} rows, {mebibytes(naive.database_bytes)} db)",
            naive.dump,
            f"{mebibytes(naive.dump_bytes)} file",
        ),
        row("naive move: create project in the target org", naive.create),
        row("naive move: pg_restore into it", naive.restore),
        row("naive move: delete the old project", naive.delete),
        row("naive move: total per project", naive.total),
        single(
            "naive per project / upgrade per session",
            f"{naive_total / up.per_session_s:.0f}x",
        ),
        single(
            "naive per project / transfer phase per project",
            f"{naive_total / up.transfer_per_project_s:.0f}x",
        ),
        single("meter: catch-up tick (all since the plane started)", fmt(meter.catch_up_s)),
        row(
            f"meter: tick after INSERTs in {meter.active_sessions} sessions",
            meter.active,
            f"{meter.projects} projects",
        ),
        row("meter: idle tick (2nd)", meter.idle_second, f"{meter.projects} projects"),
        row("meter: idle tick (3rd)", meter.idle_third, f"{meter.projects} projects"),
        single(
            "meter: written bytes of the active projects",
            f"+{mebibytes(meter.written_after - meter.written_before)}",
        ),
        single(
            f"usage: poll(force=True), {usage.sessions} sessions",
            fmt(usage.wall_s),
            usage.requests,
            f"{usage.requests} requests, {usage.samples} samples; at Neon's "
            f"{NEON_CONSUMPTION_PER_MIN}/min: ≥ {seconds(neon_consumption_wait(usage.requests))}",
        ),
        row(
            f"usage: user_usage over {usage.report_sessions} sessions",
            usage.report,
        ),
    ]
    headers = ["measurement", "p50 / value", "range", "n", "note"]
    machine = ", ".join(f"{k}: {v}" for k, v in facts.items())
    return f"Machine: {machine}\n\n{markdown_table(headers, rows)}"


def result_json(facts: JSON, args: argparse.Namespace, results: Results) -> JSON:
    creates, up, meter, usage, naive = (
        results.creates,
        results.upgrade,
        results.meter,
        results.usage,
        results.naive,
    )
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": facts,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "sessions": {
            "count": len(creates.sessions),
            "concurrency": CREATE_CONCURRENCY,
            "wall_s": creates.wall_s,
            "per_second": len(creates.sessions) / creates.wall_s,
            "create_s": creates.each.as_json(),
        },
        "upgrade": {
            "post_s": up.post_s,
            "client_wall_s": up.client_wall_s,
            "server_wall_s": up.server_wall_s,
            "transfer_phase_s": up.transfer_phase_s,
            "patch_phase_s": up.patch_phase_s,
            "per_session_s": up.per_session_s,
            "transfer_per_project_s": up.transfer_per_project_s,
            "transfer_requests": up.transfer_requests,
            "attempts": up.attempts,
            "control_plane_requests": up.requests,
            "transfer_request_s": up.transfer_request_s.as_json(),
            "project_patch_s": up.project_patch_s.as_json(),
            "endpoint_patch_s": up.endpoint_patch_s.as_json(),
            "project_patch_alone_s": up.patch_alone_s.as_json(),
            "enforce_quotas_s": up.enforce_s.as_json(),
            "change": up.change,
        },
        "naive": {
            "rows": naive.rows,
            "database_bytes": naive.database_bytes,
            "dump_bytes": naive.dump_bytes,
            "pg_dump_s": naive.dump.as_json(),
            "create_project_s": naive.create.as_json(),
            "pg_restore_s": naive.restore.as_json(),
            "delete_project_s": naive.delete.as_json(),
            "total_s": naive.total.as_json(),
            "ratio_to_upgrade_per_session": naive.total.median / up.per_session_s,
        },
        "meter": {
            "projects": meter.projects,
            "active_sessions": meter.active_sessions,
            "catch_up_tick_s": meter.catch_up_s,
            "active_tick_s": meter.active.as_json(),
            "idle_second_tick_s": meter.idle_second.as_json(),
            "idle_third_tick_s": meter.idle_third.as_json(),
            "written_bytes_before": meter.written_before,
            "written_bytes_after": meter.written_after,
        },
        "usage": {
            "sessions": usage.sessions,
            "poll_s": usage.wall_s,
            "requests": usage.requests,
            "control_plane_requests": usage.requests_seen,
            "samples": usage.samples,
            "user_usage_s": usage.report.as_json(),
        },
    }


# --- main ------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, data_dir: Path) -> tuple[JSON, str, JSON]:
    tiers_file = data_dir / "bench-tiers.toml"
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(tiers_file.write_text, TIERS_TOML, encoding="utf-8")
    settings = Settings(
        data_dir=data_dir,
        admin_token=SecretStr("adb_admin_" + secrets.token_urlsafe(32)),
        meta_database="agentdb_bench",
        project_prefix="bench-",
        tiers_file=tiers_file,
        localplane_meter_interval_s=METER_OFF_S,
        reconcile_interval_s=JOBS_OFF_S,
        expiry_interval_s=JOBS_OFF_S,
    )
    admin_token = settings.admin_token
    assert admin_token is not None  # noqa: S101 - set above
    admin = {"Authorization": f"Bearer {admin_token.get_secret_value()}"}
    recorder_transport: RecordingTransport
    async with open_server(settings) as server:
        plane_app = create_localplane(settings, server=server, organizations=[FREE_ORG, PRO_ORG])
        async with running(plane_app):
            recorder_transport = RecordingTransport(httpx.ASGITransport(app=plane_app))
            async with (
                plane_client(recorder_transport) as neon,
                open_runtime(settings, server=server, neon=neon) as runtime,
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=create_app(runtime)),
                    base_url="http://agentdb",
                    timeout=600,
                ) as http,
            ):
                facts = {
                    **machine_facts(),
                    "postgresql": await server_version(server),
                    "embedded": server.embedded,
                    "client rate limits": "off",
                    "load avg at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                }
                email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
                user = expect(
                    await http.post(
                        "/v1/users", json={"email": email, "tier": "free"}, headers=admin
                    ),
                    201,
                )
                b = Bench(
                    runtime=runtime,
                    plane=plane_app.state.plane,
                    server=server,
                    http=http,
                    admin=admin,
                    recorder=recorder_transport,
                    user_id=uuid.UUID(user["id"]),
                    workdir=data_dir / "bench-dumps",
                )
                creates = await bench_creates(b, args.sessions)
                up = await bench_upgrade(b, args.sessions, args.meter_repeat)
                meter = await bench_meter(b, creates.sessions, args.active, args.meter_repeat)
                usage = await bench_usage(b, args.sessions, args.meter_repeat)
                naive = await bench_naive(b, creates.sessions[-args.naive :], args.rows)
    results = Results(creates, up, meter, usage, naive)
    return facts, report(facts, results), result_json(facts, args, results)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sessions", type=int, default=401, help="sessions to move (401: 2 transfer requests)"
    )
    parser.add_argument("--naive", type=int, default=5, help="projects moved the naive way (5)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows in each (10,000)")
    parser.add_argument("--active", type=int, default=50, help="sessions written per tick (50)")
    parser.add_argument("--meter-repeat", type=int, default=5, help="meter rounds (5)")
    parser.add_argument("--data-dir", type=Path, help="cluster dir (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args()
    if not 1 <= args.naive <= args.sessions or not 1 <= args.active <= args.sessions:
        parser.error("--naive and --active must be between 1 and --sessions")
    if args.rows < 1 or args.meter_repeat < 1:
        parser.error("--rows and --meter-repeat must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    quiet_logs()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the meta database's migrations
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="agentdb-bench-tiers-"))
    started = time.perf_counter()
    try:
        _facts, table, raw = asyncio.run(bench(args, data_dir))
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print()
    print(table)
    print(f"\nWhole run: {seconds(time.perf_counter() - started)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(raw, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"Raw results: {args.json}")


if __name__ == "__main__":
    main()
