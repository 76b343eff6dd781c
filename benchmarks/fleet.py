"""Fleet migrations through `agentdb serve` over real HTTP: one schema change applied to every
session, with a checkpoint of each session before it, at several concurrencies, beside the naive
loop a platform would otherwise write (for each session: look up its connection string, connect,
run the statements, next; no checkpoint, no record).

One run on a fresh temporary data dir: the embedded PostgreSQL, then `agentdb serve` as a child
process on it with the admin token and a tiers file of one uncapped tier without a warm pool (a
pool pre-makes a handful of projects, which saves nothing over 1,000 creates and would refill in
the background while the migrations are timed). `--sessions` sessions (default 1,000) are
created 8 at a time across users of 100 sessions each, each with a table `items` of 100 rows
written through `POST /v1/sessions/{id}/sql`; that setup is timed apart and not in the table.

Then, for each concurrency of `--concurrency` (default 1,4,8): `POST /v1/migrations` (target
all, no canary, no halt rule) adding a column and an index, `GET /v1/migrations/{id}` every
0.5 s until it is `finished` (or stops otherwise: reported), and its per-session results paged
through `GET /v1/migrations/{id}/sessions` for each session's time (`finished_at - started_at`:
checkpoint, apply and the service's bookkeeping) and its `checkpoint_ms` and `apply_ms`. The naive
loop follows at `--naive` (default 1,8) connections at once (asyncio psycopg through the local
plane's proxy, the same connection string an agent gets), each session's time being its
`GET /v1/sessions/{id}`, connect and transaction. The CPU seconds agentdb, PostgreSQL and the
rest of the machine (this benchmark's clients, anything else running) used during each row, and
the PostgreSQL data dir's size after it (databases and write-ahead log), come beside.

Usage: `.venv/bin/python benchmarks/fleet.py [--sessions 1000] [--concurrency 1,4,8]
[--naive 1,8] [--serve-log PATH]`
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import psycopg
from _common import (
    ADMIN,
    JSON,
    BenchmarkError,
    bearer,
    expect,
    filesystem_of,
    machine_facts,
    markdown_table,
    mebibytes,
    quiet_logs,
    served,
)
from scale import disk_usage, percentile, postmaster

CREATE_AT_ONCE = 8
SESSIONS_PER_USER = 100
POLL_S = 0.5
MIGRATION_TIMEOUT_S = 7200
#: A migration whose counts do not move for this long is reported as stuck (see serve.log).
STALL_S = 300
PAGE = 500  # the API's largest page (MAX_PAGE)
TARGET_RATE = 10.0  # sessions/s at concurrency 8, with checkpoints
TARGET_CONCURRENCY = 8
TIERS = """
default = "fleet"

[tiers.fleet]
warm_pool_size = 0
"""
SEED = (
    "create table items (id int primary key, v text);"
    " insert into items select g, md5(g::text) from generate_series(1, 100) g"
)
#: Migration states that end a poll: done, or stopped with its results to report.
STOPPED = {"finished", "halted", "cancelled", "rolled_back"}


@dataclass
class Row:
    method: str
    concurrency: int
    sessions: int
    failed: int
    wall_s: float
    per_session_s: list[float]
    checkpoint_ms: list[float]
    apply_ms: list[float]
    agentdb_cpu_s: float
    pg_cpu_s: float
    other_cpu_s: float
    data_dir_bytes: int
    status: str = ""

    @property
    def rate(self) -> float:
        return self.sessions / self.wall_s if self.wall_s > 0 else 0.0


class Cpu:
    """CPU seconds of `agentdb serve`, of PostgreSQL (the postmaster, its live children and
    the children it has reaped) and of everything else on the machine."""

    def __init__(self, agentdb: psutil.Process, pg: psutil.Process) -> None:
        self._agentdb, self._pg = agentdb, pg
        self._last = self._now()

    def _now(self) -> tuple[float, float, float]:
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        times = self._agentdb.cpu_times()
        agentdb = times.user + times.system + times.children_user + times.children_system
        times = self._pg.cpu_times()
        pg = times.user + times.system + times.children_user + times.children_system
        for child in self._pg.children():
            try:
                child_times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            pg += child_times.user + child_times.system
        return agentdb, pg, busy

    def lap(self) -> tuple[float, float, float]:
        """agentdb's, PostgreSQL's and the rest of the machine's (this benchmark's clients and
        anything else running) CPU seconds since the last lap."""
        now = self._now()
        agentdb, pg, busy = (now[i] - self._last[i] for i in range(3))
        self._last = now
        return agentdb, pg, max(0.0, busy - agentdb - pg)


def quantiles(values: list[float]) -> tuple[str, str]:
    if not values:
        return "-", "-"
    return f"{percentile(values, 50):.0f}", f"{percentile(values, 95):.0f}"


async def pg_size(data_dir: Path) -> int:
    return await asyncio.to_thread(disk_usage, data_dir / "pg")


async def create_fleet(http: httpx.AsyncClient, count: int) -> tuple[list[str], float]:
    """`count` sessions with their `items` table, 8 at a time; their ids and the seconds taken."""
    admin = bearer(ADMIN)
    users = []
    for n in range((count + SESSIONS_PER_USER - 1) // SESSIONS_PER_USER):
        made = expect(
            await http.post("/v1/users", json={"email": f"fleet{n}@x.dev"}, headers=admin), 201
        )
        users.append(made["id"])
    ids: list[str] = []
    slots = asyncio.Semaphore(CREATE_AT_ONCE)

    async def one(n: int) -> None:
        async with slots:
            made = expect(
                await http.post(
                    "/v1/sessions",
                    json={"user_id": users[n // SESSIONS_PER_USER], "name": f"fleet-{n}"},
                    headers=admin,
                ),
                201,
            )
            expect(
                await http.post(
                    f"/v1/sessions/{made['id']}/sql", json={"sql": SEED}, headers=admin
                ),
                200,
            )
            ids.append(made["id"])
            if len(ids) % 100 == 0:
                print(f"  {len(ids)} sessions", file=sys.stderr, flush=True)

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    return ids, time.perf_counter() - started


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def results_of(http: httpx.AsyncClient, migration_id: str) -> list[JSON]:
    """Every per-session result of a migration, 500 at a time (the API's largest page)."""
    found: list[JSON] = []
    after: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": PAGE}
        if after is not None:
            params["after"] = after
        page = expect(
            await http.get(
                f"/v1/migrations/{migration_id}/sessions", params=params, headers=bearer(ADMIN)
            ),
            200,
        )
        results: list[JSON] = page["results"]
        found += results
        after = page.get("next_after") or (results[-1]["session_id"] if results else None)
        if len(results) < PAGE or after is None:
            return found


async def fleet_migration(http: httpx.AsyncClient, concurrency: int, cpu: Cpu) -> Row:
    admin = bearer(ADMIN)
    column = f"c{concurrency}"
    body = {
        "name": f"add-col-{column}",
        "up": (
            f"alter table items add column {column} int default 0; create index on items ({column})"
        ),
        "target": {"all": True},
        "rollout": {"canary": 0, "concurrency": concurrency, "halt_after_failures": None},
    }
    cpu.lap()
    started = time.perf_counter()
    view = expect(await http.post("/v1/migrations", json=body, headers=admin), 201)
    migration_id = view["id"]
    last_print = last_move = started
    progress = (view["status"], view["counts"])
    while view["status"] not in STOPPED:
        now = time.perf_counter()
        if now - started > MIGRATION_TIMEOUT_S or now - last_move > STALL_S:
            raise BenchmarkError(
                f"migration {migration_id} stuck {view['status']} (see serve.log): {view}"
            )
        await asyncio.sleep(POLL_S)
        view = expect(await http.get(f"/v1/migrations/{migration_id}", headers=admin), 200)
        if (view["status"], view["counts"]) != progress:
            progress, last_move = (view["status"], view["counts"]), time.perf_counter()
        if time.perf_counter() - last_print > 30:
            last_print = time.perf_counter()
            counts = {k: v for k, v in view["counts"].items() if v}
            print(f"  {view['status']}: {counts}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - started
    agentdb_cpu, pg_cpu, other_cpu = cpu.lap()
    results = await results_of(http, migration_id)
    counts = view["counts"]
    if view["status"] != "finished" or counts.get("failed"):
        print(f"migration {body['name']}: {view['status']}, {counts}", file=sys.stderr)
        for failed in [r for r in results if r["status"] == "failed"][:5]:
            print(f"  {failed['session_id']}: {failed['error']}", file=sys.stderr)
    applied = [r for r in results if r["status"] == "applied"]
    spans = [
        (instant(r["finished_at"]) - instant(r["started_at"])).total_seconds()
        for r in applied
        if r.get("started_at") and r.get("finished_at")
    ]
    server_span = "-"
    if view.get("started_at") and view.get("finished_at"):
        span = instant(view["finished_at"]) - instant(view["started_at"])
        server_span = f"{span.total_seconds():.1f} s"
    if applied:
        first = min(instant(r["started_at"]) for r in applied if r.get("started_at"))
        last = max(instant(r["finished_at"]) for r in applied if r.get("finished_at"))
        print(
            f"fleet c={concurrency}: {len(results)} results, {dict(counts)};"
            f" first start to last finish {(last - first).total_seconds():.1f} s,"
            f" migration started_at to finished_at {server_span};"
            f" POST to finished seen {wall:.1f} s",
            file=sys.stderr,
        )
    return Row(
        method="fleet (checkpoint + apply)",
        concurrency=concurrency,
        sessions=len(applied),
        failed=sum(r["status"] == "failed" for r in results),
        wall_s=wall,
        per_session_s=spans,
        checkpoint_ms=[float(r["checkpoint_ms"]) for r in applied if r.get("checkpoint_ms")],
        apply_ms=[float(r["apply_ms"]) for r in applied if r.get("apply_ms") is not None],
        agentdb_cpu_s=agentdb_cpu,
        pg_cpu_s=pg_cpu,
        other_cpu_s=other_cpu,
        data_dir_bytes=0,
        status=view["status"],
    )


async def naive_loop(http: httpx.AsyncClient, ids: list[str], concurrency: int, cpu: Cpu) -> Row:
    """For each session: its connection string, a connection, the statements; no checkpoint."""
    admin = bearer(ADMIN)
    column = f"naive_c{concurrency}"
    took: list[float] = []
    errors: list[str] = []
    queue = list(ids)

    async def worker() -> None:
        while queue:
            sid = queue.pop()
            began = time.perf_counter()
            try:
                uri = expect(await http.get(f"/v1/sessions/{sid}", headers=admin), 200)[
                    "connection_uri"
                ]
                async with await psycopg.AsyncConnection.connect(uri, connect_timeout=30) as conn:
                    await conn.execute(f"alter table items add column {column} int default 0")
                    await conn.execute(f"create index on items ({column})")
                    # the block's exit commits
            except (psycopg.Error, BenchmarkError, httpx.HTTPError) as error:
                errors.append(f"{sid}: {error}")
                continue
            took.append(time.perf_counter() - began)

    cpu.lap()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    agentdb_cpu, pg_cpu, other_cpu = cpu.lap()
    for error in errors[:5]:
        print(f"naive c={concurrency}: {error}", file=sys.stderr)
    return Row(
        method="naive loop (no checkpoint)",
        concurrency=concurrency,
        sessions=len(took),
        failed=len(errors),
        wall_s=wall,
        per_session_s=took,
        checkpoint_ms=[],
        apply_ms=[],
        agentdb_cpu_s=agentdb_cpu,
        pg_cpu_s=pg_cpu,
        other_cpu_s=other_cpu,
        data_dir_bytes=0,
        status="finished" if not errors else f"{len(errors)} failed",
    )


async def run(args: argparse.Namespace, data_dir: Path) -> tuple[list[Row], float, int, int]:
    tiers = data_dir / "tiers.toml"
    tiers.write_text(TIERS)
    rows: list[Row] = []
    async with served(data_dir, tiers_file=str(tiers), warm_pool_size="0") as server:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as http:
            print(f"creating {args.sessions} sessions...", file=sys.stderr, flush=True)
            ids, create_s = await create_fleet(http, args.sessions)
            print(
                f"created {len(ids)} sessions with 100 rows each in {create_s:.1f} s"
                f" ({len(ids) / create_s:.1f}/s, {CREATE_AT_ONCE} at a time)",
                file=sys.stderr,
                flush=True,
            )
            before = await pg_size(data_dir)
            cpu = Cpu(server.process, await postmaster(server.superuser_dsn))
            for concurrency in args.concurrency:
                print(f"fleet migration, concurrency {concurrency}...", file=sys.stderr, flush=True)
                row = await fleet_migration(http, concurrency, cpu)
                row.data_dir_bytes = await pg_size(data_dir)
                rows.append(row)
            for concurrency in args.naive:
                print(f"naive loop, concurrency {concurrency}...", file=sys.stderr, flush=True)
                row = await naive_loop(http, ids, concurrency, cpu)
                row.data_dir_bytes = await pg_size(data_dir)
                rows.append(row)
    return rows, create_s, len(ids), before


def summarize_log(log: Path, keep: Path | None) -> None:
    """Copies `agentdb serve`'s log to `keep` and prints how many warnings it has, and the last."""
    if not log.exists():
        return
    if keep is not None:
        shutil.copy(log, keep)
    warnings = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "[warning" in line or "[error" in line
    ]
    print(f"serve.log: {len(warnings)} warning/error lines", file=sys.stderr)
    for line in warnings[-10:]:
        print(f"  {line[:300]}", file=sys.stderr)


def table(rows: list[Row]) -> str:
    naive = {row.concurrency: row.rate for row in rows if row.method.startswith("naive")}
    lines = []
    for row in rows:
        p50, p95 = quantiles([s * 1000 for s in row.per_session_s])
        cp50, cp95 = quantiles(row.checkpoint_ms)
        ap50, ap95 = quantiles(row.apply_ms)
        base = naive.get(row.concurrency)
        lines.append(
            [
                row.method,
                str(row.concurrency),
                str(row.sessions) + (f" ({row.failed} failed)" if row.failed else ""),
                f"{row.wall_s:.1f}",
                f"{row.rate:.1f}",
                p50,
                p95,
                f"{cp50} / {cp95}",
                f"{ap50} / {ap95}",
                f"{row.rate / base:.2f}x" if base else "-",
                f"{row.agentdb_cpu_s:.0f} / {row.pg_cpu_s:.0f} / {row.other_cpu_s:.0f}",
                mebibytes(row.data_dir_bytes),
            ]
        )
    headers = [
        "method",
        "concurrency",
        "sessions",
        "wall s",
        "sessions/s",
        "p50 ms",
        "p95 ms",
        "checkpoint p50 / p95 ms",
        "apply p50 / p95 ms",
        "vs naive",
        "CPU s agentdb / PG / rest",
        "PG data dir after",
    ]
    return markdown_table(headers, lines)


def concurrencies(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if any(not 1 <= value <= 64 for value in values):
        raise argparse.ArgumentTypeError("concurrencies are 1..64")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--concurrency", type=concurrencies, default=[1, 4, 8])
    parser.add_argument("--naive", type=concurrencies, default=[1, 8])
    parser.add_argument("--serve-log", type=Path, help="keep agentdb serve's log here")
    args = parser.parse_args()
    quiet_logs()
    # `timeout` and `kill` stop the run as Ctrl-C does: the server and its cluster go too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    data_dir = Path(tempfile.mkdtemp(prefix="agentdb-fleet-"))
    started = time.perf_counter()
    try:
        rows, create_s, created, before = asyncio.run(run(args, data_dir))
        filesystem = filesystem_of(data_dir)
    finally:
        summarize_log(data_dir / "serve.log", args.serve_log)
        shutil.rmtree(data_dir, ignore_errors=True)
    facts = machine_facts()
    fleet_rows = [
        row
        for row in rows
        if row.method.startswith("fleet") and row.concurrency == TARGET_CONCURRENCY
    ]
    print()
    print(
        f"agentdb fleet migrations: {created} sessions (100 rows each, created in"
        f" {create_s:.1f} s), {facts['cpu']}, {facts['cores']} cores, {filesystem}"
    )
    print(table(rows))
    print(
        "p50/p95: per session (fleet: finished_at - started_at of its result; naive: GET the"
        " session, connect through the proxy, alter + create index); checkpoint/apply: the"
        " results' checkpoint_ms and apply_ms; vs naive: sessions/s over the naive loop's at"
        " the same concurrency; CPU s: during the row, rest = the machine's other processes"
        " (this benchmark's clients included)"
    )
    print(f"PostgreSQL data dir before the migrations: {mebibytes(before)}")
    if fleet_rows:
        rate = fleet_rows[0].rate
        verdict = "met" if rate >= TARGET_RATE else "not met"
        print(
            f"target: >= {TARGET_RATE:g} sessions/s at concurrency {TARGET_CONCURRENCY} with"
            f" checkpoints: {verdict} ({rate:.1f}/s)"
        )
    else:
        print(f"target: concurrency {TARGET_CONCURRENCY} not run")
    print(f"whole run {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
