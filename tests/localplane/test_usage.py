"""Consumption metering: written bytes and logical size measured from PostgreSQL, active time
from endpoint activity, Data API transfer, and consumption history that adds up to the
project's counters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar
from support import client_for

from agentdb.localplane import LocalPlane
from agentdb.localplane._models import ProjectRecord
from agentdb.localplane._store import STATE_DATABASE, Store
from agentdb.neon import NeonClient
from agentdb.pg import ServerInfo

from .helpers import create_project, execute, wait_ops

MIB = 2**20
# 8192 rows of 1 KiB of incompressible-enough text: 8 MiB of payload.
WRITE_8_MIB = (
    "CREATE TABLE payload (id int, body text)",
    "INSERT INTO payload SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 8192) g",
)


@pytest_asyncio.fixture(loop_scope="session")
async def neon(localplane_app: Litestar, neon_spec: NeonSpec) -> AsyncIterator[NeonClient]:
    hooks = {"request": [neon_spec.request_hook()], "response": [neon_spec.response_hook()]}
    async with NeonClient.for_app(localplane_app, api_key="test-key", event_hooks=hooks) as client:
        yield client


async def _project(client: httpx.AsyncClient, project_id: str) -> dict[str, Any]:
    resp = await client.get(f"/projects/{project_id}")
    assert resp.status_code == 200, resp.text
    project: dict[str, Any] = resp.json()["project"]
    return project


async def meter_until(
    plane: LocalPlane, done: Callable[[], Awaitable[bool]], timeout: float = 10
) -> None:
    """Ticks the meter until `done()` (statistics reach PostgreSQL's shared memory up to about
    a second after a session ends)."""
    deadline = time.monotonic() + timeout
    while True:
        await plane.meter()
        if await done():
            return
        assert time.monotonic() < deadline, "the meter did not see the expected usage in time"
        await asyncio.sleep(0.2)


async def test_written_bytes_and_logical_size_match_what_was_written(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await plane.meter()
    before = (await neon_http.get(f"/projects/{project_id}/branches/{branch_id}")).json()
    size_before = before["branch"]["logical_size"]
    written_before = (await _project(neon_http, project_id))["written_data_bytes"]

    await execute(uri, *WRITE_8_MIB)

    async def written() -> int:
        return int((await _project(neon_http, project_id))["written_data_bytes"]) - written_before

    async def grew() -> bool:
        return await written() >= 8 * MIB

    await meter_until(plane, grew)
    # WAL of 8 MiB of rows: the payload plus tuple headers, page headers and full-page images
    # (measured 8.7 MiB), and once autovacuum has visited the new table, its full-page images
    # too (data checksums are on in PostgreSQL 18); tolerance 1.0x to 2.5x the payload.
    assert 8 * MIB <= await written() <= 20 * MIB
    branch = (await neon_http.get(f"/projects/{project_id}/branches/{branch_id}")).json()
    growth = branch["branch"]["logical_size"] - size_before
    # Heap pages hold 7 such rows (8 KiB pages): 8 MiB of rows take ~9.2 MiB on disk.
    assert 8 * MIB <= growth <= 12 * MIB
    project = await _project(neon_http, project_id)
    assert project["synthetic_storage_size"] == branch["branch"]["logical_size"]


async def test_active_time_grows_with_activity_and_stops_after_suspend(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    created = await create_project(
        neon_http,
        default_endpoint_settings={"autoscaling_limit_min_cu": 2, "autoscaling_limit_max_cu": 2},
    )
    project_id, endpoint_id = created["project"]["id"], created["endpoints"][0]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await plane.meter()
        await conn.execute("SELECT 1")
        await asyncio.sleep(1.6)
        await plane.meter()
    project = await _project(neon_http, project_id)
    assert project["active_time_seconds"] >= 1
    # No autoscaling locally: compute time is active time x the endpoint's minimum CU (2).
    assert project["compute_time_seconds"] >= project["active_time_seconds"]
    endpoint = (await neon_http.get(f"/projects/{project_id}/endpoints/{endpoint_id}")).json()
    assert endpoint["endpoint"]["last_active"]
    assert project["compute_last_active_at"]

    suspended = await neon_http.post(f"/projects/{project_id}/endpoints/{endpoint_id}/suspend")
    await wait_ops(neon_http, project_id, suspended.json()["operations"])
    await plane.meter()
    stopped = (await _project(neon_http, project_id))["active_time_seconds"]
    await asyncio.sleep(1.1)
    await plane.meter()
    assert (await _project(neon_http, project_id))["active_time_seconds"] == stopped


async def test_idle_endpoint_auto_suspends_without_closing_and_activity_wakes_it(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    created = await create_project(
        neon_http, default_endpoint_settings={"suspend_timeout_seconds": 1}
    )
    project_id, endpoint_id = created["project"]["id"], created["endpoints"][0]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    path = f"/projects/{project_id}/endpoints/{endpoint_id}"

    async def state() -> str:
        return str((await neon_http.get(path)).json()["endpoint"]["current_state"])

    async def idle() -> bool:
        return await state() == "idle"

    await meter_until(plane, idle)
    assert (await neon_http.get(path)).json()["endpoint"]["suspended_at"]
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute("SELECT 1")  # the databases stayed open

        async def active() -> bool:
            return await state() == "active"

        await meter_until(plane, active)


async def test_data_api_responses_count_as_transfer(
    localplane_app: Litestar, neon_http: httpx.AsyncClient, neon: NeonClient, plane: LocalPlane
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await neon.enable_neon_auth(project_id, branch_id)
    url = await neon.create_data_api(project_id, branch_id, "neondb")
    await execute(
        uri,
        "CREATE TABLE notes (id int, body text)",
        "INSERT INTO notes SELECT g, repeat('n', 100) FROM generate_series(1, 50) g",
        "GRANT SELECT ON notes TO anonymous",
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(localplane_app)) as web:
        resp = await web.get(f"{url}/notes")
        assert resp.status_code == 200, resp.text
        sent = len(resp.content)
    await plane.meter()
    assert (await _project(neon_http, project_id))["data_transfer_bytes"] == sent


async def test_consumption_history_adds_up_to_the_project_counters(
    neon_http: httpx.AsyncClient, neon: NeonClient, plane: LocalPlane
) -> None:
    created = await create_project(
        neon_http,
        default_endpoint_settings={"autoscaling_limit_min_cu": 1, "autoscaling_limit_max_cu": 1},
    )
    project_id, endpoint_id = created["project"]["id"], created["endpoints"][0]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await plane.meter()
        await conn.execute("CREATE TABLE t (g int)")
        await conn.execute("INSERT INTO t SELECT g FROM generate_series(1, 10000) g")
        await asyncio.sleep(1.1)
        await plane.meter()
    # Suspended, the project uses nothing more while the counters are compared.
    suspended = await neon_http.post(f"/projects/{project_id}/endpoints/{endpoint_id}/suspend")
    await wait_ops(neon_http, project_id, suspended.json()["operations"])

    async def written() -> bool:
        return int((await _project(neon_http, project_id))["written_data_bytes"]) > 0

    await meter_until(plane, written)
    project = await _project(neon_http, project_id)
    assert project["active_time_seconds"] >= 1

    period_start = datetime.fromisoformat(project["consumption_period_start"])
    soon = datetime.now(UTC) + timedelta(hours=1)
    legacy = await neon.legacy_consumption_history(
        from_=period_start,
        to=soon,
        granularity="daily",
        project_ids=[project_id],
        metrics=["active_time_seconds", "compute_time_seconds", "written_data_bytes"],
    )
    [mine] = legacy.projects
    [period] = mine.periods
    frames = period.consumption
    assert sum(f.active_time_seconds or 0 for f in frames) == project["active_time_seconds"]
    assert sum(f.compute_time_seconds or 0 for f in frames) == project["compute_time_seconds"]
    assert sum(f.written_data_bytes or 0 for f in frames) == project["written_data_bytes"]
    assert (
        max(f.synthetic_storage_size_bytes or 0 for f in frames)
        >= (project["synthetic_storage_size"])
    )

    hourly = await neon.legacy_consumption_history(
        from_=datetime.now(UTC) - timedelta(hours=2),
        to=soon,
        granularity="hourly",
        project_ids=[project_id],
    )
    hours = [f for p in hourly.projects[0].periods for f in p.consumption]
    assert sum(f.active_time_seconds or 0 for f in hours) == project["active_time_seconds"]

    v2 = await neon.consumption_history(
        org_id="org-local",
        from_=period_start,
        to=soon,
        granularity="monthly",
        metrics=["compute_unit_seconds", "public_network_transfer_bytes", "extra_branches_month"],
        project_ids=[project_id],
    )
    [month] = v2.projects[0].periods[0].consumption
    values = {m.metric_name: m.value for m in month.metrics}
    assert values == {
        "compute_unit_seconds": project["compute_time_seconds"],
        "public_network_transfer_bytes": project["data_transfer_bytes"],
        "extra_branches_month": 0,
    }


async def test_consumption_history_rejects_bad_parameters(
    localplane_app: Litestar, neon_spec: NeonSpec
) -> None:
    now = datetime.now(UTC)

    def iso(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    base = {"from": iso(now - timedelta(hours=3)), "to": iso(now), "granularity": "hourly"}
    cases: list[tuple[str, dict[str, str], int, str]] = [
        ("/consumption_history/projects", {**base, "from": iso(now - timedelta(days=8))}, 406,
         "from"),
        ("/consumption_history/projects", {**base, "granularity": "daily",
                                           "from": iso(now - timedelta(days=61))}, 406, "from"),
        ("/consumption_history/projects", {**base, "to": iso(now - timedelta(hours=4))}, 400,
         "to"),
        ("/consumption_history/projects", {**base, "metrics": "cpu_seconds"}, 400, "metrics"),
        ("/consumption_history/projects", {**base, "limit": "101"}, 400, "limit"),
        ("/consumption_history/projects", {**base, "org_id": "org-never-made"}, 404, "org"),
        ("/consumption_history/projects",
         {**base, "project_ids": ",".join(f"p-{i}" for i in range(101))}, 400, "project_ids"),
        ("/consumption_history/v2/projects", {**base, "metrics": "compute_unit_seconds"}, 400,
         "org_id"),
        ("/consumption_history/v2/projects", {**base, "org_id": "org-local"}, 400, "metrics"),
    ]  # fmt: skip
    async with client_for(localplane_app, neon_spec, validate_requests=False) as client:
        for path, params, status, named in cases:
            resp = await client.get(path, params=params)
            assert resp.status_code == status, (params, resp.text)
            assert named in resp.json()["message"], resp.text


async def test_a_tick_reads_only_the_projects_something_happened_to(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    """Background work grows with what changed, not with the number of projects: an idle
    project (endpoint suspended, nobody connected, no record changed) is not read."""
    idle, busy = await create_project(neon_http), await create_project(neon_http)
    idle_id, busy_id = idle["project"]["id"], busy["project"]["id"]
    endpoint_id = idle["endpoints"][0]["id"]
    resp = await neon_http.post(f"/projects/{idle_id}/endpoints/{endpoint_id}/suspend")
    assert resp.status_code == 200, resp.text
    await wait_ops(neon_http, idle_id, resp.json()["operations"])

    async def tick_until(wanted: Callable[[frozenset[str]], bool]) -> frozenset[str]:
        """Ticks until a tick that read only some projects reads as `wanted` (the first
        ticks after a change still read the projects it touched, e.g. the suspend's)."""
        for _ in range(20):
            read = await plane.meter()
            if read is not None and wanted(read):
                return read
            await asyncio.sleep(0.2)
        raise AssertionError(f"no tick read as wanted; the last read {read}")

    await tick_until(lambda read: idle_id not in read)

    await execute(busy["connection_uris"][0]["connection_uri"], *WRITE_8_MIB)
    read = await tick_until(lambda read: busy_id in read)
    assert idle_id not in read

    # A record changed through the API marks its project for the next tick.
    renamed = await neon_http.patch(f"/projects/{idle_id}", json={"project": {"name": "renamed"}})
    assert renamed.status_code == 200, renamed.text
    read = await plane.meter()
    assert read is None or idle_id in read
    busy_bytes = (await _project(neon_http, busy_id))["written_data_bytes"]
    assert busy_bytes >= 8 * MIB


async def test_a_change_committed_after_a_later_one_is_still_seen(
    pg_server: ServerInfo, localplane_app: Litestar
) -> None:
    """The meter's change marks are ordered by transaction id, which commits need not follow:
    a transaction that began before the watermark and commits after it is seen next time."""
    async with Store.open(pg_server.conninfo(STATE_DATABASE)) as store:
        record = ProjectRecord(id="marks-early", project_id="marks-early", name="a", key="zz1")
        early_began, late_done = asyncio.Event(), asyncio.Event()

        async def early() -> None:
            async with store.tx() as tx:
                await tx.put(record)  # takes its transaction id now, commits later
                early_began.set()
                await late_done.wait()
            async with store.tx() as tx:
                await tx.delete_project(record.id)

        async with store.tx() as tx:
            _, watermark = await tx.changed_since(None)
        writer = asyncio.create_task(early())
        await early_began.wait()
        async with store.tx() as tx:
            await tx.put(record.model_copy(update={"id": "marks-late", "project_id": "marks-late"}))
        async with store.tx() as tx:
            seen, watermark = await tx.changed_since(watermark)
        assert "marks-late" in seen
        assert "marks-early" not in seen  # not committed yet
        late_done.set()
        await writer
        async with store.tx() as tx:
            seen, _ = await tx.changed_since(watermark)
            await tx.delete_project("marks-late")
            await tx.forget_changes(["marks-early", "marks-late"])
        assert "marks-early" in seen
