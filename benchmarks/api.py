"""Benchmark of agentdb's REST API over the local control plane, on the embedded PostgreSQL.

Measures, in one run and on one cluster (a fresh temporary data dir unless `--data-dir`), with the
API app and the local plane in process (httpx through `ASGITransport`, no socket):

1. agentdb's own overhead on a checkpoint and on a restore (DESIGN.md: ≤ 10 ms p50). agentdb's
   control-plane client is a `NeonClient` of the local plane whose transport records the start
   and end of every request, and which request belongs to which API call (a context variable,
   so background jobs' requests are left out). Per call, overhead = API wall time - control-plane
   span (the first request's start to the last response's end): auth, idempotency, the meta
   database's intent and result writes, rendering. Beside it, the same operation done straight
   on the local plane with a second `NeonClient`: `create_snapshot` (wait), and
   `restore_snapshot(finalize_restore=True, target_branch_id=live)` + deleting the replaced
   "(old)" branch, as agentdb does. `--repeat` runs each (15), interleaved, on a database of
   `--rows` rows (50,000: ~15 MiB with its catalog). A restore measured here replaces a branch no
   checkpoint was taken from, so agentdb deletes it at once, as the raw run does (one untimed
   restore first moves the checkpoints' own source branch aside).
2. `--sessions` (20) sessions with a small table each (`--session-rows`), each taking
   `--per-session` (3) checkpoints in sequence: first one call at a time, session after session
   (the serial baseline), then all sessions at once. Total wall time, checkpoints per second,
   per-call p50 and p95; every call must answer 201.
3. The naive way on the database of (1): `pg_dump -Fc` to a file, then `CREATE DATABASE` +
   `pg_restore` (`--naive-repeat`, 5).

Both clients poll operations every 20 ms, as `NeonClient.for_app` (agentdb's local mode) does,
but without Neon's client-side rate limits: in local mode agentdb keeps them (700 requests a
minute, 40 a second), and this run's bursts (20 sessions' creates and checkpoints) would queue
for up to a minute on them, which says nothing about agentdb's own cost. `--neon-limits` keeps
them, and reports the time calls queued. Also reported: session creates through the API
(DESIGN.md: ≤ 0.3 s); an authenticated GET of a session, the floor of any call; checkpoints
without an `Idempotency-Key` (every other measured call sends one, as an agent should); the meta
database's statements and commits per call (SQLAlchemy events; commits are counted, not
timed); and, in (2), the event loop's lag and this process's CPU share (everything here shares
one loop). The table is printed as markdown; the raw samples go to
benchmarks/results/api.json.

Run: `.venv/bin/python benchmarks/api.py [--repeat N] [--sessions N] [--per-session N]
[--rows N] [--data-dir DIR]` (`make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import logging
import os
import secrets
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self, TypeVar

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
from litestar import Litestar
from localplane import dump_and_restore, superuser_execute
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from agentdb.api import create_app
from agentdb.localplane import LocalPlane, running
from agentdb.localplane import create_app as create_localplane
from agentdb.neon import NeonClient
from agentdb.neon._client import LOCAL_APP_URL
from agentdb.neon._limits import SlidingWindowLimiter
from agentdb.pg import ServerInfo, open_server
from agentdb.runtime import Runtime, open_runtime
from agentdb.settings import Settings

RESULTS = Path(__file__).parent / "results" / "api.json"
#: How often `NeonClient.for_app` (hence agentdb's local mode) polls operations.
LOCAL_POLL_S = 0.02
OVERHEAD_TARGET_S = 0.010
CREATE_TARGET_S = 0.3
# The live branch's, the role's and the database's names, as agentdb's sessions have them.
LIVE_BRANCH, ROLE, DATABASE = "main", "agent", "app"
T = TypeVar("T")
MAX_STATEMENT = 100  # characters of a meta-database statement kept in the raw results


# --- which control-plane requests each API call made ----------------------------------------


@dataclass
class Call:
    """What one call did: its control-plane requests, the time it queued in the client's rate
    limiters, and its statements and commits on the meta database."""

    requests: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, what
    throttled_s: float = 0.0
    meta_statements: list[tuple[float, float, str]] = field(default_factory=list)  # as requests
    meta_commits: int = 0

    @property
    def span_s(self) -> float:
        if not self.requests:
            return 0.0
        return max(end for _, end, _ in self.requests) - min(s for s, _, _ in self.requests)


#: The call running in this task (context variables follow the API app's handler, which runs
#: in the caller's task under ASGITransport, and not the runtime's background jobs).
CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar("bench_call", default=None)


class RecordingTransport(httpx.AsyncBaseTransport):
    """Wraps a transport; notes each request's start and end in the current `Call`. The ASGI
    transport hands back a response whose body is already read, so its return is the end."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        response = await self._inner.handle_async_request(request)
        call = CURRENT.get()
        if call is not None:
            what = f"{request.method} {request.url.path.removeprefix('/api/v2')}"
            call.requests.append((started, time.perf_counter(), what))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class CountingLimiter(SlidingWindowLimiter):
    """A client rate limiter that adds its waits to the current `Call`."""

    async def acquire(self) -> float:
        waited = await super().acquire()
        call = CURRENT.get()
        if call is not None:
            call.throttled_s += waited
        return waited


def watch_meta(runtime: Runtime) -> None:
    """Notes the meta database's statements (and commits) in the current `Call`. SQLAlchemy
    runs its sync events in a greenlet that shares the caller's context."""
    engine: AsyncEngine = runtime.meta.kw["bind"]
    pending: dict[int, float] = {}

    def before(_conn: object, cursor: object, *_args: object) -> None:
        pending[id(cursor)] = time.perf_counter()

    def after(_conn: object, cursor: object, statement: str, *_args: object) -> None:
        started = pending.pop(id(cursor), None)
        call = CURRENT.get()
        if call is not None and started is not None:
            what = " ".join(statement.split())[:MAX_STATEMENT]
            call.meta_statements.append((started, time.perf_counter(), what))

    def commit(_conn: object) -> None:
        call = CURRENT.get()
        if call is not None:
            call.meta_commits += 1

    sa.event.listen(engine.sync_engine, "before_cursor_execute", before)
    sa.event.listen(engine.sync_engine, "after_cursor_execute", after)
    sa.event.listen(engine.sync_engine, "commit", commit)


def plane_client(app: Litestar, *, limits: bool) -> NeonClient:
    """A client of the in-process local plane through a recording transport, polling as
    `NeonClient.for_app` (agentdb's local mode) does; Neon's rate limits only with `limits`."""
    client = NeonClient(
        LOCAL_APP_URL,
        api_key="bench",
        transport=RecordingTransport(httpx.ASGITransport(app=app)),
        operation_poll_interval=LOCAL_POLL_S,
        **({} if limits else {"rate_limit_per_min": 10**9, "burst_per_s": None}),
    )
    limiters = client._limiters  # noqa: SLF001 - to see the waits, the one benchmark-only hook
    limiters[:] = [CountingLimiter(lim.limit, lim.period) for lim in limiters]
    return client


@dataclass(frozen=True)
class Timed:
    """One measured call: when it ran and what it asked of the control plane."""

    started: float
    ended: float
    call: Call

    @property
    def wall_s(self) -> float:
        return self.ended - self.started

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.call.span_s

    @property
    def before_s(self) -> float:
        """agentdb's work before its first control-plane request (auth, idempotency claim,
        intent written to the meta database)."""
        if not self.call.requests:
            return self.wall_s
        return min(s for s, _, _ in self.call.requests) - self.started

    @property
    def after_s(self) -> float:
        """agentdb's work after the last control-plane answer (result written, rendering)."""
        return self.overhead_s - self.before_s

    @property
    def meta_s(self) -> float:
        """Time in meta-database statements outside the control-plane span (commits, which
        SQLAlchemy's events cannot time, left out)."""
        reqs = self.call.requests
        first = min((s for s, _, _ in reqs), default=self.ended)
        last = max((e for _, e, _ in reqs), default=self.ended)
        return sum(e - s for s, e, _ in self.call.meta_statements if e <= first or s >= last)

    def as_json(self) -> JSON:
        return {
            "wall_s": self.wall_s,
            "control_plane_span_s": self.call.span_s,
            "overhead_s": self.overhead_s,
            "overhead_before_s": self.before_s,
            "overhead_after_s": self.after_s,
            "meta_statements": len(self.call.meta_statements),
            "meta_statements_s": self.meta_s,
            "meta_commits": self.call.meta_commits,
            "throttled_s": self.call.throttled_s,
            "requests": [what for _, _, what in self.call.requests],
            "meta_statements_ms": [
                [round((e - s) * 1000, 2), what] for s, e, what in self.call.meta_statements
            ],
        }


async def timed(work: Awaitable[T]) -> tuple[T, Timed]:
    """Awaits `work` as one measured call."""
    call = Call()
    token = CURRENT.set(call)
    started = time.perf_counter()
    try:
        result = await work
    finally:
        ended = time.perf_counter()
        CURRENT.reset(token)
    return result, Timed(started, ended, call)


class LoopLag:
    """How late a 10 ms sleep wakes up on this event loop while the block runs: the time the
    loop was busy with other work (every component here shares it)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.cpu_share = 0.0  # this process's CPU time over the wall time, 1.0 = one core
        self._task: asyncio.Task[None] | None = None
        self._started = (0.0, 0.0)

    async def __aenter__(self) -> Self:
        self._started = (time.perf_counter(), time.process_time())
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        wall, cpu = self._started
        self.cpu_share = (time.process_time() - cpu) / (time.perf_counter() - wall)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            self.lags.append(time.perf_counter() - started - 0.01)

    def stats(self) -> Stats:
        return Stats(tuple(self.lags) or (0.0,))


# --- the API ---------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expect(resp: httpx.Response, status: int) -> JSON:
    if resp.status_code != status:
        raise BenchmarkError(
            f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text}"
        )
    body: JSON = resp.json()
    return body


@dataclass(frozen=True)
class Session:
    id: str
    uri: str
    agent: dict[str, str]  # the session token's header: what an agent checkpoints with


@dataclass
class Api:
    http: httpx.AsyncClient
    user: dict[str, str]  # a user token's header: what the platform opens sessions with

    async def create_session(self, name: str) -> tuple[Session, Timed]:
        resp, took = await timed(
            self.http.post(
                "/v1/sessions",
                json={"name": name},
                headers={**self.user, "Idempotency-Key": str(uuid.uuid4())},
            )
        )
        body = expect(resp, 201)
        token = expect(
            await self.http.post(f"/v1/sessions/{body['id']}/tokens", json={}, headers=self.user),
            201,
        )
        return Session(body["id"], body["connection_uri"], bearer(token["token"])), took

    async def get(self, session: Session) -> Timed:
        resp, took = await timed(self.http.get(f"/v1/sessions/{session.id}", headers=session.agent))
        expect(resp, 200)
        return took

    async def checkpoint(
        self, session: Session, label: str, *, idempotent: bool = True
    ) -> tuple[str, Timed]:
        key = {"Idempotency-Key": str(uuid.uuid4())} if idempotent else {}
        resp, took = await timed(
            self.http.post(
                f"/v1/sessions/{session.id}/checkpoints",
                json={"label": label},
                headers={**session.agent, **key},
            )
        )
        return expect(resp, 201)["id"], took

    async def restore(self, session: Session, checkpoint_id: str) -> Timed:
        resp, took = await timed(
            self.http.post(
                f"/v1/sessions/{session.id}/checkpoints/{checkpoint_id}/restore",
                headers={**session.agent, "Idempotency-Key": str(uuid.uuid4())},
            )
        )
        expect(resp, 200)
        return took

    async def delete_session(self, session: Session) -> None:
        expect(await self.http.delete(f"/v1/sessions/{session.id}", headers=self.user), 200)


async def make_user(http: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    # Enterprise: no session or checkpoint limits to get in the way of the measurements.
    body = {"email": email, "tier": "enterprise"}
    user = expect(await http.post("/v1/users", json=body, headers=admin), 201)
    token = expect(await http.post(f"/v1/users/{user['id']}/tokens", json={}, headers=admin), 201)
    return bearer(token["token"])


# --- the raw control plane -------------------------------------------------------------------


@dataclass
class RawProject:
    id: str
    live_branch_id: str
    uri: str


async def raw_project(neon: NeonClient, name: str) -> RawProject:
    created = await neon.create_project(
        name=name, branch_name=LIVE_BRANCH, role_name=ROLE, database_name=DATABASE
    )
    return RawProject(
        id=created.project.id,
        live_branch_id=created.branch.id,
        uri=created.connection_uris[0].connection_uri.get_secret_value(),
    )


async def raw_snapshot(neon: NeonClient, project: RawProject, name: str) -> tuple[str, Timed]:
    created, took = await timed(neon.create_snapshot(project.id, project.live_branch_id, name=name))
    return created.snapshot.id, took


async def raw_restore(
    neon: NeonClient, project: RawProject, snapshot_id: str, *, drop_old: bool = True
) -> Timed:
    """A finalized restore onto the live branch, then (as agentdb does when no checkpoint was
    taken from it) deleting the replaced one."""
    replaced = project.live_branch_id

    async def restore() -> None:
        restored = await neon.restore_snapshot(
            project.id, snapshot_id, target_branch_id=replaced, finalize_restore=True
        )
        project.live_branch_id = restored.branch.id
        if drop_old:
            await neon.delete_branch(project.id, replaced)

    _, took = await timed(restore())
    return took


# --- the data --------------------------------------------------------------------------------


async def fill(uri: str, rows: int) -> tuple[int, str]:
    """`items` with `rows` rows of ~100 bytes of text, made by the database's own role; returns
    the database's size (`pg_database_size`) and its physical name."""
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, payload text, n int)")
        await conn.execute(
            "INSERT INTO items (payload, n) SELECT md5(g::text) || md5((g * 31)::text)"
            " || md5((g * 97)::text), (g * 7919) %% 100000 FROM generate_series(1, %s) AS g",
            (rows,),
        )
        await conn.execute("VACUUM ANALYZE items")
        cur = await conn.execute("SELECT pg_database_size(current_database()), current_database()")
        row = await cur.fetchone()
    if row is None:
        raise BenchmarkError("pg_database_size returned no row")
    return int(row[0]), str(row[1])


# --- the measurements ------------------------------------------------------------------------


@dataclass
class Bench:
    api: Api
    raw: NeonClient
    plane: LocalPlane
    server: ServerInfo


@dataclass
class SingleResult:
    rows: int
    db_bytes: int
    session: Session  # the checkpointed one, kept for pg_dump, deleted at the end
    database: str  # its physical database
    api_checkpoint: list[Timed]
    raw_checkpoint: list[Timed]
    api_restore: list[Timed]
    raw_restore: list[Timed]
    api_get: list[Timed]
    api_checkpoint_no_key: list[Timed]  # without an Idempotency-Key


async def bench_single(b: Bench, rows: int, repeat: int) -> SingleResult:
    """Checkpoints of one session and restores of another, each beside the same operation
    straight on the plane (two raw projects), interleaved; every run alternates which of API
    and raw goes first."""
    print(f"single calls: {rows:,} rows in 2 sessions and 2 raw projects...", flush=True)
    ckpt_session, _ = await b.api.create_session("bench checkpoints")
    restore_session, _ = await b.api.create_session("bench restores")
    ckpt_project = await raw_project(b.raw, "bench-raw-checkpoints")
    restore_project = await raw_project(b.raw, "bench-raw-restores")
    db_bytes, database = await fill(ckpt_session.uri, rows)
    for uri in (restore_session.uri, ckpt_project.uri, restore_project.uri):
        await fill(uri, rows)
    await superuser_execute(b.server, "CHECKPOINT")  # the first snapshot must not pay the fill
    # The restores' targets, then one untimed restore each: the branch those checkpoints were
    # taken from is kept aside, and every timed restore replaces one that can be deleted.
    target, _ = await b.api.checkpoint(restore_session, "restore target")
    snapshot, _ = await raw_snapshot(b.raw, restore_project, "restore target")
    await b.api.restore(restore_session, target)
    await raw_restore(b.raw, restore_project, snapshot, drop_old=False)
    await b.plane.drain()

    result = SingleResult(rows, db_bytes, ckpt_session, database, [], [], [], [], [], [])
    print(f"single calls: {repeat} checkpoints and restores each way...", flush=True)
    for run in range(repeat):
        result.api_get.append(await b.api.get(ckpt_session))
        _, took = await b.api.checkpoint(ckpt_session, f"no key {run}", idempotent=False)
        result.api_checkpoint_no_key.append(took)
        await b.plane.drain()
        api_first = run % 2 == 0
        for api_turn in (api_first, not api_first):
            if api_turn:
                _, took = await b.api.checkpoint(ckpt_session, f"bench {run}")
                result.api_checkpoint.append(took)
            else:
                _, took = await raw_snapshot(b.raw, ckpt_project, f"bench {run}")
                result.raw_checkpoint.append(took)
            await b.plane.drain()
        for api_turn in (api_first, not api_first):
            if api_turn:
                result.api_restore.append(await b.api.restore(restore_session, target))
            else:
                result.raw_restore.append(await raw_restore(b.raw, restore_project, snapshot))
            await b.plane.drain()
    for took in result.api_restore:
        if not any(what.startswith("DELETE /projects/") for _, _, what in took.call.requests):
            raise BenchmarkError(f"an API restore kept the replaced branch: {took.as_json()}")
    await b.api.delete_session(restore_session)
    for project in (ckpt_project, restore_project):
        await b.raw.delete_project(project.id)
    return result


@dataclass
class ManyResult:
    sessions: int
    per_session: int
    rows: int
    creates: list[Timed]
    serial: list[Timed]
    serial_wall_s: float
    concurrent: list[Timed]
    concurrent_wall_s: float
    serial_lag: LoopLag
    concurrent_lag: LoopLag


async def bench_many(b: Bench, sessions: int, per_session: int, rows: int) -> ManyResult:
    print(f"concurrency: creating {sessions} sessions of {rows:,} rows...", flush=True)
    opened, creates = [], []
    for n in range(sessions):
        session, took = await b.api.create_session(f"bench concurrent {n}")
        opened.append(session)
        creates.append(took)
        await fill(session.uri, rows)
    await superuser_execute(b.server, "CHECKPOINT")
    await b.plane.drain()

    print(f"concurrency: {sessions} x {per_session} checkpoints, one at a time...", flush=True)
    serial: list[Timed] = []
    async with LoopLag() as serial_lag:
        started = time.perf_counter()
        for session in opened:
            for i in range(per_session):
                _, took = await b.api.checkpoint(session, f"serial {i}")
                serial.append(took)
        serial_wall = time.perf_counter() - started
    await b.plane.drain()

    async def one_session(session: Session) -> list[Timed]:
        return [(await b.api.checkpoint(session, f"concurrent {i}"))[1] for i in range(per_session)]

    print(f"concurrency: {sessions} x {per_session} checkpoints, all at once...", flush=True)
    async with LoopLag() as concurrent_lag:
        started = time.perf_counter()
        # A failed call raises (expect: 201), which cancels the others and fails the run.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one_session(s)) for s in opened]
        concurrent_wall = time.perf_counter() - started
    concurrent = [took for task in tasks for took in task.result()]
    if len(concurrent) != sessions * per_session:
        raise BenchmarkError(f"{len(concurrent)} checkpoints, not {sessions * per_session}")
    await b.plane.drain()
    for session in opened:
        await b.api.delete_session(session)
    return ManyResult(
        sessions=sessions,
        per_session=per_session,
        rows=rows,
        creates=creates,
        serial=serial,
        serial_wall_s=serial_wall,
        concurrent=concurrent,
        concurrent_wall_s=concurrent_wall,
        serial_lag=serial_lag,
        concurrent_lag=concurrent_lag,
    )


@dataclass
class NaiveResult:
    pg_dump: Stats
    pg_restore: Stats
    dump_bytes: int

    @property
    def total(self) -> Stats:
        pairs = zip(self.pg_dump.samples, self.pg_restore.samples, strict=True)
        return Stats(tuple(d + r for d, r in pairs))


async def bench_naive(b: Bench, database: str, repeat: int, workdir: Path) -> NaiveResult:
    print(f"naive: {repeat} pg_dump -Fc + pg_restore...", flush=True)
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    dumps, restores, dump_bytes = [], [], 0
    for run in range(repeat):
        dump_s, restore_s, dump_bytes = await dump_and_restore(b.server, database, workdir, run)
        dumps.append(dump_s)
        restores.append(restore_s)
    shutil.rmtree(workdir, ignore_errors=True)
    return NaiveResult(Stats(tuple(dumps)), Stats(tuple(restores)), dump_bytes)


# --- the report ------------------------------------------------------------------------------


def p95(stats: Stats) -> float:
    if len(stats.samples) < 2:
        return stats.high
    return statistics.quantiles(stats.samples, n=100, method="inclusive")[94]


def fmt(value: float) -> str:
    """Like `seconds`, with a decimal under 10 ms, where the overhead target lives."""
    return f"{value * 1000:.1f} ms" if value < 0.01 else seconds(value)


def walls(runs: Sequence[Timed]) -> Stats:
    return Stats(tuple(t.wall_s for t in runs))


def overheads(runs: Sequence[Timed]) -> Stats:
    return Stats(tuple(t.overhead_s for t in runs))


def verdict(value: float, limit: float) -> str:
    return "yes" if value <= limit else "**no**"


def row(name: str, stats: Stats, limit: float | None = None) -> list[str]:
    target, met = ("", "") if limit is None else (f"≤ {fmt(limit)}", verdict(stats.median, limit))
    span = f"{fmt(stats.low)} - {fmt(stats.high)}"
    return [name, fmt(stats.median), fmt(p95(stats)), span, str(len(stats.samples)), target, met]


def single(name: str, value: str, n: int | str = "") -> list[str]:
    return [name, value, "", "", str(n), "", ""]


def split(runs: Sequence[Timed]) -> str:
    before = statistics.median(t.before_s for t in runs)
    after = statistics.median(t.after_s for t in runs)
    return f"{fmt(before)} before, {fmt(after)} after"


def lag_label(phase: str, lag: LoopLag) -> str:
    return f"{phase}: event loop lag (process CPU {lag.cpu_share:.0%} of a core)"


def throttled(runs: Sequence[Timed]) -> float:
    return sum(t.call.throttled_s for t in runs)


def meta_work(runs: Sequence[Timed]) -> str:
    statements = statistics.median(len(t.call.meta_statements) for t in runs)
    commits = statistics.median(t.call.meta_commits for t in runs)
    took = statistics.median(t.meta_s for t in runs)
    return f"{statements:g} statements ({fmt(took)}), {commits:g} commits"


def requests_per_call(runs: Sequence[Timed]) -> str:
    counts = [len(t.call.requests) for t in runs]
    return f"{statistics.median(counts):g} (min {min(counts)}, max {max(counts)})"


def report(
    facts: JSON, one: SingleResult, many: ManyResult, naive: NaiveResult, *, limits: bool
) -> str:
    api_ckpt, raw_ckpt = walls(one.api_checkpoint), walls(one.raw_checkpoint)
    api_rest, raw_rest = walls(one.api_restore), walls(one.raw_restore)
    count = len(many.concurrent)
    serial_rate = len(many.serial) / many.serial_wall_s
    concurrent_rate = count / many.concurrent_wall_s
    db = f"{one.rows:,} rows, {mebibytes(one.db_bytes)}"
    shape = f"{many.sessions} x {many.per_session}"
    target = OVERHEAD_TARGET_S
    rows = [
        row("session create, API (one at a time)", walls(many.creates), CREATE_TARGET_S),
        row("session create: agentdb overhead", overheads(many.creates)),
        row("GET session, API (auth + 1 read: any call's floor)", walls(one.api_get)),
        row(f"checkpoint, API ({db})", api_ckpt),
        row("checkpoint, raw plane (create_snapshot, wait)", raw_ckpt),
        row(
            "checkpoint: agentdb overhead (API - plane span)", overheads(one.api_checkpoint), target
        ),
        single("checkpoint overhead: before 1st request / after last", split(one.api_checkpoint)),
        single("checkpoint: meta DB work per API call", meta_work(one.api_checkpoint)),
        row("checkpoint without Idempotency-Key: overhead", overheads(one.api_checkpoint_no_key)),
        single("checkpoint: plane requests per API call", requests_per_call(one.api_checkpoint)),
        row("restore, API", api_rest),
        row('restore, raw plane (restore finalize + delete "(old)")', raw_rest),
        row("restore: agentdb overhead (API - plane span)", overheads(one.api_restore), target),
        single("restore overhead: before 1st request / after last", split(one.api_restore)),
        single("restore: meta DB work per API call", meta_work(one.api_restore)),
        single("restore: plane requests per API call", requests_per_call(one.api_restore)),
        row(f"checkpoint, serial ({shape}, one call at a time), per call", walls(many.serial)),
        row("serial: agentdb overhead", overheads(many.serial)),
        single("serial: total wall", seconds(many.serial_wall_s), len(many.serial)),
        single("serial: throughput", f"{serial_rate:.1f} checkpoints/s"),
        row(lag_label("serial", many.serial_lag), many.serial_lag.stats()),
        row(f"checkpoint, {many.sessions} sessions at once, per call", walls(many.concurrent)),
        row("concurrent: agentdb overhead", overheads(many.concurrent)),
        single("concurrent overhead: before 1st request / after last", split(many.concurrent)),
        single("concurrent: meta DB work per API call", meta_work(many.concurrent)),
        single("concurrent: total wall", seconds(many.concurrent_wall_s), count),
        single(
            "concurrent: throughput",
            f"{concurrent_rate:.1f} checkpoints/s ({concurrent_rate / serial_rate:.1f}x serial)",
        ),
        row(lag_label("concurrent", many.concurrent_lag), many.concurrent_lag.stats()),
    ]
    if limits:
        rows += [
            single("serial: queued in client rate limits (sum)", fmt(throttled(many.serial))),
            single("concurrent: queued in rate limits (sum)", fmt(throttled(many.concurrent))),
        ]
    rows += [
        row(f"pg_dump -Fc ({mebibytes(naive.dump_bytes)} file)", naive.pg_dump),
        row("CREATE DATABASE + pg_restore", naive.pg_restore),
        row("naive total (dump + restore)", naive.total),
        single("naive / API checkpoint", f"{naive.total.median / api_ckpt.median:.1f}x"),
        single("naive / API restore", f"{naive.total.median / api_rest.median:.1f}x"),
    ]
    headers = ["measurement", "p50", "p95", "range", "n", "target", "met"]
    machine = ", ".join(f"{k}: {v}" for k, v in facts.items())
    return f"Machine: {machine}\n\n{markdown_table(headers, rows)}"


def result_json(facts: JSON, one: SingleResult, many: ManyResult, naive: NaiveResult) -> JSON:
    def runs(items: Sequence[Timed]) -> JSON:
        return {
            "wall_s": walls(items).as_json(),
            "overhead_s": overheads(items).as_json(),
            "overhead_before_s": Stats(tuple(t.before_s for t in items)).as_json(),
            "overhead_after_s": Stats(tuple(t.after_s for t in items)).as_json(),
            "calls": [t.as_json() for t in items],
        }

    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": facts,
        "single": {
            "rows": one.rows,
            "database_bytes": one.db_bytes,
            "api_checkpoint": runs(one.api_checkpoint),
            "raw_checkpoint": runs(one.raw_checkpoint),
            "api_restore": runs(one.api_restore),
            "raw_restore": runs(one.raw_restore),
            "api_get_session": runs(one.api_get),
            "api_checkpoint_without_idempotency_key": runs(one.api_checkpoint_no_key),
        },
        "concurrency": {
            "sessions": many.sessions,
            "per_session": many.per_session,
            "rows": many.rows,
            "session_create": runs(many.creates),
            "serial": runs(many.serial),
            "serial_wall_s": many.serial_wall_s,
            "concurrent": runs(many.concurrent),
            "concurrent_wall_s": many.concurrent_wall_s,
            "serial_loop_lag_s": many.serial_lag.stats().as_json(),
            "serial_process_cpu_share": many.serial_lag.cpu_share,
            "concurrent_loop_lag_s": many.concurrent_lag.stats().as_json(),
            "concurrent_process_cpu_share": many.concurrent_lag.cpu_share,
        },
        "naive": {
            "dump_bytes": naive.dump_bytes,
            "pg_dump_s": naive.pg_dump.as_json(),
            "pg_restore_s": naive.pg_restore.as_json(),
            "total_s": naive.total.as_json(),
        },
        "targets_s": {"overhead": OVERHEAD_TARGET_S, "session_create": CREATE_TARGET_S},
    }


# --- main ------------------------------------------------------------------------------------


@asynccontextmanager
async def opened(settings: Settings, server: ServerInfo, *, limits: bool) -> AsyncIterator[Bench]:
    """The local plane, agentdb's runtime over it (background jobs running, as `agentdb serve`
    runs them), the API app and a raw client of the plane."""
    plane_app = create_localplane(settings, server=server)
    async with (
        running(plane_app),
        plane_client(plane_app, limits=limits) as neon,
        plane_client(plane_app, limits=limits) as raw,
        open_runtime(settings, server=server, neon=neon) as runtime,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(runtime)),
            base_url="http://agentdb",
            timeout=600,
        ) as http,
    ):
        watch_meta(runtime)
        admin = settings.admin_token
        assert admin is not None  # noqa: S101 - set by bench()
        user = await make_user(http, bearer(admin.get_secret_value()))
        plane: LocalPlane = plane_app.state.plane
        yield Bench(api=Api(http, user), raw=raw, plane=plane, server=server)


async def bench(
    args: argparse.Namespace, data_dir: Path
) -> tuple[JSON, SingleResult, ManyResult, NaiveResult]:
    settings = Settings(
        data_dir=data_dir,
        admin_token=SecretStr("adb_admin_" + secrets.token_urlsafe(32)),
        meta_database="agentdb_bench",
        project_prefix="bench-",
    )
    async with (
        open_server(settings) as server,
        opened(settings, server, limits=args.neon_limits) as b,
    ):
        facts = {
            **machine_facts(),
            "postgresql": await server_version(server),
            "embedded": server.embedded,
            "client rate limits": "Neon's (700/min, 40/s)" if args.neon_limits else "off",
            "load avg at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        one = await bench_single(b, args.rows, args.repeat)
        many = await bench_many(b, args.sessions, args.per_session, args.session_rows)
        naive = await bench_naive(b, one.database, args.naive_repeat, data_dir / "bench-dumps")
        await b.api.delete_session(one.session)
    return facts, one, many, naive


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="single calls each way (15)")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions (20)")
    parser.add_argument("--per-session", type=int, default=3, help="checkpoints each (3)")
    parser.add_argument("--rows", type=int, default=50_000, help="rows for single calls")
    parser.add_argument("--session-rows", type=int, default=2_000, help="rows per session (2000)")
    parser.add_argument("--naive-repeat", type=int, default=5, help="pg_dump + pg_restore runs")
    parser.add_argument(
        "--neon-limits",
        action="store_true",
        help="keep Neon's client-side rate limits (700/min, 40/s), as agentdb's local mode does",
    )
    parser.add_argument("--data-dir", type=Path, help="cluster dir (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    quiet_logs()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the meta database's migrations
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="agentdb-bench-api-"))
    try:
        facts, one, many, naive = asyncio.run(bench(args, data_dir))
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print()
    print(report(facts, one, many, naive, limits=args.neon_limits))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(result_json(facts, one, many, naive), indent=2) + "\n", encoding="utf-8"
    )
    print(f"\nRaw results: {args.json}")


if __name__ == "__main__":
    main()
