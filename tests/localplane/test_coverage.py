"""Neon API v2 routes neonctl and agent platforms call: shared projects, endpoint create, delete
and restart (read_only endpoints too), role delete, database rename and owner, branch schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar
from psycopg.conninfo import make_conninfo
from support import client_for

from agentdb.localplane import LocalPlane

from .helpers import create_project, execute, fetch, wait_ops


@pytest_asyncio.fixture(loop_scope="session")
async def raw_http(
    localplane_app: Litestar, neon_spec: NeonSpec
) -> AsyncIterator[httpx.AsyncClient]:
    """Bad requests are sent unvalidated (the validating client would refuse them itself);
    the answers are still checked against the document."""
    async with client_for(localplane_app, neon_spec, validate_requests=False) as client:
        yield client


async def _ok(response: httpx.Response, client: httpx.AsyncClient, project_id: str) -> Any:
    assert response.status_code in {200, 201}, response.text
    body = response.json()
    await wait_ops(client, project_id, body.get("operations", []))
    return body


async def test_shared_projects_is_empty_and_checks_its_query(
    neon_http: httpx.AsyncClient, raw_http: httpx.AsyncClient
) -> None:
    await create_project(neon_http)
    shared = await neon_http.get("/projects/shared", params={"limit": 50, "search": "x"})
    assert shared.status_code == 200, shared.text
    assert shared.json() == {"projects": []}
    bad = await raw_http.get("/projects/shared", params={"limit": 0})
    assert bad.status_code == 400
    assert "limit" in bad.json()["message"]


async def test_read_only_endpoint_beside_the_read_write_one(neon_http: httpx.AsyncClient) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    rw_uri = created["connection_uris"][0]["connection_uri"]
    await execute(rw_uri, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1)")
    second_rw = await neon_http.post(
        f"/projects/{project_id}/endpoints",
        json={"endpoint": {"branch_id": branch_id, "type": "read_write"}},
    )
    assert second_rw.status_code == 400
    assert "endpoint.type" in second_rw.json()["message"]
    made = await neon_http.post(
        f"/projects/{project_id}/endpoints",
        json={"endpoint": {"branch_id": branch_id, "type": "read_only", "name": "replica"}},
    )
    assert made.status_code == 201, made.text
    body = await _ok(made, neon_http, project_id)
    replica = body["endpoint"]
    assert (replica["type"], replica["branch_id"]) == ("read_only", branch_id)
    listed = await neon_http.get(f"/projects/{project_id}/branches/{branch_id}/endpoints")
    assert sorted(e["type"] for e in listed.json()["endpoints"]) == ["read_only", "read_write"]
    uri = (
        await neon_http.get(
            f"/projects/{project_id}/connection_uri",
            params={
                "database_name": "neondb",
                "role_name": "neondb_owner",
                "endpoint_id": replica["id"],
            },
        )
    ).json()["uri"]
    assert await fetch(uri, "SELECT x FROM t") == [(1,)]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        await execute(uri, "INSERT INTO t VALUES (2)")
    # The replica's deletion leaves the read_write endpoint's door open.
    deleted = await neon_http.delete(f"/projects/{project_id}/endpoints/{replica['id']}")
    await _ok(deleted, neon_http, project_id)
    assert await fetch(rw_uri, "SELECT count(*) FROM t") == [(1,)]
    gone = await neon_http.get(f"/projects/{project_id}/endpoints/{replica['id']}")
    assert gone.status_code == 404


async def test_deleting_the_last_endpoint_closes_the_door(
    neon_http: httpx.AsyncClient,
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    endpoint_id = created["endpoints"][0]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as session:
        deleted = await neon_http.delete(f"/projects/{project_id}/endpoints/{endpoint_id}")
        body = await _ok(deleted, neon_http, project_id)
        assert body["endpoint"]["id"] == endpoint_id
        with pytest.raises(psycopg.OperationalError):
            await session.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(uri)
    listed = await neon_http.get(f"/projects/{project_id}/branches/{branch_id}/endpoints")
    assert listed.json()["endpoints"] == []
    made = await neon_http.post(
        f"/projects/{project_id}/endpoints",
        json={"endpoint": {"branch_id": branch_id, "type": "read_write"}},
    )
    await _ok(made, neon_http, project_id)
    # As on Neon, the new endpoint has a connection string of its own; the old one is gone.
    asked = await neon_http.get(
        f"/projects/{project_id}/connection_uri",
        params={"database_name": "neondb", "role_name": "neondb_owner"},
    )
    fresh = asked.json()["uri"]
    assert made.json()["endpoint"]["id"] in fresh
    assert await fetch(fresh, "SELECT 1") == [(1,)]
    with pytest.raises(psycopg.OperationalError, match="could not be found"):
        await psycopg.AsyncConnection.connect(uri)


async def test_guard_keeps_a_computeless_branch_closed(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    created = await create_project(neon_http)
    project_id = created["project"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    deleted = await neon_http.delete(
        f"/projects/{project_id}/endpoints/{created['endpoints'][0]['id']}"
    )
    await _ok(deleted, neon_http, project_id)
    assert await plane.reopen_doors([project_id]) == []
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(uri)


async def test_restart_ends_sessions_and_takes_clients_again(
    neon_http: httpx.AsyncClient,
) -> None:
    created = await create_project(neon_http)
    project_id = created["project"]["id"]
    endpoint_id = created["endpoints"][0]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as session:
        restarted = await neon_http.post(f"/projects/{project_id}/endpoints/{endpoint_id}/restart")
        body = await _ok(restarted, neon_http, project_id)
        assert [o["action"] for o in body["operations"]] == ["suspend_compute", "start_compute"]
        with pytest.raises(psycopg.OperationalError):
            await session.execute("SELECT 1")
    assert await fetch(uri, "SELECT 1") == [(1,)]
    state = await neon_http.get(f"/projects/{project_id}/endpoints/{endpoint_id}")
    assert state.json()["endpoint"]["current_state"] == "active"
    missing = await neon_http.post(f"/projects/{project_id}/endpoints/ep-nope/restart")
    assert missing.status_code == 404


async def test_endpoint_create_refuses_bad_input(
    neon_http: httpx.AsyncClient, raw_http: httpx.AsyncClient
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    cases = [
        ({"endpoint": {"type": "read_only"}}, "branch_id"),
        ({"endpoint": {"branch_id": branch_id, "type": "primary"}}, "type"),
        ({"endpoint": {"branch_id": branch_id, "type": "read_only", "region_id": "x"}}, "region"),
        (
            {
                "endpoint": {
                    "branch_id": branch_id,
                    "type": "read_only",
                    "autoscaling_limit_min_cu": 4,
                    "autoscaling_limit_max_cu": 1,
                }
            },
            "autoscaling_limit_min_cu",
        ),
    ]
    for body, field in cases:
        answer = await raw_http.post(f"/projects/{project_id}/endpoints", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert field in answer.json()["message"], answer.text
    unknown = await neon_http.post(
        f"/projects/{project_id}/endpoints",
        json={"endpoint": {"branch_id": "br-nope", "type": "read_only"}},
    )
    assert unknown.status_code == 404


async def test_role_delete_and_its_refusals(neon_http: httpx.AsyncClient) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    roles = f"/projects/{project_id}/branches/{branch_id}/roles"
    owner_uri = created["connection_uris"][0]["connection_uri"]
    made = await _ok(
        await neon_http.post(roles, json={"role": {"name": "temp"}}), neon_http, project_id
    )
    # Connection strings log in by the API's name; SQL knows the role by its name in the
    # cluster, which carries the project's suffix.
    ((owner,),) = await fetch(owner_uri, "SELECT current_user")
    temp = "temp_" + owner.removeprefix("neondb_owner_")
    temp_uri = make_conninfo(owner_uri, user="temp", password=made["role"]["password"])
    assert await fetch(temp_uri, "SELECT starts_with(current_user, 'temp_')") == [(True,)]
    # Owning a database is refused, naming the database.
    owned = await neon_http.delete(f"{roles}/neondb_owner")
    assert owned.status_code == 400
    assert "neondb" in owned.json()["message"]
    # Holding a privilege is refused too (DROP ROLE would fail).
    await execute(owner_uri, "CREATE TABLE shared_t (x int)")
    await execute(owner_uri, f"GRANT SELECT ON shared_t TO {temp}")
    holding = await neon_http.delete(f"{roles}/temp")
    assert holding.status_code == 400
    assert "privileges" in holding.json()["message"]
    await execute(owner_uri, f"REVOKE SELECT ON shared_t FROM {temp}")
    deleted = await neon_http.delete(f"{roles}/temp")
    body = await _ok(deleted, neon_http, project_id)
    assert body["role"]["name"] == "temp"
    assert (await neon_http.get(f"{roles}/temp")).status_code == 404
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(temp_uri)
    absent = await neon_http.delete(f"{roles}/temp")
    assert absent.status_code == 204


async def test_database_rename_and_owner(
    neon_http: httpx.AsyncClient, raw_http: httpx.AsyncClient
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    base = f"/projects/{project_id}/branches/{branch_id}"
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE kept (x int)", "INSERT INTO kept VALUES (7)")
    await _ok(
        await neon_http.post(f"{base}/roles", json={"role": {"name": "app"}}),
        neon_http,
        project_id,
    )
    await _ok(
        await neon_http.post(
            f"{base}/databases", json={"database": {"name": "other", "owner_name": "app"}}
        ),
        neon_http,
        project_id,
    )
    taken = await neon_http.patch(f"{base}/databases/neondb", json={"database": {"name": "other"}})
    assert taken.status_code == 409
    assert "database.name" in taken.json()["message"]
    no_role = await neon_http.patch(
        f"{base}/databases/neondb", json={"database": {"owner_name": "ghost"}}
    )
    assert no_role.status_code == 400
    assert "owner_name" in no_role.json()["message"]
    empty_name = await raw_http.patch(f"{base}/databases/neondb", json={"database": {"name": ""}})
    assert empty_name.status_code == 400
    patched = await neon_http.patch(
        f"{base}/databases/neondb", json={"database": {"name": "renamed", "owner_name": "app"}}
    )
    body = await _ok(patched, neon_http, project_id)
    assert (body["database"]["name"], body["database"]["owner_name"]) == ("renamed", "app")
    assert (await neon_http.get(f"{base}/databases/neondb")).status_code == 404
    names = {d["name"] for d in (await neon_http.get(f"{base}/databases")).json()["databases"]}
    assert names == {"renamed", "other"}
    # Same data under the new name (connection strings name it, as on Neon), now owned by the
    # app role in PostgreSQL too.
    with pytest.raises(psycopg.OperationalError, match='database "neondb" does not exist'):
        await fetch(uri, "SELECT 1")
    uri = uri.replace("/neondb?", "/renamed?")
    assert await fetch(uri, "SELECT x FROM kept") == [(7,)]
    # The owner a tenant sees owns `public`; the database stays the superuser's, so its owner
    # cannot open it to other tenants (GRANT CONNECT ... TO PUBLIC).
    owner = await fetch(
        uri,
        "SELECT pg_get_userbyid(n.nspowner), pg_get_userbyid(d.datdba) FROM pg_namespace n,"
        " pg_database d WHERE n.nspname = 'public' AND d.datname = current_database()",
    )
    assert owner[0][0].startswith("app_")
    assert not owner[0][1].startswith(("app_", "neondb_owner_"))
    missing = await neon_http.patch(f"{base}/databases/nope", json={"database": {"name": "x"}})
    assert missing.status_code == 404
    # A suspended branch cannot take the owner change; nothing is half written.
    endpoint_id = created["endpoints"][0]["id"]
    await _ok(
        await neon_http.post(f"/projects/{project_id}/endpoints/{endpoint_id}/suspend"),
        neon_http,
        project_id,
    )
    closed = await neon_http.patch(
        f"{base}/databases/renamed", json={"database": {"owner_name": "neondb_owner"}}
    )
    assert closed.status_code == 400
    assert "owner_name" in closed.json()["message"]
    kept = (await neon_http.get(f"{base}/databases/renamed")).json()["database"]
    assert kept["owner_name"] == "app"


async def test_branch_schema_is_the_schema_dump(
    neon_http: httpx.AsyncClient, raw_http: httpx.AsyncClient
) -> None:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE widgets (id int PRIMARY KEY, label text)")
    path = f"/projects/{project_id}/branches/{branch_id}/schema"
    schema = await neon_http.get(path, params={"db_name": "neondb"})
    assert schema.status_code == 200, schema.text
    assert "CREATE TABLE public.widgets" in schema.json()["sql"]
    missing_db = await raw_http.get(path)
    assert missing_db.status_code == 400
    assert "db_name" in missing_db.json()["message"]
    past = await neon_http.get(path, params={"db_name": "neondb", "lsn": "0/1"})
    assert past.status_code == 400
    assert "lsn" in past.json()["message"]
    unknown = await neon_http.get(path, params={"db_name": "nope"})
    assert unknown.status_code == 404


async def test_restore_from_another_branch_at_its_head(neon_http: httpx.AsyncClient) -> None:
    created = await create_project(neon_http)
    project_id, main_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1)")
    child = await _ok(
        await neon_http.post(
            f"/projects/{project_id}/branches", json={"endpoints": [{"type": "read_write"}]}
        ),
        neon_http,
        project_id,
    )
    child_uri = child["connection_uris"][0]["connection_uri"]
    await execute(uri, "INSERT INTO t VALUES (2)")
    assert await fetch(child_uri, "SELECT count(*) FROM t") == [(1,)]
    restored = await neon_http.post(
        f"/projects/{project_id}/branches/{child['branch']['id']}/restore",
        json={"source_branch_id": main_id},
    )
    await _ok(restored, neon_http, project_id)
    assert await fetch(child_uri, "SELECT count(*) FROM t") == [(2,)]
