"""The README's walkthrough, through the API: user -> session -> SQL -> checkpoint ->
restore, with the data checked at every step."""

from __future__ import annotations

import httpx
import psycopg

from .conftest import ADMIN, Tenant, bearer, sql_runner


async def test_user_session_sql_checkpoint_restore(http: httpx.AsyncClient):
    user = await http.post(
        "/v1/users", json={"email": "Grace@Example.com", "tier": "free"}, headers=ADMIN
    )
    assert user.status_code == 201, user.text
    assert user.json()["email"] == "grace@example.com"
    token = await http.post(
        f"/v1/users/{user.json()['id']}/tokens", json={"name": "ci"}, headers=ADMIN
    )
    assert token.status_code == 201, token.text
    assert token.json()["scope"] == "user"
    owner = bearer(token.json()["token"])

    created = await http.post("/v1/sessions", json={"name": "todo app"}, headers=owner)
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["status"] == "ready"
    assert session["user_id"] == user.json()["id"]
    assert session["head_checkpoint_id"]
    sid = session["id"]
    run = sql_runner(http, sid, owner)

    await run(
        "CREATE TABLE todo (id int PRIMARY KEY, title text); INSERT INTO todo VALUES (1, 'a')"
    )
    first = await http.post(
        f"/v1/sessions/{sid}/checkpoints", json={"label": "one todo"}, headers=owner
    )
    assert first.status_code == 201, first.text
    assert first.json()["parent_id"] == session["head_checkpoint_id"]
    await run("INSERT INTO todo VALUES (2, 'b')")
    assert await run("SELECT count(*) FROM todo") == [[2]]

    restored = await http.post(
        f"/v1/sessions/{sid}/checkpoints/{first.json()['id']}/restore", headers=owner
    )
    assert restored.status_code == 200, restored.text
    assert restored.json()["head_checkpoint_id"] == first.json()["id"]
    assert restored.json()["connection_uri"] == session["connection_uri"]
    assert await run("SELECT id, title FROM todo") == [[1, "a"]]
    async with await psycopg.AsyncConnection.connect(session["connection_uri"]) as conn:
        cursor = await conn.execute("SELECT count(*) FROM todo")
        assert await cursor.fetchone() == (1,)

    tree = await http.get(f"/v1/sessions/{sid}/checkpoints", headers=owner)
    assert tree.json()["head_id"] == first.json()["id"]
    assert len(tree.json()["checkpoints"]) == 2
    events = await http.get(f"/v1/sessions/{sid}/events", headers=owner)
    actions = [e["action"] for e in events.json()["events"]]
    assert "checkpoint.restore" in actions


async def test_session_token_reaches_its_session_without_secrets(
    http: httpx.AsyncClient, tenant: Tenant
):
    seen = await http.get(f"/v1/sessions/{tenant.session_id}", headers=tenant.session_token)
    assert seen.status_code == 200
    assert seen.json()["connection_uri"] is None
    assert tenant.session["connection_uri"].startswith("postgresql://")
    listed = await http.get("/v1/sessions", headers=tenant.session_token)
    assert [s["id"] for s in listed.json()["sessions"]] == [tenant.session_id]


async def test_healthz_readyz_and_schema_need_no_token(http: httpx.AsyncClient):
    health = await http.get("/healthz")
    assert health.status_code == 200
    assert health.json()["control_plane"] == "local"
    ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "checks": {"meta_database": None, "control_plane": None, "postgres": None},
    }
    schema = await http.get("/schema/openapi.json")
    assert schema.status_code == 200
    assert "/v1/sessions/{session_id}/checkpoints/{checkpoint_id}/restore" in schema.json()["paths"]
