"""The checkpoint loop end to end: write, snapshot, write, restore, same connection string."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from .helpers import create_project, execute, fetch, wait_ops


async def test_restore_keeps_connection_string_and_old_branch(neon_http: httpx.AsyncClient) -> None:
    created = await create_project(neon_http, name="scenario")
    project_id = created["project"]["id"]
    main_id = created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]

    await execute(uri, "CREATE TABLE items (n int)", "INSERT INTO items VALUES (1), (2)")
    first = await neon_http.post(
        f"/projects/{project_id}/branches/{main_id}/snapshot", params={"name": "two rows"}
    )
    assert first.status_code == 200, first.text
    await wait_ops(neon_http, project_id, first.json()["operations"])

    await execute(uri, "INSERT INTO items VALUES (3)")
    second = await neon_http.post(
        f"/projects/{project_id}/branches/{main_id}/snapshot", params={"name": "three rows"}
    )
    await wait_ops(neon_http, project_id, second.json()["operations"])
    await execute(uri, "INSERT INTO items VALUES (4)")

    restored = await neon_http.post(
        f"/projects/{project_id}/snapshots/{first.json()['snapshot']['id']}/restore",
        json={"target_branch_id": main_id, "finalize_restore": True},
    )
    assert restored.status_code == 200, restored.text
    await wait_ops(neon_http, project_id, restored.json()["operations"])
    live_id = restored.json()["branch"]["id"]
    assert live_id != main_id

    assert await fetch(uri, "SELECT n FROM items ORDER BY n") == [(1,), (2,)]
    branches = (await neon_http.get(f"/projects/{project_id}/branches")).json()["branches"]
    names = {b["id"]: b["name"] for b in branches}
    assert names[live_id] == "main"
    assert names[main_id] == "main (old)"

    # After a finalized restore, the live branch id changed: restore a later snapshot onto it.
    again = await neon_http.post(
        f"/projects/{project_id}/snapshots/{second.json()['snapshot']['id']}/restore",
        json={"target_branch_id": live_id, "finalize_restore": True},
    )
    assert again.status_code == 200, again.text
    await wait_ops(neon_http, project_id, again.json()["operations"])
    assert await fetch(uri, "SELECT n FROM items ORDER BY n") == [(1,), (2,), (3,)]
    branches = (await neon_http.get(f"/projects/{project_id}/branches")).json()["branches"]
    assert sorted(b["name"] for b in branches) == ["main", "main (old 2)", "main (old)"]


async def test_restore_ends_open_sessions_and_they_reconnect(neon_http: httpx.AsyncClient) -> None:
    created = await create_project(neon_http)
    project_id, main_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE kv (k text)", "INSERT INTO kv VALUES ('before')")
    snap = await neon_http.post(f"/projects/{project_id}/branches/{main_id}/snapshot")
    await wait_ops(neon_http, project_id, snap.json()["operations"])
    await execute(uri, "INSERT INTO kv VALUES ('after')")
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as pooled:
        restored = await neon_http.post(
            f"/projects/{project_id}/snapshots/{snap.json()['snapshot']['id']}/restore",
            json={"target_branch_id": main_id, "finalize_restore": True},
        )
        await wait_ops(neon_http, project_id, restored.json()["operations"])
        with pytest.raises(psycopg.OperationalError):
            await pooled.execute("SELECT 1")
    assert await fetch(uri, "SELECT k FROM kv") == [("before",)]
