"""Calls the local plane does not serve (Neon Auth, Data API, consumption, organizations),
answered with spec-generated bodies that the test also validates, then read into models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from contract.openapi import NeonSpec

from agentdb.neon import NeonClient

from .spec_bodies import SpecMock, deep_update, example_response, script

P, B = "proj-1", "br-1"
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _answer(spec: NeonSpec, mock: SpecMock, method: str, path: str, **changes: object) -> object:
    """Installs a generated answer for `path`, changed as given and validated against the spec."""
    status, body = example_response(spec, method, "/api/v2" + path)
    body = deep_update(body, changes) if changes else body
    spec.validate_response(method, "/api/v2" + path, status, body)
    template, _raw = spec.match(method, "/api/v2" + path)
    mock.answers[f"{method} {template}"] = script(httpx.Response(status, json=body))
    return body


async def test_neon_auth(mocked: NeonClient, spec_mock: SpecMock, neon_spec: NeonSpec) -> None:
    auth = f"/projects/{P}/branches/{B}/auth"
    _answer(
        neon_spec,
        spec_mock,
        "POST",
        auth,
        auth_provider="better_auth",
        base_url="https://ep-1.neonauth.example/neondb/auth",
        secret_server_key="ssk-secret",
    )
    created = await mocked.enable_neon_auth(P, B)
    assert created.auth_provider == "better_auth"
    assert created.base_url == "https://ep-1.neonauth.example/neondb/auth"
    assert created.secret_server_key is not None
    assert "ssk-secret" not in repr(created)

    _answer(neon_spec, spec_mock, "GET", auth, branch_id=B, db_name="app", owned_by="neon")
    found = await mocked.get_neon_auth(P, B)
    assert (found.branch_id, found.db_name, found.owned_by) == (B, "app", "neon")

    providers = f"{auth}/oauth_providers"
    _answer(neon_spec, spec_mock, "GET", providers)
    listed = await mocked.list_oauth_providers(P, B)
    assert [p.id for p in listed] == ["google"]
    _answer(neon_spec, spec_mock, "POST", providers, id="github", type="standard")
    added = await mocked.add_oauth_provider(P, B, "github", client_id="c", client_secret="s")
    assert (added.id, added.type) == ("github", "standard")
    await mocked.delete_oauth_provider(P, B, "github")
    await mocked.disable_neon_auth(P, B, delete_data=True)
    assert spec_mock.requests[-1].body == {"delete_data": True}


async def test_data_api(mocked: NeonClient, spec_mock: SpecMock, neon_spec: NeonSpec) -> None:
    path = f"/projects/{P}/branches/{B}/data-api/app"
    _answer(neon_spec, spec_mock, "POST", path, url="https://app-1.dataproxy.example/rest/v1")
    assert await mocked.create_data_api(P, B, "app") == "https://app-1.dataproxy.example/rest/v1"
    _answer(
        neon_spec,
        spec_mock,
        "GET",
        path,
        status="active",
        settings={"db_schemas": ["public"], "db_max_rows": 1000},
    )
    found = await mocked.get_data_api(P, B, "app")
    assert found.status == "active"
    assert found.settings is not None
    assert found.settings.db_schemas == ["public"]
    _answer(neon_spec, spec_mock, "PATCH", path)
    await mocked.update_data_api(P, B, "app")
    _answer(neon_spec, spec_mock, "DELETE", path)
    await mocked.delete_data_api(P, B, "app")


async def test_consumption_history_pages(
    mocked: NeonClient, spec_mock: SpecMock, neon_spec: NeonSpec
) -> None:
    path = "/api/v2/consumption_history/v2/projects"
    _status, page = example_response(neon_spec, "GET", path)
    project = page["projects"][0]
    project["periods"][0]["consumption"][0]["metrics"] = [
        {"metric_name": "compute_unit_seconds", "value": 3600}
    ]
    first = {"projects": [dict(project, project_id="proj-a")], "pagination": {"cursor": "proj-a"}}
    last = {"projects": [], "pagination": {"cursor": "proj-a"}}
    for body in (first, last):
        neon_spec.validate_response("GET", path, 200, body)
    spec_mock.answers["/consumption_history/v2/projects"] = script(
        httpx.Response(200, json=first), httpx.Response(200, json=last)
    )
    seen = [
        p
        async for p in mocked.iter_consumption_history(
            org_id="org-1",
            from_=T0,
            to=T0 + timedelta(days=1),
            granularity="daily",
            metrics=["compute_unit_seconds"],
            page_size=1,
        )
    ]
    assert [p.project_id for p in seen] == ["proj-a"]
    metric = seen[0].periods[0].consumption[0].metrics[0]
    assert (metric.metric_name, metric.value) == ("compute_unit_seconds", 3600)
    queries = [r.query for r in spec_mock.requests]
    assert queries[0]["from"] == ["2026-06-01T00:00:00Z"]
    assert "cursor" not in queries[0]
    assert queries[1]["cursor"] == ["proj-a"]


async def test_legacy_consumption_and_organizations(
    mocked: NeonClient, spec_mock: SpecMock, neon_spec: NeonSpec
) -> None:
    _answer(neon_spec, spec_mock, "GET", "/consumption_history/projects")
    legacy = await mocked.legacy_consumption_history(
        from_=T0, to=T0 + timedelta(days=1), granularity="daily"
    )
    timeframe = legacy.projects[0].periods[0].consumption[0]
    assert timeframe.active_time_seconds is not None
    _answer(neon_spec, spec_mock, "GET", "/users/me/organizations")
    organizations = await mocked.list_organizations()
    assert organizations[0].id
