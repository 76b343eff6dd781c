"""Projects: create (Neon's CreatedProject shape), list with cursors, get, patch, delete."""

from __future__ import annotations

import httpx
import psycopg
import pytest
from support import client_for

from .helpers import create_project, fetch, wait_ops


async def test_create_returns_working_connection_uri_and_owner_password(
    neon_http: httpx.AsyncClient,
) -> None:
    created = await create_project(
        neon_http,
        name="shop",
        branch={"name": "trunk", "role_name": "app", "database_name": "appdb"},
        pg_version=17,
        region_id="aws-us-east-2",
        org_id="org-local-1",
    )
    assert created["branch"]["name"] == "trunk"
    assert created["project"]["org_id"] == "org-local-1"
    assert created["project"]["region_id"] == "aws-us-east-2"
    assert created["roles"][0]["name"] == "app"
    assert created["roles"][0]["password"]
    assert created["databases"][0]["name"] == "appdb"
    assert created["endpoints"][0]["type"] == "read_write"
    assert {op["action"] for op in created["operations"]} == {"create_timeline", "start_compute"}
    uri = created["connection_uris"][0]["connection_uri"]
    rows = await fetch(uri, "SELECT current_user, version()")
    assert rows[0][0].startswith("app_")
    assert "PostgreSQL 18" in rows[0][1]
    # The owner role owns `public`, so the agent can create tables right away.
    await fetch(uri, "CREATE TABLE t (id int)")


async def test_project_settings_are_stored_and_reported(neon_http: httpx.AsyncClient) -> None:
    quota = {"active_time_seconds": 3600, "logical_size_bytes": 10_000_000}
    created = await create_project(
        neon_http,
        default_endpoint_settings={
            "autoscaling_limit_min_cu": 0.25,
            "autoscaling_limit_max_cu": 2,
            "suspend_timeout_seconds": 300,
        },
        settings={"quota": quota},
        history_retention_seconds=3600,
    )
    project_id = created["project"]["id"]
    endpoint = created["endpoints"][0]
    assert endpoint["autoscaling_limit_max_cu"] == 2
    assert endpoint["suspend_timeout_seconds"] == 300
    got = (await neon_http.get(f"/projects/{project_id}")).json()["project"]
    assert got["settings"]["quota"] == quota
    assert got["history_retention_seconds"] == 3600
    assert got["default_endpoint_settings"]["autoscaling_limit_max_cu"] == 2

    patched = await neon_http.patch(
        f"/projects/{project_id}",
        json={"project": {"name": "renamed", "settings": {"quota": {"compute_time_seconds": 60}}}},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["project"]["name"] == "renamed"
    again = (await neon_http.get(f"/projects/{project_id}")).json()["project"]
    assert again["name"] == "renamed"
    assert again["settings"]["quota"] == {"compute_time_seconds": 60}


async def test_list_pages_with_cursor_and_filters_by_org(neon_http: httpx.AsyncClient) -> None:
    org = "org-paging-test"
    ids = [(await create_project(neon_http, org_id=org))["project"]["id"] for _ in range(3)]
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"org_id": org, "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await neon_http.get("/projects", params=params)).json()
        if not page["projects"]:
            break
        seen += [p["id"] for p in page["projects"]]
        cursor = page["pagination"]["cursor"]
    assert seen == ids
    search = (await neon_http.get("/projects", params={"search": ids[1]})).json()
    assert [p["id"] for p in search["projects"]] == [ids[1]]
    nothing = (await neon_http.get("/projects", params={"search": "no-project-has-this"})).json()
    assert nothing["projects"] == []
    assert "pagination" not in nothing  # the spec wants a non-empty cursor or none


async def test_delete_drops_the_databases(neon_http: httpx.AsyncClient, plane) -> None:
    created = await create_project(neon_http)
    project_id = created["project"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    deleted = await neon_http.delete(f"/projects/{project_id}")
    assert deleted.status_code == 200
    assert deleted.json()["project"]["id"] == project_id
    assert (await neon_http.get(f"/projects/{project_id}")).status_code == 404
    await plane.drain()  # the databases are dropped in the background
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(uri, connect_timeout=3)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "project"),
        ({"project": {"name": ""}}, "project.name"),
        ({"project": {"pg_version": 12}}, "project.pg_version"),
        ({"project": {"org_id": "Not An Org!"}}, "project.org_id"),
        ({"project": {"history_retention_seconds": -1}}, "project.history_retention_seconds"),
        (
            {"project": {"default_endpoint_settings": {"autoscaling_limit_min_cu": 0.1}}},
            "project.default_endpoint_settings.autoscaling_limit_min_cu",
        ),
        (
            {
                "project": {
                    "default_endpoint_settings": {
                        "autoscaling_limit_min_cu": 4,
                        "autoscaling_limit_max_cu": 1,
                    }
                }
            },
            "autoscaling_limit_min_cu",
        ),
        ({"project": {"branch": {"role_name": "r" * 60}}}, "project.branch.role_name"),
    ],
)
async def test_bad_project_bodies_name_the_field(
    localplane_app, neon_spec, body: dict[str, object], field: str
) -> None:
    # Bad requests are sent raw: the validating client would refuse most of them itself.
    async with client_for(localplane_app, neon_spec, validate_requests=False) as raw:
        before = len((await raw.get("/projects", params={"limit": "400"})).json()["projects"])
        resp = await raw.post("/projects", json=body)
        assert resp.status_code == 400, resp.text
        error = resp.json()
        assert field in error["message"]
        after = len((await raw.get("/projects", params={"limit": "400"})).json()["projects"])
        assert after == before  # nothing half written


async def test_invalid_json_and_non_object_bodies(localplane_app, neon_spec) -> None:
    async with client_for(localplane_app, neon_spec, validate_requests=False) as raw:
        broken = await raw.post("/projects", content=b"{not json")
        assert broken.status_code == 400
        assert "invalid JSON" in broken.json()["message"]
        listed = await raw.post("/projects", json=[1, 2])
        assert listed.status_code == 400
        assert "JSON object" in listed.json()["message"]
        limit = await raw.get("/projects", params={"limit": "0"})
        assert limit.status_code == 400
        assert "limit" in limit.json()["message"]


async def test_wait_ops_sees_operations_finish(neon_http: httpx.AsyncClient) -> None:
    created = await create_project(neon_http)
    project_id = created["project"]["id"]
    listed = (await neon_http.get(f"/projects/{project_id}/operations")).json()
    assert {op["status"] for op in listed["operations"]} == {"finished"}
    await wait_ops(neon_http, project_id, listed["operations"])
