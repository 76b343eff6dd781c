"""Operations: background work, 423 while it runs, listing, fault injection, crash recovery."""

from __future__ import annotations

import asyncio
import collections
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from pydantic import SecretStr
from support import client_for

from agentdb.localplane import Faults, LocalPlane, create_app, running
from agentdb.localplane._models import ProjectCreateBody
from agentdb.pg import ServerInfo
from agentdb.settings import Settings

from .helpers import create_project, fetch, wait_ops


async def test_mutation_while_operations_run_gets_423(
    pg_server: ServerInfo, data_dir: Path, neon_spec
) -> None:
    slow = create_app(
        Settings(data_dir=data_dir, localplane_operation_delay_ms=400), server=pg_server
    )
    async with running(slow), client_for(slow, neon_spec) as client:
        created = (await client.post("/projects", json={"project": {}})).json()
        project_id, branch_id = created["project"]["id"], created["branch"]["id"]
        assert {op["status"] for op in created["operations"]} == {"running"}
        locked = await client.post(f"/projects/{project_id}/branches/{branch_id}/snapshot")
        assert locked.status_code == 423
        assert "running conflicting operations" in locked.json()["message"]
        await wait_ops(client, project_id, created["operations"])
        ok = await client.post(f"/projects/{project_id}/branches/{branch_id}/snapshot")
        assert ok.status_code == 200
        await wait_ops(client, project_id, ok.json()["operations"])
        listed = (
            await client.get(f"/projects/{project_id}/operations", params={"limit": "2"})
        ).json()
        assert listed["operations"][0]["action"] == "create_timeline"
        rest = (
            await client.get(
                f"/projects/{project_id}/operations",
                params={"cursor": listed["pagination"]["cursor"]},
            )
        ).json()
        assert len(listed["operations"]) + len(rest["operations"]) == 3
        assert all(op["total_duration_ms"] >= 400 for op in rest["operations"])


async def test_faults_are_injected_at_the_configured_rates(
    pg_server: ServerInfo, data_dir: Path, neon_spec
) -> None:
    faulty = create_app(
        Settings(data_dir=data_dir, localplane_faults="423=0.3,429=0.2,500=0.1,latency_ms=1"),
        server=pg_server,
    )
    statuses: collections.Counter[int] = collections.Counter()
    async with running(faulty), client_for(faulty, neon_spec) as client:
        for _ in range(300):
            statuses[(await client.patch("/projects/none", json={"project": {}})).status_code] += 1
    assert set(statuses) <= {404, 423, 429, 500}
    assert 60 <= statuses[423] <= 120  # 30 % of 300
    assert statuses[429] >= 20
    assert statuses[500] >= 5
    assert statuses[404] >= 60


def test_fault_settings_are_validated() -> None:
    assert Faults.parse("423=0.2, latency_ms=50") == Faults(locked=0.2, latency_ms=50)
    for bad in ("423", "418=0.1", "429=2", "latency_ms=-1", "500=lots"):
        with pytest.raises(ValueError, match="AGENTDB_LOCALPLANE_FAULTS"):
            Faults.parse(bad)


async def test_api_key_is_enforced_when_set(
    pg_server: ServerInfo, data_dir: Path, neon_spec
) -> None:
    locked = create_app(
        Settings(data_dir=data_dir, localplane_api_key=SecretStr("s3cret")), server=pg_server
    )
    async with running(locked):
        async with client_for(locked, neon_spec, token=None) as anonymous:
            resp = await anonymous.get("/projects")
            assert resp.status_code == 401
            assert resp.json()["code"] == "UNAUTHORIZED"
        async with client_for(locked, neon_spec, token="wrong") as wrong:
            assert (await wrong.get("/projects")).status_code == 401
        async with client_for(locked, neon_spec, token="s3cret") as right:
            assert (await right.get("/projects")).status_code == 200


async def test_errors_carry_the_request_id_and_unknown_ids_are_404(
    neon_http: httpx.AsyncClient,
) -> None:
    resp = await neon_http.get("/projects/no-such-project", headers={"X-Request-ID": "req-123"})
    assert resp.status_code == 404
    assert resp.json() == {
        "code": "NOT_FOUND",
        "message": "project no-such-project not found",
        "request_id": "req-123",
    }
    created = await create_project(neon_http)
    project_id = created["project"]["id"]
    for path in (
        f"/projects/{project_id}/branches/br-none-00000000",
        f"/projects/{project_id}/endpoints/ep-none-00000000",
        f"/projects/{project_id}/operations/00000000-0000-0000-0000-000000000000",
    ):
        assert (await neon_http.get(path)).status_code == 404


async def test_restart_finishes_jobs_a_crash_left_running(
    pg_server: ServerInfo, monkeypatch
) -> None:
    async with LocalPlane.open(pg_server) as crashed:
        # The process "dies" after recording the project but before its job runs.
        monkeypatch.setattr(crashed, "_schedule", lambda *_: None)
        created = await crashed.create_project(
            ProjectCreateBody.model_validate({"project": {"name": "crash"}})
        )
    monkeypatch.undo()
    project_id = created["project"]["id"]
    async with LocalPlane.open(pg_server) as restarted:
        await restarted.drain()
        ops = await restarted.list_operations(project_id, limit=10, cursor=None)
        assert {op["status"] for op in ops["operations"]} == {"finished"}
        branch = await restarted.get_branch(project_id, created["branch"]["id"])
        assert branch["branch"]["current_state"] == "ready"
    assert await fetch(created["connection_uris"][0]["connection_uri"], "SELECT 1") == [(1,)]


async def test_a_live_runner_keeps_its_jobs(pg_server: ServerInfo, plane: LocalPlane) -> None:
    # A second process on the same state must not take over jobs of a runner that is alive.
    async with LocalPlane.open(pg_server) as other:
        assert await other._store.runner_alive(plane.runner_id)
        assert not await other._store.runner_alive(12345)


async def test_expired_snapshots_and_branches_are_deleted(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    created = await create_project(neon_http)
    project_id, main_id = created["project"]["id"], created["branch"]["id"]
    child = await neon_http.post(
        f"/projects/{project_id}/branches", json={"branch": {"name": "short-lived"}}
    )
    await wait_ops(neon_http, project_id, child.json()["operations"])
    child_id = child.json()["branch"]["id"]
    soon = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    snap = await neon_http.post(
        f"/projects/{project_id}/branches/{main_id}/snapshot", params={"expires_at": soon}
    )
    await wait_ops(neon_http, project_id, snap.json()["operations"])
    await neon_http.patch(
        f"/projects/{project_id}/branches/{child_id}", json={"branch": {"expires_at": soon}}
    )
    await asyncio.sleep(2.1)
    await plane.drain()
    assert await plane.expire() >= 1
    await plane.drain()
    await plane.expire()  # the branch waits while the snapshot's deletion runs
    await plane.drain()
    assert (await neon_http.get(f"/projects/{project_id}/snapshots")).json() == {"snapshots": []}
    assert (await neon_http.get(f"/projects/{project_id}/branches/{child_id}")).status_code == 404


async def test_orphaned_databases_and_roles_are_collected(
    pg_server: ServerInfo, plane: LocalPlane
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as su:
        await su.execute("CREATE ROLE lp_orphan0000 NOLOGIN")
        await su.execute("CREATE ROLE member_orphan0000 LOGIN IN ROLE lp_orphan0000")
        await su.execute("CREATE DATABASE lpd_orphan0000_leftover0")
    dropped = await plane.collect_orphans()
    assert {"lpd_orphan0000_leftover0", "lp_orphan0000", "member_orphan0000"} <= set(dropped)
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as su:
        cur = await su.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'lpd_orphan%%'")
        assert await cur.fetchone() == (0,)
    # Live projects are untouched: collecting again finds nothing.
    assert await plane.collect_orphans() == []


async def test_a_sweep_collects_what_a_cleanup_that_gave_up_left(
    pg_server: ServerInfo, plane: LocalPlane
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as su:
        await su.execute("CREATE DATABASE lpd_gaveup0000_leftover0")
    await plane.drain()
    await plane.sweep()  # nothing suspected: the fleet is not scanned
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as su:
        cur = await su.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'lpd_gaveup%%'")
        assert await cur.fetchone() == (1,)
    plane.orphans_suspected = True  # what a cleanup that gave up sets
    await plane.sweep()
    assert not plane.orphans_suspected
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as su:
        cur = await su.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'lpd_gaveup%%'")
        assert await cur.fetchone() == (0,)
