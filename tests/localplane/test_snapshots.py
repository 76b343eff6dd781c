"""Snapshots: root branches only, preview restores, finalize later, rename, delete."""

from __future__ import annotations

import httpx
import pytest
from support import client_for

from agentdb.pg import ServerInfo

from .helpers import create_project, execute, fetch, restore, snapshot, wait_ops


async def test_preview_gets_its_own_connection_string_then_finalizes(
    neon_http: httpx.AsyncClient,
) -> None:
    created = await create_project(neon_http)
    project_id, main_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1)")
    snap = await snapshot(neon_http, project_id, main_id, name="one row")
    await execute(uri, "INSERT INTO t VALUES (2)")

    restored = await neon_http.post(
        f"/projects/{project_id}/snapshots/{snap['id']}/restore",
        json={"name": "preview", "target_branch_id": main_id},
    )
    assert restored.status_code == 200, restored.text
    body = restored.json()
    await wait_ops(neon_http, project_id, body["operations"])
    preview_id = body["branch"]["id"]
    assert body["branch"]["restore_status"] == "restored"
    assert body["branch"]["restored_from"] == snap["id"]
    preview_uri = (
        await neon_http.get(
            f"/projects/{project_id}/connection_uri",
            params={
                "branch_id": preview_id,
                "database_name": "neondb",
                "role_name": "neondb_owner",
            },
        )
    ).json()["uri"]
    assert preview_uri != uri
    assert await fetch(preview_uri, "SELECT n FROM t ORDER BY n") == [(1,)]
    assert await fetch(uri, "SELECT n FROM t ORDER BY n") == [(1,), (2,)]

    finalized = await neon_http.post(
        f"/projects/{project_id}/branches/{preview_id}/finalize_restore",
        json={"name": "before-preview"},
    )
    assert finalized.status_code == 200, finalized.text
    await wait_ops(neon_http, project_id, finalized.json()["operations"])
    assert await fetch(uri, "SELECT n FROM t ORDER BY n") == [(1,)]
    branches = {
        b["id"]: b
        for b in (await neon_http.get(f"/projects/{project_id}/branches")).json()["branches"]
    }
    assert branches[preview_id]["name"] == "main"
    assert branches[preview_id]["default"] is True
    assert branches[preview_id]["restored_as"] == main_id
    assert branches[main_id]["name"] == "before-preview"
    endpoints = (await neon_http.get(f"/projects/{project_id}/endpoints")).json()["endpoints"]
    assert [e["branch_id"] for e in endpoints] == [preview_id]
    again = await neon_http.post(f"/projects/{project_id}/branches/{preview_id}/finalize_restore")
    assert again.status_code == 400


async def test_snapshots_only_from_root_branches_and_not_at_a_past_lsn(
    neon_http: httpx.AsyncClient,
) -> None:
    created = await create_project(neon_http)
    project_id, main_id = created["project"]["id"], created["branch"]["id"]
    child = await neon_http.post(
        f"/projects/{project_id}/branches", json={"branch": {"parent_id": main_id}}
    )
    await wait_ops(neon_http, project_id, child.json()["operations"])
    refused = await neon_http.post(
        f"/projects/{project_id}/branches/{child.json()['branch']['id']}/snapshot"
    )
    assert refused.status_code == 400
    assert "root branches" in refused.json()["message"]
    at_lsn = await neon_http.post(
        f"/projects/{project_id}/branches/{main_id}/snapshot", params={"lsn": "0/1"}
    )
    assert at_lsn.status_code == 400
    assert (await neon_http.get(f"/projects/{project_id}/snapshots")).json() == {"snapshots": []}


async def test_snapshot_reports_size_and_lsn_and_can_be_renamed_and_deleted(
    neon_http: httpx.AsyncClient, plane
) -> None:
    created = await create_project(neon_http)
    project_id, main_id = created["project"]["id"], created["branch"]["id"]
    snap = await snapshot(neon_http, project_id, main_id, expires_at="2099-01-01T00:00:00Z")
    listed = (await neon_http.get(f"/projects/{project_id}/snapshots")).json()["snapshots"]
    assert [s["id"] for s in listed] == [snap["id"]]
    assert listed[0]["full_size"] > 1_000_000
    assert listed[0]["lsn"]
    assert listed[0]["expires_at"] == "2099-01-01T00:00:00Z"
    assert listed[0]["source_branch_id"] == main_id

    renamed = await neon_http.patch(
        f"/projects/{project_id}/snapshots/{snap['id']}", json={"snapshot": {"name": "v1"}}
    )
    assert renamed.json()["snapshot"]["name"] == "v1"
    deleted = await neon_http.delete(f"/projects/{project_id}/snapshots/{snap['id']}")
    assert deleted.status_code == 202
    await wait_ops(neon_http, project_id, deleted.json()["operations"])
    assert (await neon_http.get(f"/projects/{project_id}/snapshots")).json() == {"snapshots": []}
    gone = await neon_http.post(f"/projects/{project_id}/snapshots/{snap['id']}/restore", json={})
    assert gone.status_code == 404


@pytest.mark.parametrize(
    "params", [{"expires_at": "yesterday"}, {"expires_at": "2001-01-01T00:00:00Z"}, {"name": ""}]
)
async def test_bad_snapshot_parameters(
    localplane_app, neon_spec, neon_http: httpx.AsyncClient, params: dict
) -> None:
    created = await create_project(neon_http)
    project_id, main_id = created["project"]["id"], created["branch"]["id"]
    async with client_for(localplane_app, neon_spec, validate_requests=False) as raw:
        resp = await raw.post(f"/projects/{project_id}/branches/{main_id}/snapshot", params=params)
    assert resp.status_code == 400
    assert next(iter(params)) in resp.json()["message"]


async def _snapshot_databases(pg_server: ServerInfo) -> set[str]:
    rows = await fetch(
        pg_server.conninfo("postgres"), "SELECT datname FROM pg_database WHERE datname ~ '^lps_'"
    )
    return {str(name) for (name,) in rows}


async def test_a_snapshot_of_a_database_nothing_wrote_to_is_not_copied(
    neon_http: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    """Issue 16: a session's root checkpoint costs no disk. The plane reads the WAL written
    since the database was made; if no record touched it, the snapshot keeps no copy and a
    restore makes a new empty database. One write anywhere in it, and the snapshot copies."""
    created = await create_project(neon_http)
    project_id, main_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    # Reading writes nothing that matters: still empty.
    assert await fetch(
        uri, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
    ) == [(0,)]
    before = await _snapshot_databases(pg_server)
    empty = await snapshot(neon_http, project_id, main_id, name="empty")
    assert await _snapshot_databases(pg_server) == before  # nothing copied

    await execute(uri, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1)")
    one_row = await snapshot(neon_http, project_id, main_id, name="one row")
    made = await _snapshot_databases(pg_server) - before
    assert len(made) == 1  # copied
    # Both report their logical size, as Neon does, though only one takes disk.
    listed = (await neon_http.get(f"/projects/{project_id}/snapshots")).json()["snapshots"]
    sizes = {s["id"]: s["full_size"] for s in listed}
    assert sizes[empty["id"]] > 1_000_000
    assert sizes[one_row["id"]] > 1_000_000

    # Back to the empty state: the same connection string, an empty database the project's
    # role owns the public schema of, usable at once.
    live_id = await restore(neon_http, project_id, empty["id"], main_id)
    assert await fetch(uri, "SELECT to_regclass('public.t') IS NULL") == [(True,)]
    await execute(uri, "CREATE TABLE u (n int)", "INSERT INTO u VALUES (7)")
    assert await fetch(uri, "SELECT n FROM u") == [(7,)]
    # And forward again to the copied one.
    await restore(neon_http, project_id, one_row["id"], live_id)
    assert await fetch(uri, "SELECT n FROM t") == [(1,)]
    assert await fetch(uri, "SELECT to_regclass('public.u') IS NULL") == [(True,)]


async def test_a_database_restored_empty_is_again_snapshotted_without_a_copy(
    neon_http: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    created = await create_project(neon_http)
    project_id, main_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    root = await snapshot(neon_http, project_id, main_id, name="root")
    await execute(uri, "CREATE TABLE t (n int)")
    live_id = await restore(neon_http, project_id, root["id"], main_id)
    before = await _snapshot_databases(pg_server)
    again = await snapshot(neon_http, project_id, live_id, name="again")
    assert await _snapshot_databases(pg_server) == before
    # A rolled-back write changes nothing, but it touched the database: a copy, to be safe.
    await execute(uri, "BEGIN", "CREATE TABLE gone (n int)", "ROLLBACK")
    await snapshot(neon_http, project_id, live_id, name="after a rollback")
    assert len(await _snapshot_databases(pg_server) - before) == 1
    resp = await neon_http.delete(f"/projects/{project_id}/snapshots/{again['id']}")
    assert resp.status_code == 202, resp.text
    await wait_ops(neon_http, project_id, resp.json()["operations"])
