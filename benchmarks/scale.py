"""Benchmark of one machine holding many sessions, through `agentdb serve` over real HTTP:
session create one at a time and 8 at a time (cold, and from a warm pool), the disk an idle
session costs, agentdb's and PostgreSQL's CPU while the fleet is idle (with `GET` latency
meanwhile), checkpoints of random sessions 8 at a time, and deleting every session until the
disk is back where it started.

One run on a fresh temporary data dir: the embedded PostgreSQL, then `agentdb serve` as a child
process on it, with a tiers file of two uncapped tiers: `cold` (no warm pool: every create makes
its project) and `warm` (a pool of 8 ready projects); one user of each, driven with the admin
token (no rate limit by default); computes suspend after 60 s idle. Idle CPU is measured twice:
right after the creates (computes up) and once every compute has suspended. Warm creates are
timed with the pool full: one at a time, each after the pool refilled, then 8 at once.
Issue 16's full run is 5,000 sessions; `--sessions` sets the count (each costs about 15 MB of
disk on ext4: a live database and the root checkpoint's copy).

Usage: `.venv/bin/python benchmarks/scale.py [--sessions 200] [--idle 60] [--json out.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self

import httpx
import psutil
import psycopg
from _common import (
    ADMIN,
    Served,
    bearer,
    expect,
    fill_mebibytes,
    machine_facts,
    markdown_table,
    mebibytes,
    physical_names,
    served,
)
from localplane import dump_and_restore
from psycopg.conninfo import make_conninfo

AT_ONCE = 8
# Computes suspend after a minute idle (Neon's default is 5), so that the idle fleet's figure
# comes without a 5-minute wait.
SUSPEND_S = 60
TIERS = f"""
default = "cold"

[tiers.cold]
suspend_timeout_s = {SUSPEND_S}

[tiers.warm]
warm_pool_size = {AT_ONCE}
suspend_timeout_s = {SUSPEND_S}
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def spread(values: list[float], high: float = 95) -> str:
    return f"p50 {ms(percentile(values, 50))}, p{high:g} {ms(percentile(values, high))}"


def versus(after: int, before: int) -> str:
    return f"{mebibytes(after)} vs {mebibytes(before)}"


def disk_usage(path: Path, *, only: str | None = None) -> int:
    """Bytes of the files under `path`; with `only`, under its directories of that name
    (`base`: the databases, `pg_wal`: the write-ahead log)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        if only is not None and only not in Path(root).parts:
            continue
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size  # noqa: PTH118
            except OSError:
                continue
    return total


async def postmaster(superuser_dsn: str) -> psutil.Process:
    async with await psycopg.AsyncConnection.connect(superuser_dsn) as su:
        row = await (await su.execute("SELECT pg_backend_pid()")).fetchone()
        assert row is not None  # noqa: S101
        # While the connection is open: its backend exits with it.
        parent = psutil.Process(int(row[0])).parent()
    assert parent is not None  # noqa: S101
    return parent


async def timed_each(
    count: int, at_once: int, call: Callable[[], Awaitable[object]]
) -> tuple[list[float], float]:
    """Each call's time, and the whole batch's wall time, `at_once` in flight."""
    took: list[float] = []
    slots = asyncio.Semaphore(at_once)

    async def one() -> None:
        async with slots:
            started = time.perf_counter()
            await call()
            took.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return took, time.perf_counter() - started


async def ready_in_pool(server: Served) -> int:
    """The warm pool's ready projects, read from agentdb's meta database."""
    meta = make_conninfo(server.superuser_dsn, dbname="agentdb_meta")
    async with await psycopg.AsyncConnection.connect(meta, autocommit=True) as conn:
        row = await (
            await conn.execute("SELECT count(*) FROM warm_projects WHERE ready")
        ).fetchone()
        return int(row[0]) if row is not None else 0


async def tenant_databases(server: Served) -> int:
    """The cluster's project databases: live, snapshot and trash (`lp[dsx]_`)."""
    async with await psycopg.AsyncConnection.connect(server.superuser_dsn) as su:
        cur = await su.execute("SELECT count(*) FROM pg_database WHERE datname ~ '^lp[dsx]_'")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def pool_full(server: Served) -> None:
    deadline = time.monotonic() + 300
    while await ready_in_pool(server) < AT_ONCE:
        if time.monotonic() > deadline:
            raise RuntimeError("the warm pool did not fill in 300 s")
        await asyncio.sleep(0.1)


async def idle_phase(
    http: httpx.AsyncClient, server: Served, ids: list[str], seconds: float
) -> tuple[float, list[float]]:
    """CPU seconds agentdb and PostgreSQL used over `seconds` while only a `GET` of a random
    session ran every 100 ms, and those GETs' times."""
    admin = bearer(ADMIN)
    pg = await postmaster(server.superuser_dsn)
    processes = [server.process, pg, *pg.children()]
    cpu_before = {p.pid: sum(p.cpu_times()[:2]) for p in processes}
    gets: list[float] = []
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        sid = random.choice(ids)  # noqa: S311
        started = time.perf_counter()
        expect(await http.get(f"/v1/sessions/{sid}", headers=admin), 200)
        gets.append(time.perf_counter() - started)
        await asyncio.sleep(0.1)
    used = 0.0
    for p in [server.process, pg, *pg.children()]:
        try:
            used += sum(p.cpu_times()[:2]) - cpu_before.get(p.pid, 0.0)
        except psutil.NoSuchProcess:
            continue
    return used, gets


async def computes_suspended(server: Served, within: float = 600) -> tuple[float, int]:
    """Waits until the local plane has suspended every compute, for up to `within` seconds;
    returns the seconds waited and how many are still active (with the client backends of
    their databases printed to stderr, to tell why)."""
    state = make_conninfo(server.superuser_dsn, dbname="agentdb_localplane")
    started = time.monotonic()
    active = -1
    while active != 0 and time.monotonic() - started < within:
        if active > 0:
            await asyncio.sleep(2)
        async with await psycopg.AsyncConnection.connect(state, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM lp_resources"
                " WHERE kind = 'endpoint' AND data->>'current_state' = 'active'"
            )
            row = await cur.fetchone()
        active = 0 if row is None else int(row[0])
    if active:
        async with await psycopg.AsyncConnection.connect(
            server.superuser_dsn, autocommit=True
        ) as conn:
            cur = await conn.execute(
                "SELECT datname, usename, application_name, state, count(*)"
                " FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND datname LIKE 'lpd%' GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC LIMIT 20"
            )
            for found in await cur.fetchall():
                print("still connected:", *found, file=sys.stderr)
    return time.monotonic() - started, active


class Watch:
    """Loops that keep calling a session while a checkpoint or restore runs: `/sql` through
    agentdb and a query on a direct connection (reconnecting after a failure), each keeping
    its calls' (end time, ok) to report the longest gap between two answers and the failures."""

    def __init__(self, http: httpx.AsyncClient, sid: str, uri: str, agent: dict[str, str]) -> None:
        self._http, self._sid, self._uri, self._agent = http, sid, uri, agent
        self.calls: dict[str, list[tuple[float, bool]]] = {"agentdb": [], "direct": []}
        self.errors: dict[str, set[str]] = {"agentdb": set(), "direct": set()}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        self._tasks = [
            asyncio.create_task(loop()) for loop in (self._through_agentdb, self._direct)
        ]
        await asyncio.sleep(0.2)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.sleep(0.2)
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _through_agentdb(self) -> None:
        while not self._stop.is_set():
            answer = await self._http.post(
                f"/v1/sessions/{self._sid}/sql", json={"sql": "SELECT 1"}, headers=self._agent
            )
            self.calls["agentdb"].append((time.perf_counter(), answer.status_code == 200))
            if answer.status_code != 200:
                self.errors["agentdb"].add(f"{answer.status_code} {answer.text[:200]}")
            await asyncio.sleep(0.005)

    async def _direct(self) -> None:
        conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        while not self._stop.is_set():
            ok = True
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(
                        self._uri, autocommit=True, connect_timeout=10
                    )
                await conn.execute("SELECT 1")
            except psycopg.Error as error:
                ok, conn = False, None
                self.errors["direct"].add(str(error).splitlines()[0][:200])
            self.calls["direct"].append((time.perf_counter(), ok))
            await asyncio.sleep(0.005)
        if conn is not None:
            await conn.close()

    def outage(self, path: str) -> tuple[float, int]:
        """The longest gap between two answers on `path`, and its failed calls."""
        calls = self.calls[path]
        ends = [end for end, ok in calls if ok]
        gaps = [b - a for a, b in itertools.pairwise(ends)]
        return max(gaps, default=0.0), sum(not ok for _, ok in calls)


async def sizes_phase(
    http: httpx.AsyncClient, server: Served, data_dir: Path, sizes: list[int]
) -> list[list[str]]:
    """At each size: checkpoints and a restore through the API while a session's clients keep
    calling (longest gap and failed calls, through agentdb and direct), beside `pg_dump -Fc`
    and `CREATE DATABASE` + `pg_restore` of the same database."""
    admin = bearer(ADMIN)
    user = expect(
        await http.post("/v1/users", json={"email": "z@x.dev", "tier": "cold"}, headers=admin), 201
    )
    owner = bearer(
        expect(await http.post(f"/v1/users/{user['id']}/tokens", json={}, headers=admin), 201)[
            "token"
        ]
    )
    rows: list[list[str]] = []
    for size in sizes:
        made = expect(await http.post("/v1/sessions", json={}, headers=owner), 201)
        sid, uri = made["id"], made["connection_uri"]
        agent = bearer(
            expect(await http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=owner), 201)[
                "token"
            ]
        )
        actual = await fill_mebibytes(uri, size)
        runs = 3 if size < 1024 else 2
        took: list[float] = []
        first = ""
        async with Watch(http, sid, uri, agent) as cp_watch:
            for n in range(runs):
                started = time.perf_counter()
                done = expect(
                    await http.post(
                        f"/v1/sessions/{sid}/checkpoints", json={"label": f"s{n}"}, headers=owner
                    ),
                    201,
                )
                took.append(time.perf_counter() - started)
                first = first or done["id"]
                await asyncio.sleep(0.5)
        async with Watch(http, sid, uri, agent) as rs_watch:
            started = time.perf_counter()
            expect(
                await http.post(
                    f"/v1/sessions/{sid}/checkpoints/{first}/restore", json={}, headers=owner
                ),
                200,
            )
            restore_s = time.perf_counter() - started
        for watch in (cp_watch, rs_watch):
            for path, seen in watch.errors.items():
                for error in sorted(seen):
                    print(f"{mebibytes(actual)} {path}: {error}", file=sys.stderr)
        _, database = await physical_names(uri)
        (data_dir / "dumps").mkdir(exist_ok=True)
        dump_s, pg_restore_s, dump_bytes = await dump_and_restore(
            server.server, str(database), data_dir / "dumps", 0
        )
        label = mebibytes(actual)
        cp_gap, cp_failed = zip(*(cp_watch.outage(p) for p in ("agentdb", "direct")), strict=True)
        rs_gap, rs_failed = zip(*(rs_watch.outage(p) for p in ("agentdb", "direct")), strict=True)
        rows += [
            [
                f"{label}: checkpoint through the API (x{runs}) vs pg_dump -Fc",
                (
                    f"p50 {ms(percentile(took, 50))} vs {ms(dump_s)}"
                    f" ({dump_s / percentile(took, 50):.1f}x; dump {mebibytes(dump_bytes)})"
                ),
            ],
            [
                f"{label}: during them, longest gap / failed calls, through agentdb | direct",
                f"{ms(cp_gap[0])} / {cp_failed[0]} | {ms(cp_gap[1])} / {cp_failed[1]}",
            ],
            [
                f"{label}: restore through the API vs CREATE DATABASE + pg_restore",
                f"{ms(restore_s)} vs {ms(pg_restore_s)} ({pg_restore_s / restore_s:.1f}x)",
            ],
            [
                f"{label}: during it, longest gap / failed calls, through agentdb | direct",
                f"{ms(rs_gap[0])} / {rs_failed[0]} | {ms(rs_gap[1])} / {rs_failed[1]}",
            ],
        ]
        expect(await http.delete(f"/v1/sessions/{sid}", headers=owner), 200)
    return rows


async def warm_creates(http: httpx.AsyncClient, server: Served, ids: list[str]) -> list[list[str]]:
    """Creates of a `warm`-tier user: one at a time (the pool full before each), then 8 at once."""
    admin = bearer(ADMIN)
    user = expect(
        await http.post("/v1/users", json={"email": "w@x.dev", "tier": "warm"}, headers=admin), 201
    )

    async def create() -> None:
        made = expect(
            await http.post("/v1/sessions", json={"user_id": user["id"]}, headers=admin), 201
        )
        ids.append(made["id"])

    one: list[float] = []
    for _ in range(10):
        await pool_full(server)
        took, _ = await timed_each(1, 1, create)
        one += took
    await pool_full(server)
    eight, _ = await timed_each(AT_ONCE, AT_ONCE, create)
    return [
        ["create, 1 at a time, from the warm pool", spread(one)],
        [f"create, {AT_ONCE} at once, from the warm pool", spread(eight)],
    ]


async def run(args: argparse.Namespace, data_dir: Path) -> list[list[str]]:  # noqa: PLR0915
    rows: list[list[str]] = []
    tiers = data_dir / "tiers.toml"
    tiers.write_text(TIERS)
    async with served(data_dir, tiers_file=str(tiers), warm_pool_size="0") as server:
        limits = httpx.Limits(max_connections=AT_ONCE * 2)
        async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as http:
            admin = bearer(ADMIN)
            ids: list[str] = []
            # The warm pool's projects, full, before any session: what is left at the end.
            await pool_full(server)
            pool_databases = await tenant_databases(server)
            if args.sizes:
                rows += await sizes_phase(
                    http, server, data_dir, [int(x) for x in args.sizes.split(",")]
                )
            rows += await warm_creates(http, server, ids)
            user = expect(
                await http.post(
                    "/v1/users", json={"email": "s@x.dev", "tier": "cold"}, headers=admin
                ),
                201,
            )

            async def create() -> None:
                made = expect(
                    await http.post("/v1/sessions", json={"user_id": user["id"]}, headers=admin),
                    201,
                )
                ids.append(made["id"])

            await create()  # the first cold create after start is not timed
            disk_before = disk_usage(data_dir / "pg", only="base")
            wal_before = disk_usage(data_dir / "pg", only="pg_wal")
            one, one_wall = await timed_each(20, 1, create)
            eight, eight_wall = await timed_each(40, AT_ONCE, create)
            gain = (len(eight) / eight_wall) / (len(one) / one_wall)
            rows += [
                [
                    "create, 1 at a time (cold: no pool)",
                    f"p50 {ms(percentile(one, 50))}, p95 {ms(percentile(one, 95))}",
                ],
                [
                    f"create, {AT_ONCE} at a time (cold)",
                    f"{spread(eight)}; throughput {gain:.2f}x of 1 at a time",
                ],
            ]
            rest = max(0, args.sessions - len(ids))
            _, fill_wall = await timed_each(rest, AT_ONCE, create)
            disk_per = (disk_usage(data_dir / "pg", only="base") - disk_before) / max(
                1, len(ids) - 1
            )
            rows += [
                [f"create the rest ({rest})", f"{fill_wall:.1f} s"],
                ["sessions", str(len(ids))],
                [
                    "databases' disk per idle session (live + root checkpoint)",
                    mebibytes(round(disk_per)),
                ],
            ]

            # Idle: nothing but the background work; a GET every 100 ms meanwhile. First with
            # the computes still up (they bill active time until they suspend), then once every
            # compute has suspended, as an idle fleet is.
            await asyncio.sleep(5)
            used, gets = await idle_phase(http, server, ids, args.idle)
            rows += [
                [
                    f"idle CPU over {args.idle:g} s, computes up, agentdb + PostgreSQL",
                    f"{100 * used / args.idle:.1f} % of a core",
                ],
                ["GET /v1/sessions/{id} meanwhile", spread(gets, 99)],
            ]
            waited, still_active = await computes_suspended(server)
            suspended = (
                "computes suspended"
                if not still_active
                else f"{still_active} computes still active"
            )
            used, gets = await idle_phase(http, server, ids, args.idle)
            rows += [
                [
                    (
                        f"idle CPU over {args.idle:g} s, {suspended}"
                        f" ({waited:.0f} s later), agentdb + PostgreSQL"
                    ),
                    f"{100 * used / args.idle:.1f} % of a core",
                ],
                ["GET /v1/sessions/{id} meanwhile", spread(gets, 99)],
            ]

            chosen = random.sample(ids, min(50, len(ids)))
            queue = list(chosen)

            async def checkpoint() -> None:
                sid = queue.pop()
                expect(await http.post(f"/v1/sessions/{sid}/checkpoints", headers=admin), 201)

            cps, cps_wall = await timed_each(len(chosen), AT_ONCE, checkpoint)
            rows.append(
                [
                    f"checkpoints of {len(chosen)} random sessions, {AT_ONCE} at a time",
                    f"{spread(cps)}, {len(cps) / cps_wall:.1f}/s",
                ]
            )

            queue = list(ids)

            async def delete() -> None:
                sid = queue.pop()
                expect(await http.delete(f"/v1/sessions/{sid}", headers=admin), 200)

            _, delete_wall = await timed_each(len(ids), AT_ONCE, delete)
            rows.append([f"delete all {len(ids)}", f"{delete_wall:.1f} s"])
            # The plane drops the databases in the background: wait for it, up to 30 minutes.
            # The warm pool's projects (a live database and a root snapshot each) stay.
            await pool_full(server)
            left, waited = -1, time.monotonic()
            while time.monotonic() - waited < 1800:
                left = await tenant_databases(server) - pool_databases
                if left == 0:
                    break
                await asyncio.sleep(1)
            waited = time.monotonic() - waited
            rows += [
                [
                    "tenant databases left after the deletes (the warm pool's aside)",
                    f"{left} (the background drops took {waited:.0f} s more)",
                ],
                [
                    "databases' disk after, against before the sessions",
                    versus(disk_usage(data_dir / "pg", only="base"), disk_before),
                ],
                [
                    "write-ahead log after, against before (recycled at PostgreSQL checkpoints)",
                    versus(disk_usage(data_dir / "pg", only="pg_wal"), wal_before),
                ],
            ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument(
        "--sizes",
        default="10,100,1024",
        help="database sizes in MiB to checkpoint and restore beside pg_dump ('' to skip)",
    )
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="agentdb-scale-"))
    try:
        rows = asyncio.run(run(args, data_dir))
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(markdown_table(["measure", "value"], rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_facts(), "rows": rows}, indent=2))
    print(f"machine: {machine_facts()}", file=sys.stderr)


if __name__ == "__main__":
    main()
