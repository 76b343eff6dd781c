"""Endpoints (suspend closes the door), roles and passwords, databases, connection URIs."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from agentdb.pg import ServerInfo

from .helpers import create_project, execute, fetch, wait_ops


async def test_suspend_ends_sessions_and_a_new_connection_wakes_the_endpoint(
    neon_http: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    """As on Neon: suspending ends the compute's sessions; the next connection through the
    connection string starts it again. Straight to PostgreSQL, the database stays closed."""
    created = await create_project(neon_http)
    project_id = created["project"]["id"]
    endpoint_id = created["endpoints"][0]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    role, database = (await fetch(uri, "SELECT current_user, current_database()"))[0]
    password = created["roles"][0]["password"]
    direct = f"postgresql://{role}:{password}@{pg_server.host}:{pg_server.port}/{database}"

    async def state() -> str:
        answer = await neon_http.get(f"/projects/{project_id}/endpoints/{endpoint_id}")
        return str(answer.json()["endpoint"]["current_state"])

    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as open_session:
        suspended = await neon_http.post(f"/projects/{project_id}/endpoints/{endpoint_id}/suspend")
        assert suspended.status_code == 200
        await wait_ops(neon_http, project_id, suspended.json()["operations"])
        with pytest.raises(psycopg.OperationalError):
            await open_session.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(direct)
    assert await state() == "idle"
    assert await fetch(uri, "SELECT 1") == [(1,)]
    assert await state() == "active"
    assert await fetch(direct, "SELECT 1") == [(1,)]


async def test_patch_endpoint_limits_are_reported(neon_http: httpx.AsyncClient) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    endpoint_id = created["endpoints"][0]["id"]
    patched = await neon_http.patch(
        f"/projects/{project_id}/endpoints/{endpoint_id}",
        json={
            "endpoint": {
                "autoscaling_limit_min_cu": 0.5,
                "autoscaling_limit_max_cu": 4,
                "suspend_timeout_seconds": -1,
            }
        },
    )
    assert patched.status_code == 200, patched.text
    await wait_ops(neon_http, project_id, patched.json()["operations"])
    listed = (await neon_http.get(f"/projects/{project_id}/branches/{branch_id}/endpoints")).json()
    endpoint = listed["endpoints"][0]
    assert (endpoint["autoscaling_limit_min_cu"], endpoint["autoscaling_limit_max_cu"]) == (0.5, 4)
    assert endpoint["suspend_timeout_seconds"] == -1
    inverted = await neon_http.patch(
        f"/projects/{project_id}/endpoints/{endpoint_id}",
        json={"endpoint": {"autoscaling_limit_min_cu": 8}},
    )
    assert inverted.status_code == 400
    assert "autoscaling_limit_min_cu" in inverted.json()["message"]


async def test_roles_reveal_and_reset_password(neon_http: httpx.AsyncClient) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    made = await neon_http.post(
        f"/projects/{project_id}/branches/{branch_id}/roles", json={"role": {"name": "reader"}}
    )
    assert made.status_code == 201, made.text
    await wait_ops(neon_http, project_id, made.json()["operations"])
    password = made.json()["role"]["password"]
    revealed = await neon_http.get(
        f"/projects/{project_id}/branches/{branch_id}/roles/reader/reveal_password"
    )
    assert revealed.json() == {"password": password}
    names = {
        r["name"]
        for r in (await neon_http.get(f"/projects/{project_id}/branches/{branch_id}/roles")).json()[
            "roles"
        ]
    }
    assert names == {"neondb_owner", "reader"}

    uri = (
        await neon_http.get(
            f"/projects/{project_id}/connection_uri",
            params={"database_name": "neondb", "role_name": "reader"},
        )
    ).json()["uri"]
    assert await fetch(uri, "SELECT 1") == [(1,)]
    reset = await neon_http.post(
        f"/projects/{project_id}/branches/{branch_id}/roles/reader/reset_password"
    )
    await wait_ops(neon_http, project_id, reset.json()["operations"])
    assert reset.json()["role"]["password"] != password
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(uri)
    duplicate = await neon_http.post(
        f"/projects/{project_id}/branches/{branch_id}/roles", json={"role": {"name": "reader"}}
    )
    assert duplicate.status_code == 409
    unknown = await neon_http.get(
        f"/projects/{project_id}/branches/{branch_id}/roles/nobody/reveal_password"
    )
    assert unknown.status_code == 404


async def test_databases_create_list_delete(neon_http: httpx.AsyncClient) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    made = await neon_http.post(
        f"/projects/{project_id}/branches/{branch_id}/databases",
        json={"database": {"name": "analytics", "owner_name": "neondb_owner"}},
    )
    assert made.status_code == 201, made.text
    await wait_ops(neon_http, project_id, made.json()["operations"])
    uri = (
        await neon_http.get(
            f"/projects/{project_id}/connection_uri",
            params={"database_name": "analytics", "role_name": "neondb_owner"},
        )
    ).json()["uri"]
    await execute(uri, "CREATE TABLE events (id int)")
    names = [
        d["name"]
        for d in (
            await neon_http.get(f"/projects/{project_id}/branches/{branch_id}/databases")
        ).json()["databases"]
    ]
    assert names == ["neondb", "analytics"]
    bad_owner = await neon_http.post(
        f"/projects/{project_id}/branches/{branch_id}/databases",
        json={"database": {"name": "x", "owner_name": "ghost"}},
    )
    assert bad_owner.status_code == 400
    assert "owner_name" in bad_owner.json()["message"]
    deleted = await neon_http.delete(
        f"/projects/{project_id}/branches/{branch_id}/databases/analytics"
    )
    assert deleted.status_code == 200
    await wait_ops(neon_http, project_id, deleted.json()["operations"])
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(uri)


async def test_connection_uri_errors_name_the_parameter(neon_http: httpx.AsyncClient) -> None:
    created = await create_project(neon_http)
    project_id = created["project"]["id"]
    no_db = await neon_http.get(
        f"/projects/{project_id}/connection_uri",
        params={"database_name": "nope", "role_name": "neondb_owner"},
    )
    assert no_db.status_code == 404
    assert "database_name" in no_db.json()["message"]
    pooled = await neon_http.get(
        f"/projects/{project_id}/connection_uri",
        params={"database_name": "neondb", "role_name": "neondb_owner", "pooled": "true"},
    )
    assert pooled.status_code == 200
    # As Neon's pooled host carries `-pooler`, the pooled string names the `-pooler` endpoint.
    unpooled = created["connection_uris"][0]["connection_uri"]
    endpoint = created["endpoints"][0]["id"]
    assert pooled.json()["uri"] == unpooled.replace(endpoint, f"{endpoint}-pooler")
