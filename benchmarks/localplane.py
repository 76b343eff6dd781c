"""Benchmark of the local control plane on the embedded PostgreSQL, against pg_dump/pg_restore.

Measures, in one run and on one cluster (a fresh temporary data dir unless `--data-dir`):

- project create: POST /projects until its operations finish (median of `--creates`, 7);
- for an app database filled to ~10 MB and ~100 MB (`--large` adds ~1 GB; `pg_database_size`,
  the ~7.5 MB of an empty database's catalog included):
  - snapshot: POST /projects/{p}/branches/{b}/snapshot until its operations finish;
  - restore: POST /projects/{p}/snapshots/{s}/restore with `finalize_restore: true` onto the live
    branch (whose id changes with every finalized restore), until its operations finish. Run
    in turn with no client; while a thread opens a new connection and runs a tiny
    `SELECT count(*)` every ~2 ms after the previous one against the project's connection URI;
    and with that probe plus one idle long-lived connection, as an app's pool keeps (the swap
    must end it). Reported: the totals, the longest run of failed queries (client downtime),
    the longest gap between successful queries, and the plane's own swap window
    (`LocalPlane.last_swap_downtime_s`);
  - the naive way on the same database: `pg_dump -Fc` to a file, then `CREATE DATABASE` +
    `pg_restore` of it, as the superuser;
  - ratios naive / snapshot and naive / restore, beside DESIGN.md's targets.

Every figure is the median of `--repeat` runs (default 5 at 10 MB, 3 at 100 MB and 1 GB). The data
is filled by the project's own role (`items(id bigserial primary key, payload text, n int)` with
md5 text), then vacuumed and checkpointed, so the first snapshot does not pay for flushing the
fill. The probing client counts a 100-row `heartbeat` table (a count of `items` would itself take
10 ms to 0.5 s). The table is printed as markdown; the raw samples go to
benchmarks/results/localplane.json.

Run: `.venv/bin/python benchmarks/localplane.py [--large] [--repeat N] [--data-dir DIR]`
(`make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from _common import (
    JSON,
    BenchmarkError,
    ClientProbe,
    Outage,
    Plane,
    Stats,
    expect,
    filesystem_of,
    local_plane,
    machine_facts,
    markdown_table,
    mebibytes,
    physical_names,
    quiet_logs,
    seconds,
    server_version,
    spread,
    wait_ops,
)
from psycopg import sql

from agentdb.pg import ServerInfo

MB = 2**20
RESULTS = Path(__file__).parent / "results" / "localplane.json"
PROBE_QUERY = "SELECT count(*) FROM heartbeat"
# Time the probe runs before and after each restore, so both edges of an outage are seen.
PROBE_MARGIN_S = 0.1


@dataclass(frozen=True)
class Size:
    """One database size and DESIGN.md's targets for it (seconds)."""

    label: str
    target_bytes: int
    repeat: int
    snapshot_target_s: float
    restore_target_s: float


SIZES = [
    Size("10 MB", 10 * MB, repeat=5, snapshot_target_s=0.3, restore_target_s=0.3),
    Size("100 MB", 100 * MB, repeat=3, snapshot_target_s=0.75, restore_target_s=0.75),
]
LARGE = Size("1 GB", 1024 * MB, repeat=3, snapshot_target_s=3, restore_target_s=5)
CREATE_TARGET_S = 0.3
DOWNTIME_TARGET_S = 0.1
NAIVE_RATIO_TARGET = 3.0  # at 1 GB


@dataclass
class SizeResult:
    size: Size
    db_bytes: int
    dump_bytes: int
    snapshot: Stats
    restore: Stats  # with no client connecting
    restore_probed: Stats  # while the probing client connects every ~2 ms
    downtime: Stats  # longest run of failed client queries, per probed restore
    gap: Stats  # longest time between two successful client queries, per probed restore
    swap: Stats  # the plane's own measure of the swap, restores with no session to end
    downtime_pooled: Stats  # the same two while an idle pooled connection is open
    swap_pooled: Stats
    pg_dump: Stats
    pg_restore: Stats
    naive: Stats
    outages: list[Outage] = field(default_factory=list)
    outages_pooled: list[Outage] = field(default_factory=list)

    @property
    def naive_over_snapshot(self) -> float:
        return self.naive.median / self.snapshot.median

    @property
    def naive_over_restore(self) -> float:
        return self.naive.median / self.restore.median


# --- the API calls ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    id: str
    branch_id: str
    uri: str
    database: str  # the physical database behind the URI


async def create_project(lp: Plane, name: str) -> tuple[Project, float]:
    """A new project, and the seconds from POST until its operations finished."""
    started = time.perf_counter()
    body = expect(await lp.http.post("/projects", json={"project": {"name": name}}), 201)
    await wait_ops(lp.http, body["project"]["id"], body["operations"])
    elapsed = time.perf_counter() - started
    details = body["connection_uris"][0]
    _, database = await physical_names(details["connection_uri"])
    project = Project(
        id=body["project"]["id"],
        branch_id=body["branch"]["id"],
        uri=details["connection_uri"],
        database=database,
    )
    return project, elapsed


async def delete_projects(lp: Plane, projects: list[Project]) -> None:
    for project in projects:
        expect(await lp.http.delete(f"/projects/{project.id}"), 200)
    await lp.plane.drain()  # their databases are dropped in the background


async def take_snapshot(lp: Plane, project: Project, name: str) -> tuple[str, float]:
    """The new snapshot's id, and the seconds until its operations finished."""
    started = time.perf_counter()
    resp = await lp.http.post(
        f"/projects/{project.id}/branches/{project.branch_id}/snapshot", params={"name": name}
    )
    body = expect(resp, 200, 201)
    await wait_ops(lp.http, project.id, body["operations"])
    return body["snapshot"]["id"], time.perf_counter() - started


async def restore_snapshot(lp: Plane, project: Project, snapshot_id: str) -> tuple[str, float]:
    """Restores onto the live branch with finalize_restore; returns the new live branch id (a
    finalized restore replaces the branch) and the seconds until its operations finished."""
    started = time.perf_counter()
    resp = await lp.http.post(
        f"/projects/{project.id}/snapshots/{snapshot_id}/restore",
        json={"target_branch_id": project.branch_id, "finalize_restore": True},
    )
    body = expect(resp, 200, 201)
    await wait_ops(lp.http, project.id, body["operations"])
    return body["branch"]["id"], time.perf_counter() - started


# --- the data --------------------------------------------------------------------------------


async def database_size(conn: psycopg.AsyncConnection) -> int:
    cur = await conn.execute("SELECT pg_database_size(current_database())")
    row = await cur.fetchone()
    if row is None:
        raise BenchmarkError("pg_database_size returned no row")
    return int(row[0])


async def fill(uri: str, target_bytes: int) -> int:
    """Fills the database behind `uri` (as its own role) to about `target_bytes`; returns the
    size reached. Rows are ~190 bytes with their index entry; each batch re-estimates that."""
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, payload text, n int)")
        await conn.execute("CREATE TABLE heartbeat (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO heartbeat SELECT generate_series(1, 100)")
        size, row_bytes, next_id = await database_size(conn), 190.0, 1
        while size < target_bytes * 0.99:
            rows = max(1000, min(1_000_000, int((target_bytes - size) / row_bytes)))
            await conn.execute(
                "INSERT INTO items (payload, n) SELECT md5(g::text) || md5((g * 31)::text)"
                " || md5((g * 97)::text), (g * 7919) %% 100000"
                " FROM generate_series(%s::bigint, %s::bigint) AS g",
                (next_id, next_id + rows - 1),
            )
            next_id += rows
            grown = await database_size(conn)
            row_bytes = max(50.0, (grown - size) / rows)
            size = grown
        await conn.execute("VACUUM ANALYZE items")
        return await database_size(conn)


async def superuser_execute(server: ServerInfo, statement: sql.Composable | str) -> None:
    async with await psycopg.AsyncConnection.connect(server.conninfo(), autocommit=True) as conn:
        await conn.execute(statement)


# --- the naive way ---------------------------------------------------------------------------


async def run_tool(server: ServerInfo, binary: str, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(server.binary(binary)),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=server.subprocess_env(),
    )
    _out, err = await proc.communicate()
    if proc.returncode != 0:
        raise BenchmarkError(f"{binary} failed: {err.decode(errors='replace').strip()[:500]}")


async def dump_and_restore(
    server: ServerInfo, database: str, workdir: Path, run: int
) -> tuple[float, float, int]:
    """`pg_dump -Fc` of `database` to a file, then `CREATE DATABASE` + `pg_restore` into it.
    Returns the dump's seconds, the restore's seconds and the dump file's size."""
    archive = workdir / f"{database}.dump"
    copy = f"bench_naive_{run}"
    started = time.perf_counter()
    await run_tool(server, "pg_dump", "-Fc", "-d", database, "-f", str(archive))
    dumped = time.perf_counter()
    await superuser_execute(server, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(copy)))
    await run_tool(server, "pg_restore", "--exit-on-error", "-d", copy, str(archive))
    restored = time.perf_counter()
    dump_bytes = archive.stat().st_size
    archive.unlink()
    await superuser_execute(
        server, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(copy))
    )
    return dumped - started, restored - dumped, dump_bytes


# --- one size, every measurement ---------------------------------------------------------------


async def bench_creates(lp: Plane, runs: int) -> Stats:
    projects, times = [], []
    for run in range(runs):
        project, elapsed = await create_project(lp, f"bench-create-{run}")
        projects.append(project)
        times.append(elapsed)
    await delete_projects(lp, projects)
    return Stats(tuple(times))


async def bench_naive(
    lp: Plane, project: Project, repeat: int, workdir: Path
) -> tuple[Stats, Stats, int]:
    dumps, restores, dump_bytes = [], [], 0
    for run in range(repeat):
        dump_s, restore_s, dump_bytes = await dump_and_restore(
            lp.server, project.database, workdir, run
        )
        dumps.append(dump_s)
        restores.append(restore_s)
    return Stats(tuple(dumps)), Stats(tuple(restores)), dump_bytes


async def bench_snapshots(lp: Plane, project: Project, repeat: int) -> tuple[Stats, list[str]]:
    ids, times = [], []
    for run in range(repeat):
        snapshot_id, elapsed = await take_snapshot(lp, project, f"bench {run}")
        ids.append(snapshot_id)
        times.append(elapsed)
    return Stats(tuple(times)), ids


@dataclass(frozen=True)
class RestoreMode:
    """Who is connected to the live database while it is restored."""

    name: str
    probe: bool  # the probing client's short connections
    hold: bool  # one idle long-lived connection too, as an app's connection pool keeps


QUIET = RestoreMode("no client", probe=False, hold=False)
PROBED = RestoreMode("short connections", probe=True, hold=False)
POOLED = RestoreMode("short connections + 1 pooled", probe=True, hold=True)


@dataclass
class RestoreRun:
    seconds: float
    swap_s: float
    outage: Outage | None  # None: no client was probing


async def restore_once(
    lp: Plane, project: Project, snapshot_id: str, mode: RestoreMode, interval_s: float
) -> tuple[Project, RestoreRun]:
    """One finalized restore with `mode`'s clients; returns the project with its new live
    branch id, and the run."""
    lp.plane.last_swap_downtime_s = None
    held = await psycopg.AsyncConnection.connect(project.uri) if mode.hold else None
    try:
        if mode.probe:
            with ClientProbe(project.uri, PROBE_QUERY, interval_s=interval_s) as probe:
                await asyncio.sleep(PROBE_MARGIN_S)
                live_id, elapsed = await restore_snapshot(lp, project, snapshot_id)
                await asyncio.sleep(PROBE_MARGIN_S)
            outage: Outage | None = probe.outage()
        else:
            live_id, elapsed = await restore_snapshot(lp, project, snapshot_id)
            outage = None
    finally:
        if held is not None:
            await held.close()  # the swap terminated it; an app's pool would reconnect
    swap_s = lp.plane.last_swap_downtime_s
    if swap_s is None:
        raise BenchmarkError("the restore finished without a swap")
    project = Project(id=project.id, branch_id=live_id, uri=project.uri, database=project.database)
    return project, RestoreRun(seconds=elapsed, swap_s=swap_s, outage=outage)


async def bench_restores(
    lp: Plane, project: Project, snapshot_id: str, repeat: int, interval_s: float
) -> dict[RestoreMode, list[RestoreRun]]:
    """`repeat` restores in each mode, interleaved. The operation's own time is taken with no
    client: the probe's new connection every few ms costs CPU (SCRAM, backend start-up) that
    the restore would otherwise have."""
    runs: dict[RestoreMode, list[RestoreRun]] = {QUIET: [], PROBED: [], POOLED: []}
    for _ in range(repeat):
        for mode, done in runs.items():
            project, run = await restore_once(lp, project, snapshot_id, mode, interval_s)
            done.append(run)
    await delete_projects(lp, [project])
    return runs


def outages(runs: list[RestoreRun]) -> list[Outage]:
    return [r.outage for r in runs if r.outage is not None]


async def bench_size(
    lp: Plane, size: Size, repeat: int, workdir: Path, interval_s: float
) -> SizeResult:
    print(f"  {size.label}: filling...", flush=True)
    project, _ = await create_project(lp, f"bench-{size.label.replace(' ', '')}")
    db_bytes = await fill(project.uri, size.target_bytes)
    await superuser_execute(lp.server, "CHECKPOINT")
    print(f"  {size.label}: {mebibytes(db_bytes)}; pg_dump + pg_restore...", flush=True)
    pg_dump, pg_restore, dump_bytes = await bench_naive(lp, project, repeat, workdir)
    print(f"  {size.label}: snapshots...", flush=True)
    snapshot, snapshot_ids = await bench_snapshots(lp, project, repeat)
    print(f"  {size.label}: restores...", flush=True)
    runs = await bench_restores(lp, project, snapshot_ids[0], repeat, interval_s)
    probed, pooled = outages(runs[PROBED]), outages(runs[POOLED])
    return SizeResult(
        size=size,
        db_bytes=db_bytes,
        dump_bytes=dump_bytes,
        snapshot=snapshot,
        restore=Stats(tuple(r.seconds for r in runs[QUIET])),
        restore_probed=Stats(tuple(r.seconds for r in runs[PROBED])),
        downtime=Stats(tuple(o.failure_window_s for o in probed)),
        gap=Stats(tuple(o.longest_gap_s for o in probed)),
        swap=Stats(tuple(r.swap_s for r in runs[QUIET] + runs[PROBED])),
        downtime_pooled=Stats(tuple(o.failure_window_s for o in pooled)),
        swap_pooled=Stats(tuple(r.swap_s for r in runs[POOLED])),
        pg_dump=pg_dump,
        pg_restore=pg_restore,
        naive=Stats(tuple(d + r for d, r in zip(pg_dump.samples, pg_restore.samples, strict=True))),
        outages=probed,
        outages_pooled=pooled,
    )


# --- the report ------------------------------------------------------------------------------


def verdict(value: float, limit: float) -> str:
    return "yes" if value <= limit else "**no**"


def probe_note(outages: list[Outage]) -> str:
    failed = sum(o.failed for o in outages)
    probes = sum(o.probes for o in outages)
    period = seconds(statistics.median(o.period_s for o in outages))
    return f"{failed}/{probes} failed, 1 per {period}"


def size_rows(r: SizeResult) -> list[list[str]]:
    label = f"{r.size.label} ({mebibytes(r.db_bytes)})"
    snap_t, rest_t, down_t = r.size.snapshot_target_s, r.size.restore_target_s, DOWNTIME_TARGET_S
    ratio_target = f"≥ {NAIVE_RATIO_TARGET:.0f}x" if r.size is LARGE else ""
    ratio_ok = verdict(NAIVE_RATIO_TARGET, r.naive_over_snapshot) if ratio_target else ""

    def timed(name: str, stats: Stats, limit: float | None = None) -> list[str]:
        target, ok = (
            ("", "") if limit is None else (f"≤ {seconds(limit)}", verdict(stats.median, limit))
        )
        return [
            name,
            label,
            seconds(stats.median),
            spread(stats),
            str(len(stats.samples)),
            target,
            ok,
        ]

    def ratio(name: str, value: float, target: str = "", ok: str = "") -> list[str]:
        return [name, label, f"{value:.1f}x", "", "", target, ok]

    return [
        timed("snapshot", r.snapshot, snap_t),
        timed("restore (finalize), total, no client", r.restore, rest_t),
        timed("restore, total, under the probing client", r.restore_probed),
        timed(f"restore: client downtime ({probe_note(r.outages)})", r.downtime, down_t),
        timed("restore: longest gap between OK queries", r.gap),
        timed("restore: swap window (server side)", r.swap, down_t),
        timed(
            f"restore + pooled conn: client downtime ({probe_note(r.outages_pooled)})",
            r.downtime_pooled,
            down_t,
        ),
        timed("restore + pooled conn: swap window (server side)", r.swap_pooled, down_t),
        timed(f"pg_dump -Fc ({mebibytes(r.dump_bytes)} file)", r.pg_dump),
        timed("CREATE DATABASE + pg_restore", r.pg_restore),
        timed("naive total (dump + restore)", r.naive),
        ratio("naive / snapshot", r.naive_over_snapshot, ratio_target, ratio_ok),
        ratio("naive / restore", r.naive_over_restore),
    ]


def report(facts: JSON, creates: Stats, results: list[SizeResult]) -> str:
    headers = ["operation", "database", "median", "min - max", "runs", "target", "meets"]
    rows = [
        [
            "project create",
            "empty",
            seconds(creates.median),
            spread(creates),
            str(len(creates.samples)),
            f"≤ {seconds(CREATE_TARGET_S)}",
            verdict(creates.median, CREATE_TARGET_S),
        ]
    ]
    for r in results:
        rows += size_rows(r)
    machine = ", ".join(f"{k}: {v}" for k, v in facts.items())
    errors = sorted({e for r in results for o in r.outages + r.outages_pooled for e in o.errors})
    lines = [f"Machine: {machine}", "", markdown_table(headers, rows)]
    if errors:
        lines += ["", "Errors seen by the probing client:", *(f"- {e}" for e in errors)]
    return "\n".join(lines)


def probe_json(o: Outage) -> JSON:
    return {
        "probes": o.probes,
        "failed": o.failed,
        "period_s": o.period_s,
        "slowest_ok_probe_s": o.slowest_probe_s,
        "errors": o.errors,
    }


def result_json(facts: JSON, creates: Stats, results: list[SizeResult]) -> JSON:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": facts,
        "project_create_s": creates.as_json(),
        "sizes": [
            {
                "label": r.size.label,
                "database_bytes": r.db_bytes,
                "dump_bytes": r.dump_bytes,
                "snapshot_s": r.snapshot.as_json(),
                "restore_total_s": r.restore.as_json(),
                "restore_total_probed_s": r.restore_probed.as_json(),
                "restore_client_downtime_s": r.downtime.as_json(),
                "restore_longest_ok_gap_s": r.gap.as_json(),
                "restore_swap_window_s": r.swap.as_json(),
                "restore_pooled_client_downtime_s": r.downtime_pooled.as_json(),
                "restore_pooled_swap_window_s": r.swap_pooled.as_json(),
                "restore_probes": [probe_json(o) for o in r.outages],
                "restore_pooled_probes": [probe_json(o) for o in r.outages_pooled],
                "pg_dump_s": r.pg_dump.as_json(),
                "pg_restore_s": r.pg_restore.as_json(),
                "naive_total_s": r.naive.as_json(),
                "naive_over_snapshot": r.naive_over_snapshot,
                "naive_over_restore": r.naive_over_restore,
                "targets_s": {
                    "snapshot": r.size.snapshot_target_s,
                    "restore": r.size.restore_target_s,
                    "downtime": DOWNTIME_TARGET_S,
                },
            }
            for r in results
        ],
    }


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="also measure a ~1 GB database")
    parser.add_argument("--repeat", type=int, help="runs per size (default 5 at 10 MB, else 3)")
    parser.add_argument("--creates", type=int, default=7, help="project creates (default 7)")
    parser.add_argument("--data-dir", type=Path, help="cluster dir (default: a temporary one)")
    parser.add_argument("--probe-interval-ms", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    return parser.parse_args()


# Filesystems where PostgreSQL's `clone` (copy_file_range on Linux) shares blocks instead of
# copying them; elsewhere the probe succeeds too, but each copy is a full in-kernel copy.
REFLINK_FILESYSTEMS = {"xfs", "btrfs", "bcachefs", "zfs", "apfs"}


def clone_fact(clone: bool, filesystem: str) -> str:
    if clone and filesystem not in REFLINK_FILESYSTEMS:
        return f"used, but {filesystem} has no reflinks: a full in-kernel copy"
    return "used" if clone else "not available"


async def bench(args: argparse.Namespace, data_dir: Path) -> tuple[JSON, Stats, list[SizeResult]]:
    sizes = [*SIZES, LARGE] if args.large else SIZES
    workdir = data_dir / "bench-dumps"
    workdir.mkdir(parents=True, exist_ok=True)
    async with local_plane(data_dir) as lp:
        facts = {
            **machine_facts(),
            "postgresql": await server_version(lp.server),
            "embedded": lp.server.embedded,
            "filesystem": filesystem_of(data_dir),
            "file_copy_method=clone": clone_fact(
                lp.plane._engine.clone_supported,  # noqa: SLF001
                filesystem_of(data_dir),
            ),
        }
        print("project create...", flush=True)
        creates = await bench_creates(lp, args.creates)
        results = []
        for size in sizes:
            repeat = args.repeat or size.repeat
            interval_s = args.probe_interval_ms / 1000
            results.append(await bench_size(lp, size, repeat, workdir, interval_s))
    shutil.rmtree(workdir, ignore_errors=True)
    return facts, creates, results


def main() -> None:
    args = parse_args()
    quiet_logs()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="agentdb-bench-"))
    try:
        facts, creates, results = asyncio.run(bench(args, data_dir))
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print()
    print(report(facts, creates, results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(result_json(facts, creates, results), indent=2) + "\n", encoding="utf-8"
    )
    print(f"\nRaw results: {args.json}")


if __name__ == "__main__":
    main()
