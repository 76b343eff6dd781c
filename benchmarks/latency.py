"""Benchmark of the floor under every call: back-to-back requests on one kept-open HTTP
connection to `agentdb serve`, as an SDK or an agent's tool loop sends them.

One run, on a fresh temporary data dir: the embedded PostgreSQL, then `agentdb serve` as a child
process on it; one user, one session with a session token. Then, `--calls` times each, one after
another on one connection: `GET /healthz`, `GET /v1/sessions/{id}`, and `POST .../sql` of
`select 1`. Beside them, the same `select 1` the naive way a service would run it: a new
PostgreSQL connection per call (connect, query, close) and one kept-open connection, straight to
the session's database (no HTTP), so the table shows what the API adds and what a connection
costs.

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
    return results


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
