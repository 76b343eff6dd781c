"""Shared pieces of the benchmarks: the in-process local plane, operation waits, client probes,
statistics and markdown tables. Imported by the scripts next to it (`from _common import ...`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import platform
import queue
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import psutil
import psycopg
import structlog
from litestar import Litestar

from agentdb.localplane import LocalPlane, create_app, running
from agentdb.pg import ServerInfo, open_server
from agentdb.settings import Settings

JSON = dict[str, Any]
#: The admin token the benchmarks' `agentdb serve` runs with.
ADMIN = "adb_admin_" + "benchmark-token-0123456789abcdefghij"
API_LINE = re.compile(r"^agentdb API: (http://127\.0\.0\.1:\d+)/v1 ")
AGENTDB = Path(sys.executable).with_name("agentdb")
TERMINAL_OK = {"finished", "skipped"}


class BenchmarkError(RuntimeError):
    """The local plane answered something a benchmark cannot go on from."""


# --- the local plane, in process ------------------------------------------------------------


@dataclass
class Plane:
    """A running local plane: its app, the server under it and an HTTP client for its API."""

    app: Litestar
    server: ServerInfo
    http: httpx.AsyncClient

    @property
    def plane(self) -> LocalPlane:
        plane: LocalPlane = self.app.state.plane
        return plane


def quiet_logs() -> None:
    """Only warnings and errors from agentdb and httpx, so the table is not buried in info lines."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("httpx").setLevel(logging.WARNING)


@asynccontextmanager
async def local_plane(data_dir: Path) -> AsyncIterator[Plane]:
    """The embedded PostgreSQL in `data_dir` and the local plane's app over it, for the block."""
    settings = Settings(data_dir=data_dir)
    async with open_server(settings) as server:
        app = create_app(settings, server=server)
        async with (
            running(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://localplane/api/v2",
                headers={"Authorization": "Bearer bench"},
                timeout=600,
            ) as http,
        ):
            yield Plane(app=app, server=server, http=http)


async def physical_names(uri: str) -> tuple[str, str]:
    """The role and database behind `uri` inside the cluster (the local plane's connection
    strings carry Neon's names; its proxy maps them to these)."""
    async with await psycopg.AsyncConnection.connect(uri) as conn:
        row = await (await conn.execute("SELECT current_user, current_database()")).fetchone()
    if row is None:
        raise BenchmarkError("SELECT current_user returned no row")
    return str(row[0]), str(row[1])


async def fill_mebibytes(uri: str, mebibytes_wanted: int) -> int:
    """Rows of about 1 KiB until the database holds about `mebibytes_wanted`; its size."""
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute("CREATE TABLE fill (id int, body text)")
        rows = mebibytes_wanted * 900
        for first in range(0, rows, 100_000):
            await conn.execute(
                "INSERT INTO fill SELECT g, repeat(md5(g::text), 30)"
                " FROM generate_series(%s::int, %s::int) g",
                (first + 1, min(rows, first + 100_000)),
            )
        row = await (await conn.execute("SELECT pg_database_size(current_database())")).fetchone()
        return int(row[0]) if row else 0


def expect(resp: httpx.Response, *statuses: int) -> JSON:
    """The response's JSON body, if its status is one of `statuses`."""
    if resp.status_code not in statuses:
        raise BenchmarkError(
            f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text}"
        )
    body: JSON = resp.json()
    return body


async def wait_ops(
    http: httpx.AsyncClient,
    project_id: str,
    operations: Sequence[JSON],
    *,
    poll_s: float = 0.005,
    timeout_s: float = 600,
) -> None:
    """Polls every operation until it finished (every `poll_s`); raises on error or timeout."""
    deadline = time.monotonic() + timeout_s
    pending = [op["id"] for op in operations]
    while pending:
        still = []
        for op_id in pending:
            body = expect(await http.get(f"/projects/{project_id}/operations/{op_id}"), 200)
            op = body["operation"]
            if op["status"] in {"error", "cancelled"}:
                raise BenchmarkError(f"operation {op['action']} ended {op['status']}: {op}")
            if op["status"] not in TERMINAL_OK:
                still.append(op_id)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"operations still running after {timeout_s} s: {pending}")
            await asyncio.sleep(poll_s)


# --- what clients see: a loop of short connections -----------------------------------------


@dataclass(frozen=True)
class Probe:
    """One client attempt: connect, run the query, disconnect."""

    start: float
    end: float
    ok: bool
    error: str = ""


@dataclass
class Outage:
    """What the probes saw over a window of time."""

    probes: int
    failed: int
    failure_window_s: float  # longest run of failures: first failed start -> next success start
    longest_gap_s: float  # longest time between two successful probes' ends (failures + stalls)
    slowest_probe_s: float  # longest single successful probe (a connect that waited on a lock)
    period_s: float  # median time between two probes' starts: the resolution of the above
    errors: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, probes: Sequence[Probe]) -> Outage:
        failure_window = 0.0
        run_start: float | None = None
        for probe in probes:
            if not probe.ok and run_start is None:
                run_start = probe.start
            elif probe.ok and run_start is not None:
                failure_window = max(failure_window, probe.start - run_start)
                run_start = None
        if run_start is not None:  # still failing when the probes stopped
            failure_window = max(failure_window, probes[-1].end - run_start)
        ends = [p.end for p in probes if p.ok]
        gaps = [b - a for a, b in itertools.pairwise(ends)]
        durations = [p.end - p.start for p in probes if p.ok]
        starts = [b.start - a.start for a, b in itertools.pairwise(probes)]
        return cls(
            probes=len(probes),
            failed=sum(not p.ok for p in probes),
            failure_window_s=failure_window,
            longest_gap_s=max(gaps, default=0.0),
            slowest_probe_s=max(durations, default=0.0),
            period_s=statistics.median(starts) if starts else 0.0,
            errors=sorted({p.error for p in probes if not p.ok}),
        )


class ClientProbe:
    """Connects to `uri` and runs `query` every `interval_s`, in a thread with its own asyncio
    loop, so the plane's work on the benchmark's loop cannot delay (and inflate) the probes.

    `with ClientProbe(uri, query) as probe: ...` then `probe.outage()`.
    """

    def __init__(self, uri: str, query: str, *, interval_s: float = 0.002) -> None:
        self._uri = uri
        self._query = query
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="client-probe", daemon=True)
        self.probes: list[Probe] = []

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def outage(self) -> Outage:
        return Outage.of(self.probes)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        while not self._stop.is_set():
            self.probes.append(await self._once())
            await asyncio.sleep(self._interval_s)

    async def _once(self) -> Probe:
        start = time.perf_counter()
        try:
            async with await psycopg.AsyncConnection.connect(
                self._uri, autocommit=True, connect_timeout=10
            ) as conn:
                await conn.execute(self._query)
        except (psycopg.Error, OSError) as exc:
            return Probe(start, time.perf_counter(), ok=False, error=_reason(exc))
        return Probe(start, time.perf_counter(), ok=True)


def _reason(exc: Exception) -> str:
    """The server's message without the connection preamble or names: `FATAL: database "…"
    is not currently accepting connections`, so equal causes group together."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for marker in ("FATAL:", "ERROR:"):
        if marker in text:
            text = marker + text.rsplit(marker, 1)[1]
            break
    return re.sub(r'"[^"]*"', '"…"', text)[:160]


# --- numbers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Median and range of repeated measurements (seconds or any other unit)."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def as_json(self) -> JSON:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "samples": list(self.samples),
        }


def seconds(value: float) -> str:
    """0.0123 -> '12 ms', 1.234 -> '1.23 s'."""
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def spread(stats: Stats) -> str:
    return f"{seconds(stats.low)} - {seconds(stats.high)}"


def mebibytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table whose columns are padded to line up in a terminal too."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


# --- the machine -----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or platform.machine()
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding `path` (ext4, xfs, btrfs...)."""
    resolved = str(path.resolve())
    best, fstype = "", "unknown"
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, fstype = mount, part.fstype
    return fstype


async def server_version(server: ServerInfo) -> str:
    async with await psycopg.AsyncConnection.connect(server.conninfo(), autocommit=True) as conn:
        cur = await conn.execute("SELECT current_setting('server_version')")
        row = await cur.fetchone()
    return str(row[0]) if row else "unknown"


def machine_facts() -> JSON:
    memory = psutil.virtual_memory().total
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "memory": mebibytes(memory),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


# --- agentdb serve, as a child process -----------------------------------------------------


@dataclass
class Served:
    url: str
    process: psutil.Process
    superuser_dsn: str
    server: ServerInfo


@asynccontextmanager
async def served(data_dir: Path, **settings: str) -> AsyncIterator[Served]:
    """The embedded PostgreSQL in `data_dir/pg`, and `agentdb serve` on it, for the block;
    `settings` are more `AGENTDB_*` variables for it (`sql_idle_connections="0"`)."""
    async with open_server(Settings(data_dir=data_dir)) as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AGENTDB_")},
            "AGENTDB_ADMIN_TOKEN": ADMIN,
            "AGENTDB_DATABASE_URL": server.dsn(),
            "AGENTDB_LOG_LEVEL": "warning",
            **{f"AGENTDB_{name.upper()}": value for name, value in settings.items()},
        }
        log = (data_dir / "serve.log").open("wb")
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
            [str(AGENTDB), "serve", "--port", "0", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
            # Its own session, as a service runs: Linux's autogroup scheduling then shares the
            # CPU between agentdb, PostgreSQL and this benchmark's clients as it would be shared
            # between a service and remote callers.
            start_new_session=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:
            assert proc.stdout is not None  # noqa: S101
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        try:
            url = None
            while url is None:
                line = await asyncio.to_thread(lines.get, timeout=120)
                if line is None:
                    raise RuntimeError(f"agentdb serve exited: {proc.wait()}")
                if match := API_LINE.match(line):
                    url = match.group(1)
            yield Served(url, psutil.Process(proc.pid), server.dsn(), server)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
