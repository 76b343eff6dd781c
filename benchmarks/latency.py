"""Benchmark of the floor under every call: back-to-back requests on one kept-open HTTP
connection to `agentdb serve`, as an SDK or an agent's tool loop sends them.

One run, on a fresh temporary data dir: the embedded PostgreSQL, then `agentdb serve` as a child
process on it; one user, one session with a session token. Then, `--calls` times each, one after
another on one connection: `GET /healthz`, `GET /v1/sessions/{id}`, and `POST .../sql` of
`select 1`. Beside them, the same `select 1` the naive way a service would run it: a new
PostgreSQL connection per call (connect, query, close) and one kept-open connection, straight to
the session's database (no HTTP), so the table shows what the API adds and what a connection
costs. Then the session is checkpointed 10 times while three loops insert through agentdb's
`/sql` and three on direct connections (reconnecting after a failure): the checkpoints' and the
inserts' times, and how many inserts failed on each path.

Usage: `.venv/bin/python benchmarks/latency.py [--calls 200] [--sql-idle-connections 0]
[--json out.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import psycopg
from _common import (
    ADMIN,
    bearer,
    expect,
    machine_facts,
    markdown_table,
    quiet_logs,
    served,
)


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


TABLE = "CREATE TABLE IF NOT EXISTS log (n int)"
INSERT = "INSERT INTO log VALUES (1)"
#: Failed calls during the checkpoints, by path ("agentdb", "direct").
FAILED: Counter[str] = Counter()


async def timed(calls: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    for _ in range(5):  # warm: the first calls pay for imports, plans and caches
        await call()
    took = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        took.append(time.perf_counter() - started)
    return took


async def measure(url: str, calls: int) -> dict[str, list[float]]:
    # One connection, kept open: what a client library does between calls.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        admin = bearer(ADMIN)
        user = expect(await http.post("/v1/users", json={"email": "l@x.dev"}, headers=admin), 201)
        owner = bearer(
            expect(await http.post(f"/v1/users/{user['id']}/tokens", json={}, headers=admin), 201)[
                "token"
            ]
        )
        session = expect(await http.post("/v1/sessions", json={"name": "l"}, headers=owner), 201)
        sid, uri = session["id"], session["connection_uri"]
        agent = bearer(
            expect(await http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=owner), 201)[
                "token"
            ]
        )

        async def healthz() -> None:
            expect(await http.get("/healthz"), 200)

        async def get_session() -> None:
            expect(await http.get(f"/v1/sessions/{sid}", headers=agent), 200)

        async def select_1() -> None:
            expect(
                await http.post(f"/v1/sessions/{sid}/sql", json={"sql": "select 1"}, headers=agent),
                200,
            )

        results = {
            "GET /healthz": await timed(calls, healthz),
            "GET /v1/sessions/{id}": await timed(calls, get_session),
            "POST /sql select 1": await timed(calls, select_1),
        }

    async def connect_per_call() -> None:
        async with await psycopg.AsyncConnection.connect(uri) as conn:
            await conn.execute("select 1")

    results["direct: connect, select 1, close"] = await timed(calls, connect_per_call)
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as kept:

        async def on_kept() -> None:
            await kept.execute("select 1")

        results["direct: select 1 on an open connection"] = await timed(calls, on_kept)
    results.update(await during_checkpoints(url, sid, uri, agent, owner))
    return results


async def during_checkpoints(
    url: str, sid: str, uri: str, agent: dict[str, str], owner: dict[str, str], *, count: int = 10
) -> dict[str, list[float]]:
    """Three agents' SQL loops (through agentdb) and three direct connections' loops on the
    session while it is checkpointed `count` times: each call's time, and the failures."""
    failures: Counter[str] = Counter()
    took: dict[str, list[float]] = {"agentdb": [], "direct": []}
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        expect(await http.post(f"/v1/sessions/{sid}/sql", json={"sql": TABLE}, headers=agent), 200)

        async def through_agentdb() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                answer = await http.post(
                    f"/v1/sessions/{sid}/sql", json={"sql": INSERT}, headers=agent
                )
                took["agentdb"].append(time.perf_counter() - started)
                if answer.status_code != 200:
                    failures["agentdb"] += 1

        async def direct() -> None:
            conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(uri, autocommit=True)
                    await conn.execute(INSERT)
                except psycopg.Error:
                    failures["direct"] += 1
                    conn = None
                took["direct"].append(time.perf_counter() - started)
            if conn is not None:
                await conn.close()

        loops = [asyncio.create_task(f()) for f in (through_agentdb, direct) for _ in range(3)]
        checkpoint_took = []
        try:
            for n in range(count):
                started = time.perf_counter()
                expect(
                    await http.post(
                        f"/v1/sessions/{sid}/checkpoints", json={"label": f"c{n}"}, headers=owner
                    ),
                    201,
                )
                checkpoint_took.append(time.perf_counter() - started)
                await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.gather(*loops)
    FAILED.update(failures)
    return {
        f"checkpoint (x{count}) while 6 loops write": checkpoint_took,
        "during them: /sql INSERT through agentdb": took["agentdb"],
        "during them: INSERT on a direct connection": took["direct"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--sql-idle-connections",
        help="AGENTDB_SQL_IDLE_CONNECTIONS for the server (0: a new connection per SQL call)",
    )
    args = parser.parse_args()
    quiet_logs()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="agentdb-latency-"))
    try:
        extra = {}
        if args.sql_idle_connections is not None:
            extra["sql_idle_connections"] = args.sql_idle_connections
        async with served(data_dir, **extra) as server:
            results = await measure(server.url, args.calls)
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    rows = [
        [what, str(len(t)), ms(percentile(t, 50)), ms(percentile(t, 95)), ms(max(t))]
        for what, t in results.items()
    ]
    print(markdown_table(["back to back, one connection", "n", "p50", "p95", "max"], rows))
    print()
    failed = [[where, str(FAILED[where])] for where in ("agentdb", "direct")]
    print(markdown_table(["calls that failed during the checkpoints", "failed"], failed))
    if args.json:
        facts = machine_facts()
        out = {
            what: {"p50": percentile(t, 50), "p95": percentile(t, 95)}
            for what, t in results.items()
        }
        args.json.write_text(json.dumps({"machine": facts, "results": out}, indent=2))
    print(f"machine: {machine_facts()}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
