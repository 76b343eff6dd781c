"""The routes the walkthrough does not reach: users, previews, dev branches, diffs, checkpoint
delete, events paging, and session delete, each checked against the data."""

from __future__ import annotations

import asyncio

import httpx
import psycopg

from agentdb.runtime import Runtime

from .conftest import ADMIN, Tenant, make_tenant, sql_runner


async def test_users_list_get_and_a_user_reading_itself(http: httpx.AsyncClient, tenant: Tenant):
    await make_tenant(http, "second")
    users = (await http.get("/v1/users?limit=500", headers=ADMIN)).json()["users"]
    assert tenant.user_id in [u["id"] for u in users]
    page = (await http.get("/v1/users?limit=1", headers=ADMIN)).json()["users"]
    nxt = (await http.get(f"/v1/users?limit=1&after={page[0]['id']}", headers=ADMIN)).json()
    assert nxt["users"][0]["id"] != page[0]["id"]
    mine = await http.get(f"/v1/users/{tenant.user_id}", headers=tenant.user_token)
    assert mine.status_code == 200
    assert mine.json()["tier"] == "free"


async def test_preview_shows_the_checkpoint_while_the_live_database_moves_on(
    http: httpx.AsyncClient, tenant: Tenant
):
    s = f"/v1/sessions/{tenant.session_id}"
    run = sql_runner(http, tenant.session_id, tenant.user_token)
    await run("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('old')")
    checkpoint = (await http.post(f"{s}/checkpoints", json={}, headers=tenant.user_token)).json()
    await run("UPDATE notes SET body = 'new'")

    preview = await http.post(
        f"{s}/checkpoints/{checkpoint['id']}/preview",
        json={"ttl_seconds": 600},
        headers=tenant.user_token,
    )
    assert preview.status_code == 201, preview.text
    body = preview.json()
    assert body["kind"] == "preview"
    assert body["expires_at"]
    async with await psycopg.AsyncConnection.connect(body["connection_uri"]) as conn:
        cursor = await conn.execute("SELECT body FROM notes")
        assert await cursor.fetchall() == [("old",)]
    assert await run("SELECT body FROM notes") == [["new"]]
    listed = (await http.get(f"{s}/branches", headers=tenant.session_token)).json()["branches"]
    assert [(b["id"], b["connection_uri"]) for b in listed] == [(body["id"], None)]


async def test_dev_branch_reset_and_delete(http: httpx.AsyncClient, tenant: Tenant):
    s = f"/v1/sessions/{tenant.session_id}"
    run = sql_runner(http, tenant.session_id, tenant.user_token)
    await run("CREATE TABLE items (n int); INSERT INTO items VALUES (1)")
    created = await http.post(f"{s}/branches", json={"name": "try it"}, headers=tenant.user_token)
    assert created.status_code == 201, created.text
    branch = created.json()
    assert branch["kind"] == "dev"
    assert branch["name"] == "try it"
    assert branch["source_checkpoint_id"] is None
    uri = branch["connection_uri"]
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute("INSERT INTO items VALUES (2)")
    assert await run("SELECT n FROM items") == [[1]]  # the live database is untouched

    reset = await http.post(f"{s}/branches/{branch['id']}/reset", headers=tenant.user_token)
    assert reset.status_code == 200, reset.text
    async with await psycopg.AsyncConnection.connect(uri) as conn:
        cursor = await conn.execute("SELECT n FROM items ORDER BY n")
        assert await cursor.fetchall() == [(1,)]

    deleted = await http.delete(f"{s}/branches/{branch['id']}", headers=tenant.user_token)
    assert deleted.status_code == 200
    assert deleted.json()["status"] == "deleted"
    assert (await http.get(f"{s}/branches", headers=tenant.user_token)).json()["branches"] == []


async def test_diff_between_checkpoints_and_against_head(http: httpx.AsyncClient, tenant: Tenant):
    s = f"/v1/sessions/{tenant.session_id}"
    run = sql_runner(http, tenant.session_id, tenant.user_token)
    await run("CREATE TABLE a (n int); INSERT INTO a VALUES (1)")
    one = (await http.post(f"{s}/checkpoints", json={}, headers=tenant.user_token)).json()
    await run(
        "CREATE TABLE b (n int); ALTER TABLE a ADD COLUMN note text; INSERT INTO a VALUES (2)"
    )
    two = (await http.post(f"{s}/checkpoints", json={}, headers=tenant.user_token)).json()
    await run("DROP TABLE b")

    between = await http.get(
        f"{s}/checkpoints/{one['id']}/diff?against={two['id']}", headers=tenant.session_token
    )
    assert between.status_code == 200, between.text
    tables = {t["name"]: t for t in between.json()["tables"]}
    assert tables["public.b"]["change"] == "added"
    assert tables["public.a"]["change"] == "changed"
    assert tables["public.a"]["columns_added"] == ["note"]
    assert (tables["public.a"]["rows_from"], tables["public.a"]["rows_to"]) == (1, 2)

    head = await http.get(f"{s}/checkpoints/{two['id']}/diff", headers=tenant.session_token)
    assert head.json()["to_checkpoint_id"] is None
    assert {t["name"]: t["change"] for t in head.json()["tables"]}["public.b"] == "removed"


async def test_checkpoint_delete_keeps_the_tree_sound(http: httpx.AsyncClient, tenant: Tenant):
    s = f"/v1/sessions/{tenant.session_id}"
    one = (await http.post(f"{s}/checkpoints", json={"label": "1"}, headers=ADMIN)).json()
    two = (await http.post(f"{s}/checkpoints", json={"label": "2"}, headers=ADMIN)).json()
    head = await http.delete(f"{s}/checkpoints/{two['id']}", headers=ADMIN)
    assert head.status_code == 409  # the head stays
    gone = await http.delete(f"{s}/checkpoints/{one['id']}", headers=ADMIN)
    assert gone.status_code == 200, gone.text
    assert gone.json()["status"] == "deleted"
    assert (await http.get(f"{s}/checkpoints/{one['id']}", headers=ADMIN)).status_code == 404
    tree = (await http.get(f"{s}/checkpoints", headers=ADMIN)).json()
    by_id = {c["id"]: c for c in tree["checkpoints"]}
    assert one["id"] not in by_id
    assert by_id[two["id"]]["parent_id"] == tenant.session["head_checkpoint_id"]


async def test_events_page_oldest_first(http: httpx.AsyncClient, tenant: Tenant):
    s = f"/v1/sessions/{tenant.session_id}"
    for label in ("a", "b"):
        await http.post(f"{s}/checkpoints", json={"label": label}, headers=tenant.user_token)
    first = (await http.get(f"{s}/events?limit=2", headers=tenant.session_token)).json()
    assert len(first["events"]) == 2
    assert first["next_after"] == first["events"][-1]["id"]
    rest = (
        await http.get(f"{s}/events?after={first['next_after']}&limit=500", headers=ADMIN)
    ).json()
    ids = [e["id"] for e in first["events"] + rest["events"]]
    assert ids == sorted(ids)
    assert rest["next_after"] is None
    assert {e["actor_scope"] for e in rest["events"]} >= {"user"}


async def test_deleting_a_session_drops_its_database_and_branches(http: httpx.AsyncClient):
    tenant = await make_tenant(http, "leaving")
    s = f"/v1/sessions/{tenant.session_id}"
    await http.post(f"{s}/branches", json={}, headers=tenant.user_token)
    deleted = await http.delete(s, headers=tenant.user_token)
    assert deleted.json()["status"] == "deleted"
    assert deleted.json()["connection_uri"] is None
    assert (await http.get(f"{s}/branches", headers=tenant.user_token)).json()["branches"] == []
    try:
        async with await psycopg.AsyncConnection.connect(tenant.session["connection_uri"]):
            connected = True
    except psycopg.OperationalError:
        connected = False
    assert not connected
    again = await http.delete(s, headers=tenant.user_token)
    assert again.status_code == 200  # deleting twice is fine
    listed = (await http.get("/v1/sessions", headers=tenant.user_token)).json()["sessions"]
    assert listed == []


async def test_expired_previews_are_deleted_by_the_background_job(
    http: httpx.AsyncClient, tenant: Tenant, runtime: Runtime
):
    s = f"/v1/sessions/{tenant.session_id}"
    head = tenant.session["head_checkpoint_id"]
    preview = await http.post(
        f"{s}/checkpoints/{head}/preview", json={"ttl_seconds": 1}, headers=tenant.user_token
    )
    assert preview.status_code == 201, preview.text
    await asyncio.sleep(1.2)
    assert await runtime.jobs.run_now("expire_branches") >= 1
    listed = (await http.get(f"{s}/branches", headers=tenant.user_token)).json()["branches"]
    assert preview.json()["id"] not in [b["id"] for b in listed]
    health = (await http.get("/healthz")).json()
    assert health["status"] == "ok"
    assert health["jobs"]["expire_branches"]["runs"] >= 1
    assert set(health["jobs"]) == {
        "reconcile",
        "expire_branches",
        "cleanup_replaced_branches",
        "expire_idempotency_keys",
        "tier_changes",
        "fleet_migrations",
        "poll_usage",
        "close_idle_sql_connections",
        "prune_checkpoints",
        "fill_warm_pool",
    }
