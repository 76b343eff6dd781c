"""Crash safety: a plane process SIGKILLed at a named kill point inside a snapshot, branch or
restore job; a restarted plane resumes the job and every database is reachable with the last
acknowledged content (or the restore target). Also: databases a crash left closed are reopened."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from support import run_until_killed, server_payload, wait_runner_gone

from agentdb.localplane import LocalPlane
from agentdb.localplane._models import ProjectCreateBody, SnapshotRestoreBody
from agentdb.pg import EmbeddedPostgres, PostgresSupervisor, ServerInfo

from .helpers import create_project, direct, execute, fetch, physical, wait_ops

# The doomed plane: runs one operation with a kill point armed and is SIGKILLed there.
_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from agentdb.localplane import LocalPlane
    from agentdb.localplane._models import (
        BranchCreateBody, BranchRestoreBody, ProjectCreateBody, SnapshotRestoreBody)
    from agentdb.pg import ServerInfo

    async def main():
        cfg = json.loads(sys.stdin.read())
        s = cfg["server"]
        server = ServerInfo(host=s["host"], port=s["port"], superuser=s["superuser"],
                            password=s["password"], bin_dir=Path(s["bin_dir"]), embedded=True)
        async with LocalPlane.open(server, meter_interval_s=3600) as plane:
            print("runner-id", plane.runner_id, flush=True)
            plane._engine.kill.arm(cfg["kill_at"])
            pid, action = cfg.get("project_id"), cfg["action"]
            if action == "create_project":
                await plane.create_project(ProjectCreateBody.model_validate(
                    {"project": {"name": cfg["name"]}}))
            elif action == "snapshot":
                await plane.create_snapshot(pid, cfg["branch_id"], name="cp", expires_at=None,
                                            lsn=None, timestamp=None)
            elif action == "branch":
                await plane.create_branch(pid, BranchCreateBody.model_validate(
                    {"branch": {"name": "child"}, "endpoints": [{"type": "read_write"}]}))
            elif action == "restore_snapshot":
                await plane.restore_snapshot(pid, cfg["snapshot_id"], SnapshotRestoreBody(
                    target_branch_id=cfg["branch_id"], finalize_restore=True))
            elif action == "restore_branch":
                await plane.restore_branch(pid, cfg["branch_id"], BranchRestoreBody(
                    source_branch_id=cfg["source_branch_id"], preserve_under_name="old"))
            await plane.drain()
        print("survived", flush=True)

    asyncio.run(main())
    """
)


async def _run_until_killed(server: ServerInfo, **cfg: Any) -> int:
    """Runs the doomed plane; returns its runner id once it died of SIGKILL."""
    out = await run_until_killed(_CHILD, {"server": server_payload(server), **cfg}, wait_s=120)
    line = next(x for x in out.splitlines() if x.startswith("runner-id "))
    return int(line.split()[1])


async def _accepts(uri: str) -> bool:
    """Whether PostgreSQL lets a client in: `uri` goes straight to it (`direct`), since the
    plane's proxy would hold a client at a closed database, and wake a suspended endpoint."""
    try:
        await fetch(uri, "SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


async def _resume(pg_server: ServerInfo, plane: LocalPlane, runner_id: int) -> None:
    """A restarted plane: it takes over the dead runner's jobs and finishes them."""
    await wait_runner_gone(plane, runner_id)
    async with LocalPlane.open(pg_server, meter_interval_s=3600) as restarted:
        await restarted.drain()


async def _project_with_rows(neon_http: httpx.AsyncClient) -> tuple[str, str, str]:
    created = await create_project(neon_http)
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1)")
    return created["project"]["id"], created["branch"]["id"], uri


async def _all_finished(neon_http: httpx.AsyncClient, project_id: str) -> None:
    ops = (await neon_http.get(f"/projects/{project_id}/operations")).json()["operations"]
    assert {op["status"] for op in ops} == {"finished"}, ops


@pytest.mark.parametrize("kill_at", ["copy.source_closed", "copy.created", "job.before_finish"])
async def test_snapshot_cut_off_mid_copy_reopens_the_live_database(
    neon_http: httpx.AsyncClient, plane: LocalPlane, pg_server: ServerInfo, kill_at: str
) -> None:
    project_id, branch_id, uri = await _project_with_rows(neon_http)
    straight = await direct(uri, pg_server)
    runner = await _run_until_killed(
        pg_server, kill_at=kill_at, action="snapshot", project_id=project_id, branch_id=branch_id
    )
    if kill_at == "copy.source_closed":
        # What the crash leaves: the live database refuses every client.
        assert not await _accepts(straight)
    await _resume(pg_server, plane, runner)
    assert await fetch(uri, "SELECT n FROM t") == [(1,)]
    await _all_finished(neon_http, project_id)
    snapshots = (await neon_http.get(f"/projects/{project_id}/snapshots")).json()["snapshots"]
    assert len(snapshots) == 1


async def test_a_project_cut_off_after_its_database_was_made_is_finished_on_restart(
    neon_http: httpx.AsyncClient, plane: LocalPlane, pg_server: ServerInfo
) -> None:
    # Killed between CREATE DATABASE and opening it for setup: the database exists, closed.
    runner = await _run_until_killed(
        pg_server, kill_at="create.made", action="create_project", name="cut-off-create"
    )
    await _resume(pg_server, plane, runner)
    projects = (await neon_http.get("/projects", params={"search": "cut-off-create"})).json()
    (project,) = projects["projects"]
    await _all_finished(neon_http, project["id"])
    uri = (
        await neon_http.get(
            f"/projects/{project['id']}/connection_uri",
            params={"database_name": "neondb", "role_name": "neondb_owner"},
        )
    ).json()["uri"]
    await execute(uri, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1)")
    assert await fetch(uri, "SELECT n FROM t") == [(1,)]


@pytest.mark.parametrize("kill_at", ["copy.source_closed", "copy.created"])
async def test_branch_cut_off_mid_copy_reopens_parent_and_finishes_the_child(
    neon_http: httpx.AsyncClient, plane: LocalPlane, pg_server: ServerInfo, kill_at: str
) -> None:
    project_id, _branch_id, uri = await _project_with_rows(neon_http)
    runner = await _run_until_killed(
        pg_server, kill_at=kill_at, action="branch", project_id=project_id
    )
    await _resume(pg_server, plane, runner)
    assert await fetch(uri, "SELECT n FROM t") == [(1,)]
    await _all_finished(neon_http, project_id)
    branches = (await neon_http.get(f"/projects/{project_id}/branches")).json()["branches"]
    child = next(b for b in branches if b["name"] == "child")
    assert child["current_state"] == "ready"
    child_uri = (
        await neon_http.get(
            f"/projects/{project_id}/connection_uri",
            params={
                "branch_id": child["id"],
                "database_name": "neondb",
                "role_name": "neondb_owner",
            },
        )
    ).json()["uri"]
    assert await fetch(child_uri, "SELECT n FROM t") == [(1,)]


@pytest.mark.parametrize(
    "kill_at", ["swap.live_closed", "swap.renamed", "job.step_done:1", "job.before_finish"]
)
async def test_restore_cut_off_ends_in_the_restore_target(
    neon_http: httpx.AsyncClient, plane: LocalPlane, pg_server: ServerInfo, kill_at: str
) -> None:
    project_id, branch_id, uri = await _project_with_rows(neon_http)
    snap = await neon_http.post(f"/projects/{project_id}/branches/{branch_id}/snapshot")
    await wait_ops(neon_http, project_id, snap.json()["operations"])
    await execute(uri, "INSERT INTO t VALUES (2)")
    runner = await _run_until_killed(
        pg_server,
        kill_at=kill_at,
        action="restore_snapshot",
        project_id=project_id,
        branch_id=branch_id,
        snapshot_id=snap.json()["snapshot"]["id"],
    )
    await _resume(pg_server, plane, runner)
    # The restore was accepted, so its target content is what the branch must hold.
    assert await fetch(uri, "SELECT n FROM t ORDER BY n") == [(1,)]
    await _all_finished(neon_http, project_id)


@pytest.mark.parametrize("kill_at", ["swap.renamed", "job.step_done:2", "job.before_finish"])
async def test_resumed_branch_restore_keeps_writes_made_after_its_swap(
    neon_http: httpx.AsyncClient, plane: LocalPlane, pg_server: ServerInfo, kill_at: str
) -> None:
    project_id, branch_id, uri = await _project_with_rows(neon_http)
    child = await neon_http.post(
        f"/projects/{project_id}/branches", json={"branch": {"name": "checkpoint"}}
    )
    await wait_ops(neon_http, project_id, child.json()["operations"])
    await execute(uri, "INSERT INTO t VALUES (2)")
    runner = await _run_until_killed(
        pg_server,
        kill_at=kill_at,
        action="restore_branch",
        project_id=project_id,
        branch_id=branch_id,
        source_branch_id=child.json()["branch"]["id"],
    )
    if kill_at != "swap.renamed":
        # The swap finished before the crash: a client already writes to the restored database.
        await execute(uri, "INSERT INTO t VALUES (3)")
    await _resume(pg_server, plane, runner)
    # A resumed job never runs a finished copy and swap again (that would restore a second
    # time, over the write above).
    expected = [(1,)] if kill_at == "swap.renamed" else [(1,), (3,)]
    assert await fetch(uri, "SELECT n FROM t ORDER BY n") == expected
    await _all_finished(neon_http, project_id)


async def test_a_database_left_closed_with_no_operation_in_flight_is_reopened(
    neon_http: httpx.AsyncClient, plane: LocalPlane, pg_server: ServerInfo
) -> None:
    _project_id, _branch_id, uri = await _project_with_rows(neon_http)
    straight = await direct(uri, pg_server)
    _, physical_name = await physical(uri)
    other = await _project_with_rows(neon_http)
    other_straight = await direct(other[2], pg_server)
    endpoints = (await neon_http.get(f"/projects/{other[0]}/endpoints")).json()["endpoints"]
    suspended = await neon_http.post(f"/projects/{other[0]}/endpoints/{endpoints[0]['id']}/suspend")
    await wait_ops(neon_http, other[0], suspended.json()["operations"])
    assert not await _accepts(other_straight)
    # What a copy step does before a kill: the live database closed to clients.
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as su:
        await su.execute(
            psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                psycopg.sql.Identifier(physical_name)
            )
        )
    assert not await _accepts(straight)
    reopened = await plane.reopen_doors()
    assert physical_name in reopened
    assert await fetch(uri, "SELECT n FROM t") == [(1,)]
    # A suspended compute's database stays closed: its records say so.
    assert not await _accepts(other_straight)


@pytest.mark.parametrize("operation", ["snapshot", "restore"])
async def test_an_operation_while_postgres_is_killed_finishes_once_it_is_restarted(
    tmp_path: Path, operation: str
) -> None:
    # A cluster of this test's own: its postmaster is killed.
    pg = EmbeddedPostgres(tmp_path / "pg")
    await pg.start()
    try:
        async with (
            PostgresSupervisor(pg, interval_s=0.2, backoff_initial_s=0.1).watch() as supervisor,
            LocalPlane.open(pg.server_info or await pg.start(), meter_interval_s=3600) as own,
        ):
            created = await own.create_project(
                ProjectCreateBody.model_validate({"project": {"name": "pg-killed"}})
            )
            await own.drain()
            project_id, branch_id = created["project"]["id"], created["branch"]["id"]
            uri = created["connection_uris"][0]["connection_uri"]
            await execute(uri, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1)")
            snap = await own.create_snapshot(
                project_id, branch_id, name="cp", expires_at=None, lsn=None, timestamp=None
            )
            assert snap["snapshot"]["id"]
            if operation == "restore":
                await own.drain()
                await execute(uri, "INSERT INTO t VALUES (2)")
                await own.restore_snapshot(
                    project_id,
                    snap["snapshot"]["id"],
                    SnapshotRestoreBody(target_branch_id=branch_id, finalize_restore=True),
                )
            # The operation was accepted; its job (not started yet) meets a dead server.
            pid = int((pg.cluster_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            await own.drain()
            assert supervisor.health.restarts >= 1
            ops = await own.list_operations(project_id, limit=10, cursor=None)
            assert {op["status"] for op in ops["operations"]} == {"finished"}
            # The snapshot left the data as it was; the restore ended in its target.
            assert await fetch(uri, "SELECT n FROM t ORDER BY n") == [(1,)]
    finally:
        await pg.stop()
