"""Benchmark of noisy neighbours: what one hostile user's sessions cost another user, through
`agentdb serve` over real HTTP, as agents call it.

One run, on a fresh temporary data dir (unless `--data-dir`): the benchmark starts the embedded
PostgreSQL, then `agentdb serve` as a child process on it (`AGENTDB_DATABASE_URL`), so the
agentdb process's memory is measured alone. Two users of the default `free` tier (512 MiB of
logical size per session): the victim has two sessions with a 10,000-row table each (one
checkpointed, one queried); the attacker has five, each driven only with its session token, as a
prompt-injected agent would be.

0. **Warm-up.** For `--warmup` seconds the victim runs the loops below, unmeasured but shown:
   a fresh cluster's first checkpoints are its fastest (shared buffers not yet full of pages
   still to be written; fewer than the tier's 50 checkpoints, so none pruned), and the
   attacked phase runs in the steady state after them.
1. **Quiet.** For `--quiet` seconds the victim checkpoints in a loop (`POST .../checkpoints`,
   0.5 s apart: under its token's 120 control-plane operations a minute) while a second loop
   runs `SELECT count(*)` through `/sql` every 100 ms. Latencies recorded.
2. **Attacked.** The same victim loops for `--attack` seconds while the attacker runs, at once:
   the connection flood (100 concurrent `/sql` `select pg_sleep(20)` per session on two
   sessions: the per-token and per-user limits answer most with 429, PostgreSQL's per-role
   limit the rest), the orphan-backend loop (8 concurrent `DO` blocks that swallow every
   cancel, `timeout_seconds: 1`), the big result (3 concurrent `select repeat('x', 10000000)
   from generate_series(1, 100)` with `max_rows: 1`, about 1 GB each) and the disk writer (one
   `INSERT` of about 2 GB into a 512 MiB-quota session). Each attacking loop has an HTTP client
   and connection of its own, as a client elsewhere would: one shared httpx pool of 200
   connections cost this benchmark half a core in httpcore's pool bookkeeping, a core the
   victim lost on this one machine and would not lose to an attacker on another.
3. **Afterwards.** Attacker backends still running `--linger` (30) seconds after the attack
   stops (the longest attacker timeout is 20 s + 1 s of grace, so none should be), the disk
   writer's database at its largest past its quota (the overshoot: sampled every 50 ms while it
   runs, as its rolled-back table is gone afterwards), and agentdb's peak RSS (psutil, every
   50 ms) in each phase.

Usage: `.venv/bin/python benchmarks/neighbours.py [--warmup 40] [--quiet 20] [--attack 40]
[--json out.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx
import psutil
import psycopg
from _common import (
    ADMIN,
    JSON,
    Stats,
    bearer,
    expect,
    machine_facts,
    markdown_table,
    mebibytes,
    physical_names,
    quiet_logs,
    seconds,
    served,
)

QUOTA = 512 * 2**20
ORPHAN = (
    "do $$ declare x bigint; begin loop begin select count(*) into x from "
    "generate_series(1, 3000000); exception when query_canceled then null; end; end loop; end $$"
)
BIG = "select repeat('x', 10000000) from generate_series(1, 100)"
WRITER = (
    "create table if not exists junk (n int, s text); "
    "insert into junk select g, repeat(md5(g::text), 32) from generate_series(1, 2000000) g"
)


# --- users, sessions, tokens -----------------------------------------------------------------


@dataclass
class Session:
    id: str
    token: str  # the session token: all the agent holds
    role: str  # the session's database role (for the superuser's look at its backends)
    database: str  # its database's name (for the superuser's look at its size)


async def make_user(http: httpx.AsyncClient, email: str, sessions: int) -> list[Session]:
    user = expect(await http.post("/v1/users", json={"email": email}, headers=bearer(ADMIN)), 201)
    made = expect(
        await http.post(f"/v1/users/{user['id']}/tokens", json={}, headers=bearer(ADMIN)), 201
    )
    owner = bearer(made["token"])
    out = []
    for n in range(sessions):
        s = expect(
            await http.post("/v1/sessions", json={"name": f"{email}-{n}"}, headers=owner), 201
        )
        t = expect(await http.post(f"/v1/sessions/{s['id']}/tokens", json={}, headers=owner), 201)
        uri = expect(await http.get(f"/v1/sessions/{s['id']}", headers=owner), 200)[
            "connection_uri"
        ]
        role, database = await physical_names(uri)
        out.append(Session(s["id"], t["token"], role, database))
    return out


async def sql(
    http: httpx.AsyncClient, session: Session, text: str, **extra: float
) -> httpx.Response:
    return await http.post(
        f"/v1/sessions/{session.id}/sql", json={"sql": text, **extra}, headers=bearer(session.token)
    )


# --- the victim ------------------------------------------------------------------------------


@dataclass
class Victim:
    checkpoints: list[float] = field(default_factory=list)
    queries: list[float] = field(default_factory=list)
    healthz: list[float] = field(default_factory=list)  # GET /healthz: agentdb's event loop
    direct: list[float] = field(default_factory=list)  # connect + select 1, not through agentdb
    failures: Counter[str] = field(default_factory=Counter)


def _detail(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("detail", ""))[:100]
    except ValueError:
        return resp.text[:100]


async def victim_loops(
    http: httpx.AsyncClient, session: Session, other: Session, direct_uri: str, seconds_: float
) -> Victim:
    """Checkpoints of `session` in a loop, and SQL on `other` (a checkpoint ends the sessions
    of its own database, so the two would collide on one)."""
    seen = Victim()
    deadline = time.monotonic() + seconds_

    async def checkpoints() -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            started = time.perf_counter()
            resp = await http.post(
                f"/v1/sessions/{session.id}/checkpoints",
                json={"label": f"cp {n}"},
                headers=bearer(session.token),
            )
            if resp.status_code == 201:
                seen.checkpoints.append(time.perf_counter() - started)
            else:
                seen.failures[f"checkpoint {resp.status_code}: {_detail(resp)}"] += 1
            # Under the session token's limit of control-plane operations (120 a minute)
            # however fast the checkpoints are.
            await asyncio.sleep(0.5)

    async def queries() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            resp = await sql(http, other, "select count(*) from t")
            if resp.status_code == 200:
                seen.queries.append(time.perf_counter() - started)
            else:
                seen.failures[f"sql {resp.status_code}: {_detail(resp)}"] += 1
            await asyncio.sleep(0.1)

    async def probes() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            if (await http.get("/healthz")).status_code == 200:
                seen.healthz.append(time.perf_counter() - started)
            started = time.perf_counter()
            async with await psycopg.AsyncConnection.connect(direct_uri) as conn:
                await conn.execute("select 1")
            seen.direct.append(time.perf_counter() - started)
            await asyncio.sleep(0.25)

    await asyncio.gather(checkpoints(), queries(), probes())
    return seen


@dataclass(frozen=True)
class VictimPlan:
    url: str
    session: Session  # checkpointed
    other: Session  # queried
    direct_uri: str  # probed directly, past agentdb


def victim_process(plan: VictimPlan, seconds_: float) -> Victim:
    """`victim_loops` in a process (and scheduler group) of its own, with its own client: the
    attacker's hundreds of requests must not queue the victim's in this benchmark's own
    event loop."""

    async def run() -> Victim:
        async with httpx.AsyncClient(base_url=plan.url, timeout=900) as http:
            return await victim_loops(http, plan.session, plan.other, plan.direct_uri, seconds_)

    return asyncio.run(run())


async def victim_apart(
    pool: concurrent.futures.ProcessPoolExecutor, plan: VictimPlan, seconds_: float
) -> Victim:
    return await asyncio.get_running_loop().run_in_executor(pool, victim_process, plan, seconds_)


# --- the attacker ----------------------------------------------------------------------------


@dataclass
class Attack:
    statuses: Counter[str] = field(default_factory=Counter)
    writer_status: int = 0
    writer_seconds: float = 0.0
    writer_peak: int = 0  # the writer's database at its largest (sampled every 50 ms)


async def peak_size(dsn: str, database: str, seen: Attack) -> None:
    """Samples `database`'s size until cancelled: the table the writer creates is dropped
    with its rolled-back transaction, so only a sample taken while it runs sees the overshoot."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute("SELECT pg_database_size(%s)", (database,))
            row = await cur.fetchone()
            seen.writer_peak = max(seen.writer_peak, int(row[0]) if row else 0)
            # pg_database_size reads every file of the database: sampled every 20 ms it took
            # a tenth of a core from the box the victim runs on. The overshoot is also read
            # from the size watch's log line, and 50 ms of writing is a few MiB at most.
            await asyncio.sleep(0.05)


KINDS = ("flood", "orphan", "big", "disk")


async def attack(
    http: httpx.AsyncClient,
    sessions: list[Session],
    seconds_: float,
    kinds: set[str],
    *,
    superuser_dsn: str,
) -> Attack:
    seen = Attack()
    deadline = time.monotonic() + seconds_

    async def loop(
        kind: str, call: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
    ) -> None:
        # A client and connection of its own (the module docstring says why).
        async with httpx.AsyncClient(base_url=http.base_url, timeout=http.timeout) as own:
            while time.monotonic() < deadline:
                try:
                    resp = await call(own)
                except httpx.HTTPError as error:
                    seen.statuses[f"{kind} {type(error).__name__}"] += 1
                    await asyncio.sleep(0.5)
                    continue
                seen.statuses[f"{kind} {resp.status_code}"] += 1
                if resp.status_code == 429:
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))

    flood, orphan, big, disk = sessions[0:2], sessions[2], sessions[3], sessions[4]
    tasks = []
    if "flood" in kinds:
        tasks += [
            loop("flood", lambda c, s=s: sql(c, s, "select pg_sleep(20)", timeout_seconds=20))
            for s in flood
            for _ in range(100)
        ]
    if "orphan" in kinds:
        tasks += [
            loop("orphan", lambda c: sql(c, orphan, ORPHAN, timeout_seconds=1)) for _ in range(8)
        ]
    if "big" in kinds:
        tasks += [loop("big", lambda c: sql(c, big, BIG, max_rows=1)) for _ in range(3)]

    async def writer() -> None:
        started = time.perf_counter()
        sampler = asyncio.create_task(peak_size(superuser_dsn, disk.database, seen))
        try:
            resp = await sql(http, disk, WRITER, timeout_seconds=600)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        seen.writer_status = resp.status_code
        seen.writer_seconds = time.perf_counter() - started

    if "disk" in kinds:
        tasks.append(writer())
    await asyncio.gather(*tasks)
    return seen


# --- measuring -------------------------------------------------------------------------------


class PeakRss:
    """agentdb's peak resident memory while the block runs, sampled every 50 ms."""

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._process.memory_info().rss)
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None  # noqa: S101
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def attacker_backends(dsn: str, roles: list[str]) -> list[tuple[int, str, float]]:
    """(pid, state, seconds since its statement began) of the attacker roles' backends."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pid, state, extract(epoch FROM clock_timestamp() - query_start)"
            " FROM pg_stat_activity WHERE usename = ANY(%s) AND state <> 'idle'",
            (roles,),
        )
        return [(int(p), str(s), float(a or 0)) for p, s, a in await cur.fetchall()]


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else 0.0


def latency_row(name: str, samples: list[float]) -> list[str]:
    if not samples:
        return [name, "0", "-", "-", "-"]
    stats = Stats(tuple(samples))
    return [
        name,
        str(len(samples)),
        seconds(stats.median),
        seconds(p95(samples)),
        seconds(stats.high),
    ]


# --- the run ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace, data_dir: Path) -> JSON:
    async with (
        served(data_dir) as serve,
        httpx.AsyncClient(
            base_url=serve.url,
            timeout=900,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000),
        ) as http,
    ):
        victim, reader = await make_user(http, "victim@example.com", 2)
        attackers = await make_user(http, "attacker@example.com", 5)
        for own in (victim, reader):
            made = await sql(
                http,
                own,
                "create table t (n int, s text); "
                "insert into t select g, md5(g::text) from generate_series(1, 10000) g",
            )
            expect(made, 200)
        plan = VictimPlan(serve.url, victim, reader, serve.superuser_dsn)
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, initializer=os.setsid) as pool:
            # The victim's first checkpoints on a fresh cluster are the fastest it will see:
            # until their copies have filled shared buffers with pages still to be written,
            # and until its tier's checkpoint limit has it pruning one for each it takes.
            # The quiet phase measures the steady state the attacked one runs in.
            print(f"warm-up: {args.warmup:g} s", file=sys.stderr)
            warm = await victim_apart(pool, plan, args.warmup)
            print(f"quiet phase: {args.quiet:g} s", file=sys.stderr)
            async with PeakRss(serve.process) as quiet_rss:
                quiet = await victim_apart(pool, plan, args.quiet)
            print(f"attack phase: {args.attack:g} s", file=sys.stderr)
            async with PeakRss(serve.process) as attack_rss:
                attacked, hostile = await asyncio.gather(
                    victim_apart(pool, plan, args.attack),
                    attack(
                        http,
                        attackers,
                        args.attack,
                        set(args.only),
                        superuser_dsn=serve.superuser_dsn,
                    ),
                )
        stopped = time.monotonic()
        await asyncio.sleep(max(0.0, args.linger - (time.monotonic() - stopped)))
        lingering = await attacker_backends(serve.superuser_dsn, [s.role for s in attackers])

    # The larger of the sampled peak and the size at which the size watch stopped the writer
    # (its log line): a sample can miss the moment between the two.
    stopped_at = [
        int(m.group(1))
        for line in (data_dir / "serve.log").read_text(errors="replace").splitlines()
        if "size_quota_reached" in line and (m := re.search(r"logical_size=(\d+)", line))
    ]
    overshoot = max(0, max([hostile.writer_peak, *stopped_at]) - QUOTA)
    allowed = max(QUOTA // 10, 64 * 2**20)
    quiet_p95, attacked_p95 = p95(quiet.checkpoints), p95(attacked.checkpoints)
    ratio = attacked_p95 / quiet_p95 if quiet_p95 else float("inf")
    rows = [
        latency_row("victim checkpoint, warm-up (fresh cluster)", warm.checkpoints),
        latency_row("victim checkpoint, quiet", quiet.checkpoints),
        latency_row("victim checkpoint, attacked", attacked.checkpoints),
        latency_row("victim /sql, quiet", quiet.queries),
        latency_row("victim /sql, attacked", attacked.queries),
        latency_row("probe GET /healthz, quiet", quiet.healthz),
        latency_row("probe GET /healthz, attacked", attacked.healthz),
        latency_row("probe direct connect + select 1, quiet", quiet.direct),
        latency_row("probe direct connect + select 1, attacked", attacked.direct),
    ]
    print()
    print(markdown_table(["victim (other user)", "n", "median", "p95", "max"], rows))
    print()
    facts = [
        ["victim checkpoint p95, attacked / quiet", f"{ratio:.2f}x", "< 3x"],
        [
            "victim calls that failed (all phases)",
            str(sum(v.failures.total() for v in (warm, quiet, attacked))),
            "0",
        ],
        ["agentdb peak RSS, quiet", mebibytes(quiet_rss.peak), ""],
        ["agentdb peak RSS, attacked", mebibytes(attack_rss.peak), "< 1.0 GiB"],
        [
            "disk writer: peak size past its 512 MiB quota",
            mebibytes(overshoot),
            f"<= {mebibytes(allowed)}",
        ],
        [
            "disk writer: answer, time",
            f"{hostile.writer_status}, {seconds(hostile.writer_seconds)}",
            "",
        ],
        [f"attacker backends running {args.linger:g} s after the attack", str(len(lingering)), "0"],
    ]
    print(markdown_table(["measure", "value", "target"], facts))
    print()
    print(
        markdown_table(
            ["attacker call", "answers"],
            [[k, str(v)] for k, v in sorted(hostile.statuses.items())],
        )
    )
    failures = warm.failures + quiet.failures + attacked.failures
    if failures:
        print("\nvictim failures:", dict(failures))
    return {
        "machine": machine_facts(),
        "warmup_checkpoints": warm.checkpoints,
        "quiet_checkpoints": quiet.checkpoints,
        "attacked_checkpoints": attacked.checkpoints,
        "quiet_queries": quiet.queries,
        "attacked_queries": attacked.queries,
        "victim_failures": dict(failures),
        "rss_peak_quiet": quiet_rss.peak,
        "rss_peak_attacked": attack_rss.peak,
        "overshoot_bytes": overshoot,
        "writer": {"status": hostile.writer_status, "seconds": hostile.writer_seconds},
        "lingering_backends": lingering,
        "attacker_answers": dict(hostile.statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--warmup",
        type=float,
        default=40,
        help="seconds of checkpoints before the quiet phase (past the tier's checkpoint limit)",
    )
    parser.add_argument("--quiet", type=float, default=20, help="seconds of the quiet phase")
    parser.add_argument("--attack", type=float, default=40, help="seconds of the attack")
    parser.add_argument(
        "--linger",
        type=float,
        default=30,
        help="seconds after the attack to look for attacker backends",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=KINDS,
        default=list(KINDS),
        help="run only these attacks (default: all four at once)",
    )
    parser.add_argument("--data-dir", type=Path, help="default: a fresh temporary directory")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    quiet_logs()
    print(json.dumps(machine_facts()))
    if args.data_dir is not None:
        result = asyncio.run(run(args, args.data_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="agentdb-neighbours-") as tmp:
            result = asyncio.run(run(args, Path(tmp)))
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
