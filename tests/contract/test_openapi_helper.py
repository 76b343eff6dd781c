"""Tests of the OpenAPI contract helper itself (no network, no database)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from .openapi import ContractError, NeonSpec

PROJECT_ID = "shiny-wind-028834"
BRANCH_ID = "br-aged-salad-637688"
ENDPOINT_ID = "ep-small-bush-675287"
NOW = "2025-01-02T03:04:05Z"
BRANCHES = f"/api/v2/projects/{PROJECT_ID}/branches"


@pytest.fixture(scope="module")
def spec() -> NeonSpec:
    return NeonSpec.load()


def created_project() -> dict[str, Any]:
    """A minimal 201 body of createProject (``CreatedProject``), written from the schema."""
    operation = {
        "id": "a07f8772-1877-4da9-a939-3a3ae62d1d8d",
        "project_id": PROJECT_ID,
        "branch_id": BRANCH_ID,
        "action": "create_timeline",
        "status": "running",
        "failures_count": 0,
        "created_at": NOW,
        "updated_at": NOW,
        "total_duration_ms": 0,
    }
    usage = {
        "active_time_seconds": 0,
        "compute_time_seconds": 0,
        "written_data_bytes": 0,
        "data_transfer_bytes": 0,
    }
    return {
        "project": {
            **usage,
            "consumption_period_start": NOW,
            "consumption_period_end": "2025-02-01T00:00:00Z",
            "data_storage_bytes_hour": 0,
            "cpu_used_sec": 0,
            "id": PROJECT_ID,
            "platform_id": "aws",
            "region_id": "aws-us-east-2",
            "name": "agent-session",
            "pg_version": 17,
            "proxy_host": "us-east-2.aws.neon.tech",
            "branch_logical_size_limit": 0,
            "branch_logical_size_limit_bytes": 10_800_000_000,
            "store_passwords": True,
            "provisioner": "k8s-neonvm",
            "creation_source": "console",
            "history_retention_seconds": 86_400,
            "created_at": NOW,
            "updated_at": NOW,
            "owner_id": "b7b2e5c4-5b7b-4b0b-9c5a-1f2e3d4c5b6a",
        },
        "connection_uris": [
            {
                "connection_uri": "postgresql://neondb_owner:secret@host/neondb?sslmode=require",
                "connection_parameters": {
                    "database": "neondb",
                    "password": "secret",
                    "role": "neondb_owner",
                    "host": f"{ENDPOINT_ID}.us-east-2.aws.neon.tech",
                    "pooler_host": f"{ENDPOINT_ID}-pooler.us-east-2.aws.neon.tech",
                },
            }
        ],
        "roles": [
            {
                "branch_id": BRANCH_ID,
                "name": "neondb_owner",
                "password": "secret",
                "protected": False,
                "created_at": NOW,
                "updated_at": NOW,
            }
        ],
        "databases": [
            {
                "id": 1,
                "branch_id": BRANCH_ID,
                "name": "neondb",
                "owner_name": "neondb_owner",
                "created_at": NOW,
                "updated_at": NOW,
            }
        ],
        "operations": [operation],
        "branch": {
            **usage,
            "id": BRANCH_ID,
            "project_id": PROJECT_ID,
            "name": "main",
            "current_state": "init",
            "pending_state": "ready",
            "state_changed_at": NOW,
            "creation_source": "console",
            "created_at": NOW,
            "updated_at": NOW,
            "default": True,
            "protected": False,
            "cpu_used_sec": 0,
        },
        "endpoints": [
            {
                "host": f"{ENDPOINT_ID}.us-east-2.aws.neon.tech",
                "id": ENDPOINT_ID,
                "project_id": PROJECT_ID,
                "branch_id": BRANCH_ID,
                "region_id": "aws-us-east-2",
                "autoscaling_limit_min_cu": 0.25,
                "autoscaling_limit_max_cu": 2,
                "type": "read_write",
                "current_state": "init",
                "pending_state": "active",
                "pooler_enabled": False,
                "pooler_mode": "transaction",
                "disabled": False,
                "passwordless_access": True,
                "creation_source": "console",
                "created_at": NOW,
                "updated_at": NOW,
                "settings": {},
                "proxy_host": "us-east-2.aws.neon.tech",
                "suspend_timeout_seconds": 0,
                "provisioner": "k8s-neonvm",
            }
        ],
    }


def failure(call: Any, *args: Any) -> str:
    with pytest.raises(ContractError) as caught:
        call(*args)
    return str(caught.value)


# --- loading and matching -------------------------------------------------------------------------


def test_load_is_cached_and_fast(spec: NeonSpec) -> None:
    assert NeonSpec.load() is spec
    assert len(spec.operations) == 146
    assert spec.load_seconds < 1


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("GET", f"{BRANCHES}/count", "/projects/{project_id}/branches/count"),
        ("get", f"{BRANCHES}/{BRANCH_ID}", "/projects/{project_id}/branches/{branch_id}"),
        (
            "GET",
            f"/projects/{PROJECT_ID}/branches/count?search=x",
            "/projects/{project_id}/branches/count",
        ),
        (
            "POST",
            f"{BRANCHES}/{BRANCH_ID}/snapshot",
            "/projects/{project_id}/branches/{branch_id}/snapshot",
        ),
        ("GET", "https://console.neon.tech/api/v2/projects", "/projects"),
    ],
)
def test_match_prefers_literal_segments(
    spec: NeonSpec, method: str, path: str, template: str
) -> None:
    matched, operation = spec.match(method, path)
    assert matched == template
    assert operation["operationId"]


def test_match_reports_unknown_paths_and_methods(spec: NeonSpec) -> None:
    assert "no path template" in failure(spec.match, "GET", "/api/v2/projectz")
    assert "no path template" in failure(spec.match, "GET", "/api/v2/projects/")
    message = failure(spec.match, "PUT", "/api/v2/projects")
    assert "GET /projects" in message
    assert "POST /projects" in message


# --- responses ------------------------------------------------------------------------------------


def test_created_project_passes(spec: NeonSpec) -> None:
    spec.validate_response("POST", "/api/v2/projects", 201, created_project())


def test_extra_properties_are_allowed(spec: NeonSpec) -> None:
    body = created_project()
    body["project"]["agentdb_extension"] = {"anything": True}
    body["unexpected_top_level"] = 1
    spec.validate_response("POST", "/api/v2/projects", 201, body)


def test_missing_required_field_is_named(spec: NeonSpec) -> None:
    body = created_project()
    del body["branch"]["current_state"]
    message = failure(spec.validate_response, "POST", "/api/v2/projects", 201, body)
    assert message.startswith("POST /projects -> 201: $.branch: ")
    assert "'current_state' is a required property" in message


def test_wrong_enum_fails(spec: NeonSpec) -> None:
    body = created_project()
    body["endpoints"][0]["type"] = "read_maybe"
    body["operations"][0]["status"] = "sleeping"
    message = failure(spec.validate_response, "POST", "/api/v2/projects", 201, body)
    assert "$.endpoints[0].type: 'read_maybe' is not one of ['read_only', 'read_write']" in message
    assert "$.operations[0].status: 'sleeping' is not one of" in message


def test_wrong_types_and_loose_date_time(spec: NeonSpec) -> None:
    body = created_project()
    body["databases"][0]["id"] = "1"
    body["branch"]["created_at"] = "2025-01-02 03:04:05"  # no T, no offset
    message = failure(spec.validate_response, "POST", "/api/v2/projects", 201, body)
    assert "$.databases[0].id: '1' is not of type 'integer'" in message
    assert "$.branch.created_at: '2025-01-02 03:04:05' is not a 'date-time'" in message


def test_nullable_fields_accept_none(spec: NeonSpec) -> None:
    path = f"/api/v2/projects/{PROJECT_ID}/branches/{BRANCH_ID}/data-api/neondb"
    nulls = {"url": "https://x.example", "status": "ready", "settings": None}
    spec.validate_response("GET", path, 200, {**nulls, "available_schemas": None})
    spec.validate_response("GET", path, 200, {**nulls, "settings": {"db_max_rows": 10}})
    # nullable + allOf still checks the non-null branch
    bad = {**nulls, "settings": {"db_max_rows": "ten"}}
    assert "$.settings.db_max_rows: 'ten' is not of type 'integer'" in failure(
        spec.validate_response, "GET", path, 200, bad
    )
    # not nullable
    assert "None is not of type 'string'" in failure(
        spec.validate_response, "GET", path, 200, {**nulls, "status": None}
    )


def test_undeclared_success_status_fails_and_default_covers_errors(spec: NeonSpec) -> None:
    # createProject declares 201 and `default` (GeneralError), like every operation does.
    message = failure(spec.validate_response, "POST", "/api/v2/projects", 200, created_project())
    assert message.startswith("POST /projects -> 200: status 200 is not declared")
    spec.validate_response("POST", "/api/v2/projects", 409, {"code": "", "message": "exists"})
    message = failure(spec.validate_response, "POST", "/api/v2/projects", 404, {"error": "x"})
    assert "'message' is a required property" in message


def test_no_content_responses_need_an_empty_body(spec: NeonSpec) -> None:
    path = f"{BRANCHES}/{BRANCH_ID}"
    spec.validate_response("DELETE", path, 204, None)
    assert "expected no body" in failure(spec.validate_response, "DELETE", path, 204, {})
    assert "expected a JSON body" in failure(spec.validate_response, "DELETE", path, 200, None)


# --- requests -------------------------------------------------------------------------------------


def test_valid_requests_pass(spec: NeonSpec) -> None:
    spec.validate_request("GET", "/api/v2/projects", {"limit": "400", "recoverable": "true"}, None)
    spec.validate_request("POST", BRANCHES, {}, None)  # body optional
    spec.validate_request(
        "POST", BRANCHES, {}, {"branch": {"name": "b", "parent_id": BRANCH_ID}, "endpoints": []}
    )
    spec.validate_request("PATCH", f"{BRANCHES}/{BRANCH_ID}", {}, {"branch": {"expires_at": None}})
    spec.validate_request(
        "GET",
        "/api/v2/consumption_history/v2/branches",
        {
            "project_ids": ["p-1,p-2", "p-3"],
            "from": NOW,
            "to": NOW,
            "granularity": "daily",
            "org_id": "org-1",
            "metrics": "compute_unit_seconds",
        },
        None,
    )


def test_unknown_query_param_fails(spec: NeonSpec) -> None:
    message = failure(spec.validate_request, "GET", "/api/v2/projects", {"page": "2"}, None)
    assert message.startswith("GET /projects request: query 'page': unknown parameter")


@pytest.mark.parametrize(
    ("limit", "reason"),
    [
        ("0", "less than the minimum of 1"),
        ("401", "greater than the maximum of 400"),
        ("ten", "is not of type 'integer'"),
    ],
)
def test_limit_out_of_range_fails(spec: NeonSpec, limit: str, reason: str) -> None:
    message = failure(spec.validate_request, "GET", "/api/v2/projects", {"limit": limit}, None)
    assert "query 'limit': " in message
    assert reason in message


def test_parameter_checks(spec: NeonSpec) -> None:
    compare = f"{BRANCHES}/{BRANCH_ID}/compare_schema"
    assert "query 'db_name': required but missing" in failure(
        spec.validate_request, "GET", compare, {}, None
    )
    assert "path 'project_id': 'Bad_Id' does not match" in failure(
        spec.validate_request, "GET", "/api/v2/projects/Bad_Id", {}, None
    )
    assert "given 2 times" in failure(
        spec.validate_request, "GET", "/api/v2/projects", {"limit": ["1", "2"]}, None
    )


def test_create_branch_body_with_bad_type_fails(spec: NeonSpec) -> None:
    body = {"branch": {"name": 42, "protected": "yes"}}
    message = failure(spec.validate_request, "POST", BRANCHES, {}, body)
    assert message.startswith("POST /projects/{project_id}/branches request: body $.branch.")
    assert "body $.branch.name: 42 is not of type 'string'" in message
    assert "body $.branch.protected: 'yes' is not of type 'boolean'" in message


def test_request_body_presence(spec: NeonSpec) -> None:
    assert "request body is required" in failure(
        spec.validate_request, "POST", "/api/v2/projects", {}, None
    )
    assert "declares no request body" in failure(
        spec.validate_request, "GET", "/api/v2/projects", {}, {}
    )


# --- httpx hooks ----------------------------------------------------------------------------------


def _mock_neon(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/api/v2/projects" and request.method == "POST":
        body = created_project()
        body["project"]["name"] = json.loads(request.content)["project"]["name"]
        return httpx.Response(201, json=body)
    if request.url.path.endswith("/snapshots"):
        return httpx.Response(200, json={"snapshots": [{"id": "snap-1", "name": "s"}]})
    if request.url.path.startswith("/elsewhere"):
        return httpx.Response(200, text="not json, not validated")
    return httpx.Response(404, json={"code": "", "message": "not found"})


@pytest.fixture
def fresh_spec() -> NeonSpec:
    # A spec of its own so that `seen` is not shared with other tests.
    return NeonSpec(NeonSpec.load().document)


async def test_hooks_validate_round_trips(fresh_spec: NeonSpec) -> None:
    transport = httpx.MockTransport(_mock_neon)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="https://neon.test/api/v2",
        **fresh_spec.validating_client_kwargs(),
    ) as client:
        created = await client.post("/projects", json={"project": {"name": "agent"}})
        assert created.json()["project"]["name"] == "agent"
        missing = await client.get(f"/projects/{PROJECT_ID}/branches/{BRANCH_ID}")
        assert missing.status_code == 404
        assert (await client.get("https://neon.test/elsewhere")).text.startswith("not json")

        with pytest.raises(ContractError) as bad_response:
            await client.get(f"/projects/{PROJECT_ID}/snapshots")
        assert str(bad_response.value).startswith(
            "GET /projects/{project_id}/snapshots -> 200: $.snapshots[0]: "
            "'created_at' is a required property"
        )

        with pytest.raises(ContractError, match="query 'limit': 0 is less than"):
            await client.get("/projects", params={"limit": 0})
        with pytest.raises(ContractError, match=r"body \$.project.name: 1 is not of type"):
            await client.post("/projects", json={"project": {"name": 1}})

    assert fresh_spec.seen == {
        ("POST", "/projects", 201),
        ("GET", "/projects/{project_id}/branches/{branch_id}", 404),
    }
