"""The disk guard: a statement writing past its branch's size quota is stopped while it runs
(not after it ends, when the meter would first see it), and a nearly full disk stops every
tenant's writes while the plane's own state database stays writable."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import errors

from agentdb.localplane import LocalPlane

from .helpers import create_project, execute, fetch

MIB = 2**20
# What the writer below would write unstopped: about 400 MiB of rows.
_WRITER = "INSERT INTO t SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 400000) AS g"


async def _database_size(uri: str) -> int:
    return int((await fetch(uri, "SELECT pg_database_size(current_database())"))[0][0])


async def test_a_statement_writing_past_the_size_quota_is_stopped_while_it_runs(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE t (n int, s text)")
    await plane.meter()
    branch_path = f"/projects/{project_id}/branches/{branch_id}"
    size = (await neon_http.get(branch_path)).json()["branch"]["logical_size"]
    limit = size + 16 * MIB
    resp = await neon_http.patch(
        f"/projects/{project_id}",
        json={"project": {"settings": {"quota": {"logical_size_bytes": limit}}}},
    )
    assert resp.status_code == 200, resp.text

    # The watch makes the database read-only and ends the writer's session mid-statement: its
    # transaction rolls back. The branch's record follows.
    with pytest.raises(psycopg.OperationalError):
        await execute(uri, _WRITER)
    for _ in range(100):
        if (await neon_http.get(branch_path)).json()["branch"]["logical_size"] > limit:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the branch's logical size never showed the overshoot")
    assert await fetch(uri, "SELECT count(*) FROM t") == [(0,)]
    with pytest.raises(errors.ReadOnlySqlTransaction):
        await execute(uri, "INSERT INTO t VALUES (1, 'more')")
    # Stopped far short of the 400 MiB it would have written (benchmarks/neighbours.py
    # measures the overshoot itself, on a quiet machine).
    assert await _database_size(uri) < size + 200 * MIB

    # Raising the quota lifts it, as before.
    resp = await neon_http.patch(
        f"/projects/{project_id}",
        json={"project": {"settings": {"quota": {"logical_size_bytes": 0}}}},
    )
    assert resp.status_code == 200, resp.text
    await execute(uri, "INSERT INTO t VALUES (1, 'more')")


async def _until(plane: LocalPlane, *, wanted: bool) -> None:
    for _ in range(100):
        if plane.disk_low == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"disk_low never became {wanted}")


async def test_a_nearly_full_disk_stops_tenant_writes_and_keeps_the_plane_writable(
    neon_http: httpx.AsyncClient, plane: LocalPlane, data_dir: Path
) -> None:
    created = await create_project(neon_http)
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1)")
    before = plane.min_free_disk_mb
    # "Nearly full": the threshold is the disk's whole size, above whatever is free however
    # much other processes on the machine write or delete meanwhile.
    plane.min_free_disk_mb = shutil.disk_usage(data_dir).total // MIB
    try:
        await _until(plane, wanted=True)
        with pytest.raises(errors.ReadOnlySqlTransaction):
            await execute(uri, "INSERT INTO t VALUES (2)")
        assert await fetch(uri, "SELECT n FROM t") == [(1,)]  # reads still work
        # The plane's state database takes writes: a new project is made, and it is
        # read-only too.
        fresh = await create_project(neon_http)
        fresh_uri = fresh["connection_uris"][0]["connection_uri"]
        # Each probe makes a table of its own, so the guard may turn the database read-only
        # between any two statements without failing the probe that follows.
        for attempt in range(100):
            try:
                await execute(fresh_uri, f"CREATE TABLE u{attempt} (n int)")
            except errors.ReadOnlySqlTransaction:
                break
            except errors.AdminShutdown:
                # Ended as the database turned read-only (so that the change reaches open
                # sessions): the next probe meets it.
                continue
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("a project made while the disk is low stayed writable")
    finally:
        plane.min_free_disk_mb = before
    await _until(plane, wanted=False)
    await execute(uri, "INSERT INTO t VALUES (2)")
    assert await fetch(uri, "SELECT n FROM t ORDER BY n") == [(1,), (2,)]


async def test_a_role_that_lifts_read_only_for_itself_is_stopped_writing(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    """`default_transaction_read_only` is the role's to change for its own session; the watch
    ends a backend that writes in a read-only database anyway, and the write rolls back."""
    created = await create_project(neon_http)
    project_id = created["project"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(
        uri,
        "CREATE TABLE t (n int, s text)",
        "INSERT INTO t VALUES (0, 'kept')",
        "CREATE TABLE probe (n int)",
    )
    resp = await neon_http.patch(
        f"/projects/{project_id}",
        json={"project": {"settings": {"quota": {"logical_size_bytes": 1}}}},
    )
    assert resp.status_code == 200, resp.text
    for _ in range(100):  # the meter applies the quota at its next tick
        await plane.meter()
        try:
            await execute(uri, "INSERT INTO probe VALUES (1)")
        except errors.ReadOnlySqlTransaction:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the database never turned read-only past its quota")

    with pytest.raises(psycopg.OperationalError):
        await execute(uri, "SET default_transaction_read_only = off", _WRITER)
    # Reads go on, and nothing the lifted session wrote stayed.
    assert await fetch(uri, "SELECT n FROM t ORDER BY n") == [(0,)]
