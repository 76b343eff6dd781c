"""Project quotas as Neon enforces them: over a time, written-data or transfer quota every
compute is suspended and cannot start (403); over `logical_size_bytes` a branch's writes fail
while reads work; raising the quota lifts either."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import errors

from agentdb.localplane import LocalPlane

from .helpers import create_project, execute, fetch, wait_ops

MIB = 2**20


async def _patch_quota(client: httpx.AsyncClient, project_id: str, **quota: int) -> None:
    resp = await client.patch(
        f"/projects/{project_id}", json={"project": {"settings": {"quota": quota}}}
    )
    assert resp.status_code == 200, resp.text


async def _endpoint(client: httpx.AsyncClient, project_id: str, endpoint_id: str) -> Any:
    resp = await client.get(f"/projects/{project_id}/endpoints/{endpoint_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()["endpoint"]


async def test_active_time_quota_suspends_and_start_answers_403(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    created = await create_project(neon_http, settings={"quota": {"active_time_seconds": 1}})
    project_id, endpoint_id = created["project"]["id"], created["endpoints"][0]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute("SELECT 1")
        await plane.meter()  # may already suspend it: a started compute runs from its start
        await asyncio.sleep(1.3)
        await plane.meter()
        await plane.drain()
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")  # its session was ended with the suspend
    assert (await _endpoint(neon_http, project_id, endpoint_id))["current_state"] == "idle"
    with pytest.raises(psycopg.OperationalError):
        await fetch(uri, "SELECT 1")

    start = await neon_http.post(f"/projects/{project_id}/endpoints/{endpoint_id}/start")
    assert start.status_code == 403, start.text
    message = start.json()["message"]
    assert "active_time_seconds quota" in message
    assert "of 1 this billing period" in message
    enable = await neon_http.patch(
        f"/projects/{project_id}/endpoints/{endpoint_id}", json={"endpoint": {"disabled": False}}
    )
    assert enable.status_code == 403, enable.text
    # Later ticks keep it: the reason is stored with the project (and survives restarts).
    await plane.meter()
    assert (
        await neon_http.post(f"/projects/{project_id}/endpoints/{endpoint_id}/start")
    ).status_code == 403

    await _patch_quota(neon_http, project_id, active_time_seconds=3600)
    await plane.drain()
    endpoint = await _endpoint(neon_http, project_id, endpoint_id)
    assert endpoint["current_state"] == "idle"  # reopened; the next activity wakes it
    assert await fetch(uri, "SELECT 1") == [(1,)]
    start = await neon_http.post(f"/projects/{project_id}/endpoints/{endpoint_id}/start")
    assert start.status_code == 200, start.text
    await wait_ops(neon_http, project_id, start.json()["operations"])


async def test_written_data_quota_suspends_the_project(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    created = await create_project(neon_http)
    project_id, endpoint_id = created["project"]["id"], created["endpoints"][0]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await plane.meter()
    await _patch_quota(neon_http, project_id, written_data_bytes=MIB)
    # Separate statements: with the embedded cluster's wal_level=minimal, rows written into a
    # table created in the same transaction skip the WAL (and so the meter).
    await execute(
        uri,
        "CREATE TABLE t (s text)",
        "INSERT INTO t SELECT repeat('x', 500) FROM generate_series(1, 8000)",
    )
    for _ in range(50):
        await plane.meter()
        if (await _endpoint(neon_http, project_id, endpoint_id))["current_state"] == "idle":
            break
        await asyncio.sleep(0.2)
    await plane.drain()
    start = await neon_http.post(f"/projects/{project_id}/endpoints/{endpoint_id}/start")
    assert start.status_code == 403, start.text
    assert "written_data_bytes quota" in start.json()["message"]


async def test_logical_size_quota_makes_writes_fail_until_raised(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    main_id, endpoint_id = branch_id, created["endpoints"][0]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE t (n int, s text)")
    await plane.meter()
    branch_path = f"/projects/{project_id}/branches/{branch_id}"
    size = (await neon_http.get(branch_path)).json()["branch"]["logical_size"]
    # Written before the quota is set: the size watch would end a statement crossing it.
    await execute(uri, "INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 3000) g")
    await _patch_quota(neon_http, project_id, logical_size_bytes=size + MIB)
    project = (await neon_http.get(f"/projects/{project_id}")).json()["project"]
    assert project["branch_logical_size_limit_bytes"] == size + MIB
    for _ in range(50):
        await plane.meter()
        if (await neon_http.get(branch_path)).json()["branch"]["logical_size"] > size + MIB:
            break
        await asyncio.sleep(0.2)
    await plane.meter()  # enforcement follows the measurement

    with pytest.raises(errors.ReadOnlySqlTransaction) as caught:
        await execute(uri, "INSERT INTO t VALUES (0, 'more')")
    assert caught.value.sqlstate == "25006"
    assert await fetch(uri, "SELECT count(*) FROM t") == [(3000,)]
    # Computes still start (only compute quotas block them), and deleting data stays possible
    # for a session that asks for it explicitly.
    start = await neon_http.post(f"/projects/{project_id}/endpoints/{endpoint_id}/start")
    assert start.status_code == 200, start.text
    await wait_ops(neon_http, project_id, start.json()["operations"])

    # A finalized restore puts another database under the branch: the meter re-applies it.
    snap = await neon_http.post(f"/projects/{project_id}/branches/{main_id}/snapshot")
    await wait_ops(neon_http, project_id, snap.json()["operations"])
    restored = await neon_http.post(
        f"/projects/{project_id}/snapshots/{snap.json()['snapshot']['id']}/restore",
        json={"target_branch_id": main_id, "finalize_restore": True},
    )
    assert restored.status_code == 200, restored.text
    await wait_ops(neon_http, project_id, restored.json()["operations"])
    await plane.meter()
    with pytest.raises(errors.ReadOnlySqlTransaction):
        await execute(uri, "INSERT INTO t VALUES (0, 'after restore')")

    await _patch_quota(neon_http, project_id, logical_size_bytes=size + 100 * MIB)
    await execute(uri, "INSERT INTO t VALUES (0, 'fits again')")
    assert await fetch(uri, "SELECT count(*) FROM t") == [(3001,)]


async def test_a_compute_that_comes_up_on_a_blocked_project_is_suspended_too(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    created = await create_project(neon_http, settings={"quota": {"active_time_seconds": 1}})
    project_id, main = created["project"]["id"], created["branch"]["id"]
    first = created["endpoints"][0]["id"]
    for _ in range(20):  # a started compute runs from its start: over 1 s within a few ticks
        await plane.meter()
        await plane.drain()
        if (await _endpoint(neon_http, project_id, first))["current_state"] == "idle":
            break
        await asyncio.sleep(0.3)
    assert (await _endpoint(neon_http, project_id, first))["current_state"] == "idle"
    branch = await neon_http.post(
        f"/projects/{project_id}/branches",
        json={"branch": {"parent_id": main}, "endpoints": [{"type": "read_write"}]},
    )
    assert branch.status_code == 201, branch.text
    await wait_ops(neon_http, project_id, branch.json()["operations"])
    endpoint_id = branch.json()["endpoints"][0]["id"]
    await plane.meter()
    await plane.drain()
    assert (await _endpoint(neon_http, project_id, endpoint_id))["current_state"] == "idle"
    start = await neon_http.post(f"/projects/{project_id}/endpoints/{endpoint_id}/start")
    assert start.status_code == 403, start.text
    uri = branch.json()["connection_uris"][0]["connection_uri"]
    with pytest.raises(psycopg.OperationalError):
        await fetch(uri, "SELECT 1")
