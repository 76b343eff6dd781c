"""Organizations of the local plane: the default one, pre-created ones, on-the-fly ones, and
moving projects between them (all or nothing)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar
from support import client_for

from agentdb.localplane import create_app, running
from agentdb.neon import NeonClient, NeonHTTPError, NeonNotFound
from agentdb.pg import ServerInfo
from agentdb.settings import Settings

from .helpers import create_project


@pytest_asyncio.fixture(loop_scope="session")
async def neon(localplane_app: Litestar, neon_spec: NeonSpec) -> AsyncIterator[NeonClient]:
    hooks = {"request": [neon_spec.request_hook()], "response": [neon_spec.response_hook()]}
    async with NeonClient.for_app(localplane_app, api_key="test-key", event_hooks=hooks) as client:
        yield client


def _org() -> str:
    return f"org-test-{secrets.token_hex(4)}"


async def _org_of(neon_http: httpx.AsyncClient, project_id: str) -> str:
    resp = await neon_http.get(f"/projects/{project_id}")
    assert resp.status_code == 200, resp.text
    org_id: str = resp.json()["project"]["org_id"]
    return org_id


async def test_projects_without_org_land_in_the_default_organization(
    neon_http: httpx.AsyncClient, neon: NeonClient
) -> None:
    created = await create_project(neon_http)
    assert created["project"]["org_id"] == "org-local"
    orgs = {o.id: o for o in await neon.list_organizations()}
    assert orgs["org-local"].name == "local"
    resp = await neon_http.get("/organizations/org-local")
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == "org-local"


async def test_unknown_org_id_creates_the_organization(
    neon_http: httpx.AsyncClient, neon: NeonClient
) -> None:
    org = _org()
    assert (await neon_http.get(f"/organizations/{org}")).status_code == 404
    created = await create_project(neon_http, org_id=org)
    assert created["project"]["org_id"] == org
    assert org in {o.id for o in await neon.list_organizations()}
    assert (await neon_http.get(f"/organizations/{org}")).json()["name"] == org


async def test_app_precreates_organizations_from_arguments_and_settings(
    pg_server: ServerInfo, data_dir: Path, neon: NeonClient
) -> None:
    from_arg, from_settings = _org(), _org()
    settings = Settings(data_dir=data_dir, localplane_organizations=f"{from_settings},org-local")
    async with running(create_app(settings, server=pg_server, organizations=[from_arg])):
        pass
    ids = {o.id for o in await neon.list_organizations()}
    assert {from_arg, from_settings, "org-local"} <= ids


async def test_transfer_moves_projects_between_organizations(
    neon_http: httpx.AsyncClient, neon: NeonClient
) -> None:
    source, destination = _org(), _org()
    ids = [(await create_project(neon_http, org_id=source))["project"]["id"] for _ in range(2)]
    await create_project(neon_http, org_id=destination)
    batches = await neon.transfer_projects(
        source_org_id=source, destination_org_id=destination, project_ids=ids
    )
    assert batches == 1
    assert [await _org_of(neon_http, p) for p in ids] == [destination, destination]
    listed = await neon_http.get("/projects", params={"org_id": destination, "limit": "10"})
    assert set(ids) <= {p["id"] for p in listed.json()["projects"]}
    listed = await neon_http.get("/projects", params={"org_id": source})
    assert listed.json()["projects"] == []


async def test_failed_transfer_moves_nothing(
    neon_http: httpx.AsyncClient, neon: NeonClient
) -> None:
    source, destination, elsewhere = _org(), _org(), _org()
    await create_project(neon_http, org_id=destination)
    mine = (await create_project(neon_http, org_id=source))["project"]["id"]
    foreign = (await create_project(neon_http, org_id=elsewhere))["project"]["id"]

    async def transfer(*project_ids: str, to: str = destination) -> None:
        await neon.transfer_projects(
            source_org_id=source, destination_org_id=to, project_ids=list(project_ids)
        )

    with pytest.raises(NeonNotFound, match="no-such-project-1"):
        await transfer(mine, "no-such-project-1")
    with pytest.raises(NeonNotFound, match=f"{foreign} not found in organization {source}"):
        await transfer(mine, foreign)
    with pytest.raises(NeonNotFound, match="destination_org_id"):
        await transfer(mine, to="org-never-created")
    with pytest.raises(NeonNotFound, match="source_org_id"):
        await neon.transfer_projects(
            source_org_id="org-never-created", destination_org_id=destination, project_ids=[mine]
        )
    assert await _org_of(neon_http, mine) == source
    assert await _org_of(neon_http, foreign) == elsewhere


@pytest.mark.parametrize(
    "body",
    [
        {"destination_org_id": "org-local", "project_ids": []},
        {"destination_org_id": "org-local", "project_ids": [f"p-{i}" for i in range(401)]},
        {"destination_org_id": "org-local"},
    ],
    ids=["empty", "over-400", "missing"],
)
async def test_transfer_rejects_bad_project_id_lists(
    localplane_app: Litestar, neon_spec: NeonSpec, body: dict[str, object]
) -> None:
    async with client_for(localplane_app, neon_spec, validate_requests=False) as client:
        resp = await client.post("/organizations/org-local/projects/transfer", json=body)
    assert resp.status_code == 400, resp.text
    assert "project_ids" in resp.json()["message"]


async def test_organization_calls_through_the_client_errors(neon: NeonClient) -> None:
    with pytest.raises(NeonHTTPError) as caught:
        await neon.transfer_projects(
            source_org_id="org-local", destination_org_id="org-local", project_ids=["nope-1"]
        )
    assert caught.value.status == 404
