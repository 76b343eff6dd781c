"""The local plane's connection proxy (issue 18), measured through a real `agentdb serve`: a
session's Neon-shaped connection string (TLS, SCRAM-SHA-256-PLUS, Neon's names, the endpoint in
`options`) against a direct connection to the same database as the same role.

- per-query latency on one kept-open connection (`SELECT 1`), direct vs through the proxy;
- connections per second (connect, `SELECT 1`, close), one client and four at once;
- at each size: while three checkpoints and one restore run through agentdb's REST API, clients
  that open a new connection for every query, through the proxy and direct: failed queries and
  the longest time between two answers; beside `pg_dump -Fc` and `pg_restore` of the same data.

Usage: `.venv/bin/python benchmarks/proxy.py [--sizes 10,1024] [--queries 3000]`
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Self
from urllib.parse import quote

import httpx
import psycopg
from _common import (
    ADMIN,
    ClientProbe,
    Outage,
    Probe,
    bearer,
    expect,
    filesystem_of,
    fill_mebibytes,
    machine_facts,
    markdown_table,
    mebibytes,
    quiet_logs,
    served,
)
from localplane import dump_and_restore

from agentdb.pg import ServerInfo


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(value: float, digits: int = 0) -> str:
    return f"{value * 1000:.{digits}f} ms" if value < 10 else f"{value:.1f} s"


def pooled_of(uri: str) -> str:
    """The pooled connection string of a session's: its endpoint's `-pooler` name."""
    return re.sub(r"(options=endpoint%3D[a-z0-9-]+)", r"\1-pooler", uri, count=1)


class KeptProbe(threading.Thread):
    """One kept-open connection running `query` every 2 ms (reconnecting after a failure), in
    a thread of its own: what a pooled app's connection sees during a checkpoint or restore."""

    def __init__(self, uri: str, query: str) -> None:
        super().__init__(daemon=True)
        self._uri, self._query = uri, query
        self._halt = threading.Event()
        self.probes: list[Probe] = []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._halt.set()
        self.join()

    def outage(self) -> Outage:
        return Outage.of(self.probes)

    def run(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        while not self._halt.is_set():
            start = time.perf_counter()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._uri, autocommit=True, connect_timeout=30)
                conn.execute(self._query)
                self.probes.append(Probe(start, time.perf_counter(), ok=True))
            except psycopg.Error as error:
                self.probes.append(Probe(start, time.perf_counter(), ok=False, error=str(error)))
                conn = None
            time.sleep(0.002)
        if conn is not None:
            conn.close()


def round_trips(uri: str, count: int) -> list[float]:
    """Seconds per `SELECT 1` on one connection (after a warm-up), in this thread."""
    with psycopg.connect(uri, autocommit=True, prepare_threshold=None) as conn:
        for _ in range(200):
            conn.execute("SELECT 1")
        took = []
        for _ in range(count):
            started = time.perf_counter()
            conn.execute("SELECT 1")
            took.append(time.perf_counter() - started)
    return took


def connections_per_second(uri: str, clients: int, seconds: float) -> float:
    """Connect, `SELECT 1`, close, in a loop per client thread for `seconds`: how many a second."""
    done = [0] * clients
    deadline = time.monotonic() + seconds

    def loop(index: int) -> None:
        while time.monotonic() < deadline:
            with psycopg.connect(uri, autocommit=True) as conn:
                conn.execute("SELECT 1")
            done[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


async def physical_uri(uri: str, server: ServerInfo) -> tuple[str, str]:
    """A direct connection string for the role and database behind `uri`, and the database."""
    async with await psycopg.AsyncConnection.connect(uri) as conn:
        row = await (await conn.execute("SELECT current_user, current_database()")).fetchone()
    assert row is not None  # noqa: S101
    role, database = str(row[0]), str(row[1])
    password = quote(psycopg.conninfo.conninfo_to_dict(uri)["password"] or "", safe="")
    return f"postgresql://{role}:{password}@{server.host}:{server.port}/{database}", database


def _seen(outages: tuple[Outage, Outage, Outage]) -> str:
    proxy, direct, pooled = outages
    return (
        f"proxy {proxy.failed} of {proxy.probes} / {ms(proxy.longest_gap_s)}"
        f" | direct {direct.failed} of {direct.probes} / {ms(direct.longest_gap_s)}"
        f" | pooled, kept connection {pooled.failed} of {pooled.probes}"
        f" / {ms(pooled.longest_gap_s)}"
    )


async def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1024", help="database sizes in MiB")
    parser.add_argument("--queries", type=int, default=3000, help="round trips per latency run")
    parser.add_argument("--seconds", type=float, default=3.0, help="per connection-rate run")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    quiet_logs()
    data_dir = Path(tempfile.mkdtemp(prefix="agentdb-proxy-bench-"))
    rows: list[list[str]] = []
    try:
        async with (
            served(data_dir) as server,
            httpx.AsyncClient(base_url=server.url, timeout=600) as http,
        ):
            admin = bearer(ADMIN)
            user = expect(
                await http.post(
                    "/v1/users", json={"email": "p@x.dev", "tier": "pro"}, headers=admin
                ),
                201,
            )
            token = expect(
                await http.post(f"/v1/users/{user['id']}/tokens", json={}, headers=admin), 201
            )["token"]
            owner = bearer(token)
            made = expect(await http.post("/v1/sessions", json={}, headers=owner), 201)
            uri = made["connection_uri"]
            direct, _ = await physical_uri(uri, server.server)
            print(f"connection string: {uri.split('@', 1)[1]}")

            lat_direct = await asyncio.to_thread(round_trips, direct, args.queries)
            lat_proxy = await asyncio.to_thread(round_trips, uri, args.queries)
            lat_pooled = await asyncio.to_thread(round_trips, pooled_of(uri), args.queries)
            for label, taken in (
                ("direct", lat_direct),
                ("proxy, unpooled (TLS)", lat_proxy),
                ("proxy, pooled (TLS; a transaction each)", lat_pooled),
            ):
                added = percentile(taken, 50) - percentile(lat_direct, 50)
                rows.append(
                    [
                        f"SELECT 1 on a kept connection, {label}: p50 / p95 (x{args.queries})",
                        f"{ms(percentile(taken, 50), 3)} / {ms(percentile(taken, 95), 3)}"
                        + ("" if taken is lat_direct else f"; added p50 {ms(added, 3)}"),
                    ]
                )
            for clients in (1, 4):
                rate_direct = await asyncio.to_thread(
                    connections_per_second, direct, clients, args.seconds
                )
                rate_proxy = await asyncio.to_thread(
                    connections_per_second, uri, clients, args.seconds
                )
                rows.append(
                    [
                        f"connections per second, {clients} client{'s' if clients > 1 else ''}",
                        f"direct {rate_direct:.0f}/s | proxy (TLS + SCRAM-PLUS) {rate_proxy:.0f}/s",
                    ]
                )
            expect(await http.delete(f"/v1/sessions/{made['id']}", headers=owner), 200)

            for size in sizes:
                made = expect(await http.post("/v1/sessions", json={}, headers=owner), 201)
                sid, uri = made["id"], made["connection_uri"]
                direct, database = await physical_uri(uri, server.server)
                actual = await fill_mebibytes(uri, size)
                async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
                    await conn.execute("CREATE TABLE probe (n int)")
                    await conn.execute("INSERT INTO probe VALUES (1)")
                label = mebibytes(actual)
                checkpoint_ids = []
                took = []
                with (
                    ClientProbe(uri, "SELECT n FROM probe") as via_proxy,
                    ClientProbe(direct, "SELECT n FROM probe") as via_direct,
                    KeptProbe(pooled_of(uri), "SELECT n FROM probe") as via_pooler,
                ):
                    await asyncio.sleep(0.3)
                    for n in range(3):
                        started = time.perf_counter()
                        done = expect(
                            await http.post(
                                f"/v1/sessions/{sid}/checkpoints",
                                json={"label": f"c{n}"},
                                headers=owner,
                            ),
                            201,
                        )
                        took.append(time.perf_counter() - started)
                        checkpoint_ids.append(done["id"])
                        await asyncio.sleep(0.3)
                cp = (via_proxy.outage(), via_direct.outage(), via_pooler.outage())
                with (
                    ClientProbe(uri, "SELECT n FROM probe") as via_proxy,
                    ClientProbe(direct, "SELECT n FROM probe") as via_direct,
                    KeptProbe(pooled_of(uri), "SELECT n FROM probe") as via_pooler,
                ):
                    await asyncio.sleep(0.3)
                    started = time.perf_counter()
                    expect(
                        await http.post(
                            f"/v1/sessions/{sid}/checkpoints/{checkpoint_ids[0]}/restore",
                            json={},
                            headers=owner,
                        ),
                        200,
                    )
                    restore_s = time.perf_counter() - started
                    await asyncio.sleep(0.3)
                rs = (via_proxy.outage(), via_direct.outage(), via_pooler.outage())
                (data_dir / "dumps").mkdir(exist_ok=True)
                dump_s, pg_restore_s, _ = await dump_and_restore(
                    server.server, database, data_dir / "dumps", 0
                )
                rows += [
                    [
                        f"{label}: 3 checkpoints through the API, p50 vs pg_dump -Fc",
                        f"{ms(percentile(took, 50))} vs {ms(dump_s)}",
                    ],
                    [
                        f"{label}: during them, failed / longest gap",
                        _seen(cp),
                    ],
                    [
                        f"{label}: restore through the API vs pg_restore",
                        f"{ms(restore_s)} vs {ms(pg_restore_s)}",
                    ],
                    [
                        f"{label}: during it, failed / longest gap",
                        _seen(rs),
                    ],
                ]
                for outage in (*cp, *rs):
                    for error in outage.errors[:3]:
                        print(f"{label}: {error}")
                expect(await http.delete(f"/v1/sessions/{sid}", headers=owner), 200)
        filesystem = filesystem_of(data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    facts = machine_facts()
    print()
    print(f"agentdb proxy benchmark: {facts['cpu']}, {facts['cores']} cores, {filesystem}")
    print(markdown_table(["what", "measured"], rows))
    print("proxy and direct clients open a new connection per query; the pooled client keeps one")


if __name__ == "__main__":
    asyncio.run(main())
