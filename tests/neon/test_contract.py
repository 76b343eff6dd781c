"""Every request the client can build validates against the request schema of Neon's spec
(path, query and body), with every optional argument set, including the calls the local plane
does not serve. Answers are generated from the spec's response schemas (`spec_bodies`)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentdb.neon import (
    AllowedIps,
    DataAPISettings,
    DefaultEndpointSettings,
    EndpointOptions,
    EndpointSettings,
    NeonClient,
    Operation,
    ProjectQuota,
    ProjectSettings,
)

from .spec_bodies import SpecMock

P, B, E, S = "proj-1", "br-main-1", "ep-main-1", "snap-1"
T0 = datetime(2026, 6, 1, tzinfo=UTC)
T1 = T0 + timedelta(days=1)
OP = Operation(
    id="0b0b7d2c-5a34-4c2e-9a51-6f1c2b7e0001",
    project_id=P,
    action="create_branch",
    status="running",
)


async def _all(iterator: Any) -> list[Any]:
    return [item async for item in iterator]


Call = Callable[[NeonClient], Awaitable[object]]

#: (method name, a call of it with every optional argument set, the (METHOD, template) sent).
CALLS: list[tuple[str, Call, tuple[str, str]]] = [
    (
        "create_project",
        lambda n: n.create_project(
            name="p",
            region_id="aws-us-east-2",
            pg_version=17,
            org_id="org-abc-123",
            branch_name="main",
            role_name="app_owner",
            database_name="app",
            branch_annotations={"session": "s-1"},
            default_endpoint_settings=DefaultEndpointSettings(
                pg_settings={"work_mem": "8MB"},
                autoscaling_limit_min_cu=0.25,
                autoscaling_limit_max_cu=1,
                suspend_timeout_seconds=-1,
            ),
            settings=ProjectSettings(
                quota=ProjectQuota(active_time_seconds=3600, logical_size_bytes=10**9),
                allowed_ips=AllowedIps(ips=["10.0.0.1"], protected_branches_only=False),
                enable_logical_replication=False,
                block_public_connections=False,
                audit_log_level="base",
            ),
            history_retention_seconds=0,
            store_passwords=True,
        ),
        ("POST", "/projects"),
    ),
    ("get_project", lambda n: n.get_project(P), ("GET", "/projects/{project_id}")),
    (
        "list_projects",
        lambda n: n.list_projects(
            org_id="org-abc-123", search="p", limit=400, cursor="c", recoverable=True
        ),
        ("GET", "/projects"),
    ),
    ("iter_projects", lambda n: _all(n.iter_projects(org_id="org-1")), ("GET", "/projects")),
    ("find_project", lambda n: n.find_project("p", org_id="org-1"), ("GET", "/projects")),
    (
        "update_project",
        lambda n: n.update_project(
            P,
            name="q",
            settings=ProjectSettings(block_public_connections=True),
            default_endpoint_settings=DefaultEndpointSettings(suspend_timeout_seconds=0),
            history_retention_seconds=86400,
        ),
        ("PATCH", "/projects/{project_id}"),
    ),
    ("delete_project", lambda n: n.delete_project(P), ("DELETE", "/projects/{project_id}")),
    (
        "create_branch",
        lambda n: n.create_branch(
            P,
            name="dev",
            parent_id=B,
            parent_timestamp=T0,
            protected=False,
            init_source="schema-only",
            expires_at=T1,
            endpoints=[
                EndpointOptions(
                    type="read_write",
                    autoscaling_limit_min_cu=0.25,
                    autoscaling_limit_max_cu=2,
                    suspend_timeout_seconds=300,
                    settings=EndpointSettings(pg_settings={"work_mem": "4MB"}),
                    provisioner="k8s-neonvm",
                )
            ],
            annotation={"idempotency_key": "k-1"},
        ),
        ("POST", "/projects/{project_id}/branches"),
    ),
    (
        "create_branch",
        lambda n: n.create_branch(P, parent_lsn="0/16B3748"),
        ("POST", "/projects/{project_id}/branches"),
    ),
    ("create_branch", lambda n: n.create_branch(P), ("POST", "/projects/{project_id}/branches")),
    (
        "get_branch",
        lambda n: n.get_branch(P, B),
        ("GET", "/projects/{project_id}/branches/{branch_id}"),
    ),
    (
        "list_branches",
        lambda n: n.list_branches(
            P, search="dev", sort_by="name", sort_order="asc", limit=10000, cursor="c"
        ),
        ("GET", "/projects/{project_id}/branches"),
    ),
    (
        "iter_branches",
        lambda n: _all(n.iter_branches(P, sort_by="created_at", sort_order="desc")),
        ("GET", "/projects/{project_id}/branches"),
    ),
    ("find_branch", lambda n: n.find_branch(P, "dev"), ("GET", "/projects/{project_id}/branches")),
    (
        "update_branch",
        lambda n: n.update_branch(P, B, name="dev2", protected=True, expires_at=T1),
        ("PATCH", "/projects/{project_id}/branches/{branch_id}"),
    ),
    (
        "update_branch",
        lambda n: n.update_branch(P, B, clear_expires_at=True),
        ("PATCH", "/projects/{project_id}/branches/{branch_id}"),
    ),
    (
        "delete_branch",
        lambda n: n.delete_branch(P, B, hard_delete=True),
        ("DELETE", "/projects/{project_id}/branches/{branch_id}"),
    ),
    (
        "restore_branch",
        lambda n: n.restore_branch(
            P, B, source_branch_id="br-parent-1", source_timestamp=T0, preserve_under_name="pre"
        ),
        ("POST", "/projects/{project_id}/branches/{branch_id}/restore"),
    ),
    (
        "restore_branch",
        lambda n: n.restore_branch(P, B, source_branch_id=B, source_lsn="0/16B3748"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/restore"),
    ),
    (
        "set_default_branch",
        lambda n: n.set_default_branch(P, B),
        ("POST", "/projects/{project_id}/branches/{branch_id}/set_as_default"),
    ),
    (
        "compare_schema",
        lambda n: n.compare_schema(
            P, B, db_name="app", base_branch_id="br-base-1", timestamp=T1, base_timestamp=T0
        ),
        ("GET", "/projects/{project_id}/branches/{branch_id}/compare_schema"),
    ),
    (
        "compare_schema",
        lambda n: n.compare_schema(P, B, db_name="app", lsn="0/2", base_lsn="0/1"),
        ("GET", "/projects/{project_id}/branches/{branch_id}/compare_schema"),
    ),
    ("list_endpoints", lambda n: n.list_endpoints(P), ("GET", "/projects/{project_id}/endpoints")),
    (
        "list_endpoints",
        lambda n: n.list_endpoints(P, branch_id=B),
        ("GET", "/projects/{project_id}/branches/{branch_id}/endpoints"),
    ),
    (
        "get_endpoint",
        lambda n: n.get_endpoint(P, E),
        ("GET", "/projects/{project_id}/endpoints/{endpoint_id}"),
    ),
    (
        "update_endpoint",
        lambda n: n.update_endpoint(
            P,
            E,
            autoscaling_limit_min_cu=0.5,
            autoscaling_limit_max_cu=4,
            suspend_timeout_seconds=604800,
            disabled=False,
            name="primary",
            settings=EndpointSettings(pg_settings={"statement_timeout": "5s"}),
        ),
        ("PATCH", "/projects/{project_id}/endpoints/{endpoint_id}"),
    ),
    (
        "start_endpoint",
        lambda n: n.start_endpoint(P, E),
        ("POST", "/projects/{project_id}/endpoints/{endpoint_id}/start"),
    ),
    (
        "suspend_endpoint",
        lambda n: n.suspend_endpoint(P, E),
        ("POST", "/projects/{project_id}/endpoints/{endpoint_id}/suspend"),
    ),
    (
        "list_roles",
        lambda n: n.list_roles(P, B),
        ("GET", "/projects/{project_id}/branches/{branch_id}/roles"),
    ),
    (
        "create_role",
        lambda n: n.create_role(P, B, "reader", no_login=False),
        ("POST", "/projects/{project_id}/branches/{branch_id}/roles"),
    ),
    (
        "reveal_password",
        lambda n: n.reveal_password(P, B, "reader"),
        ("GET", "/projects/{project_id}/branches/{branch_id}/roles/{role_name}/reveal_password"),
    ),
    (
        "reset_password",
        lambda n: n.reset_password(P, B, "reader"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/roles/{role_name}/reset_password"),
    ),
    (
        "list_databases",
        lambda n: n.list_databases(P, B),
        ("GET", "/projects/{project_id}/branches/{branch_id}/databases"),
    ),
    (
        "create_database",
        lambda n: n.create_database(P, B, "extra db", owner_name="reader"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/databases"),
    ),
    (
        "delete_database",
        lambda n: n.delete_database(P, B, "extra/db"),
        ("DELETE", "/projects/{project_id}/branches/{branch_id}/databases/{database_name}"),
    ),
    (
        "connection_uri",
        lambda n: n.connection_uri(
            P, database_name="app", role_name="app_owner", branch_id=B, endpoint_id=E, pooled=True
        ),
        ("GET", "/projects/{project_id}/connection_uri"),
    ),
    (
        "create_snapshot",
        lambda n: n.create_snapshot(P, B, name="checkpoint 1", expires_at=T1, timestamp=T0),
        ("POST", "/projects/{project_id}/branches/{branch_id}/snapshot"),
    ),
    (
        "create_snapshot",
        lambda n: n.create_snapshot(P, B, lsn="0/16B3748"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/snapshot"),
    ),
    (
        "list_snapshots",
        lambda n: n.list_snapshots(P),
        ("GET", "/projects/{project_id}/snapshots"),
    ),
    (
        "find_snapshot",
        lambda n: n.find_snapshot(P, "checkpoint 1"),
        ("GET", "/projects/{project_id}/snapshots"),
    ),
    (
        "rename_snapshot",
        lambda n: n.rename_snapshot(P, S, "renamed"),
        ("PATCH", "/projects/{project_id}/snapshots/{snapshot_id}"),
    ),
    (
        "delete_snapshot",
        lambda n: n.delete_snapshot(P, S),
        ("DELETE", "/projects/{project_id}/snapshots/{snapshot_id}"),
    ),
    (
        "restore_snapshot",
        lambda n: n.restore_snapshot(
            P, S, target_branch_id=B, name="restored", finalize_restore=True
        ),
        ("POST", "/projects/{project_id}/snapshots/{snapshot_id}/restore"),
    ),
    (
        "finalize_restore",
        lambda n: n.finalize_restore(P, "br-restored-1", name="main (old)"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/finalize_restore"),
    ),
    (
        "finalize_restore",
        lambda n: n.finalize_restore(P, "br-restored-1"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/finalize_restore"),
    ),
    (
        "get_operation",
        lambda n: n.get_operation(P, OP.id),
        ("GET", "/projects/{project_id}/operations/{operation_id}"),
    ),
    (
        "list_operations",
        lambda n: n.list_operations(P, limit=1000, cursor="c"),
        ("GET", "/projects/{project_id}/operations"),
    ),
    (
        "wait_for_project_operations",
        lambda n: n.wait_for_project_operations(P, timeout=5, scan=1000),
        ("GET", "/projects/{project_id}/operations"),
    ),
    (
        "wait_for_operations",
        lambda n: n.wait_for_operations(P, [OP], timeout=5),
        ("GET", "/projects/{project_id}/operations/{operation_id}"),
    ),
    (
        "enable_neon_auth",
        lambda n: n.enable_neon_auth(P, B, auth_provider="better_auth", database_name="app"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/auth"),
    ),
    (
        "get_neon_auth",
        lambda n: n.get_neon_auth(P, B),
        ("GET", "/projects/{project_id}/branches/{branch_id}/auth"),
    ),
    (
        "disable_neon_auth",
        lambda n: n.disable_neon_auth(P, B, delete_data=True),
        ("DELETE", "/projects/{project_id}/branches/{branch_id}/auth"),
    ),
    (
        "list_oauth_providers",
        lambda n: n.list_oauth_providers(P, B),
        ("GET", "/projects/{project_id}/branches/{branch_id}/auth/oauth_providers"),
    ),
    (
        "add_oauth_provider",
        lambda n: n.add_oauth_provider(
            P,
            B,
            "microsoft",
            client_id="cid",
            client_secret="oauth-secret",
            microsoft_tenant_id="tenant",
        ),
        ("POST", "/projects/{project_id}/branches/{branch_id}/auth/oauth_providers"),
    ),
    (
        "update_oauth_provider",
        lambda n: n.update_oauth_provider(
            P, B, "github", client_id="cid", client_secret="s", microsoft_tenant_id="t"
        ),
        (
            "PATCH",
            "/projects/{project_id}/branches/{branch_id}/auth/oauth_providers/{oauth_provider_id}",
        ),
    ),
    (
        "delete_oauth_provider",
        lambda n: n.delete_oauth_provider(P, B, "github"),
        (
            "DELETE",
            "/projects/{project_id}/branches/{branch_id}/auth/oauth_providers/{oauth_provider_id}",
        ),
    ),
    (
        "create_data_api",
        lambda n: n.create_data_api(
            P,
            B,
            "app",
            auth_provider="external",
            jwks_url="https://auth.example.com/.well-known/jwks.json",
            provider_name="clerk",
            jwt_audience="app",
            add_default_grants=True,
            skip_auth_schema=True,
            settings=DataAPISettings(
                db_schemas=["public", "api"],
                db_anon_role="anonymous",
                db_max_rows=1000,
                jwt_role_claim_key=".role",
                server_cors_allowed_origins="*",
            ),
        ),
        ("POST", "/projects/{project_id}/branches/{branch_id}/data-api/{database_name}"),
    ),
    (
        "create_data_api",
        lambda n: n.create_data_api(P, B, "app"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/data-api/{database_name}"),
    ),
    (
        "get_data_api",
        lambda n: n.get_data_api(P, B, "app"),
        ("GET", "/projects/{project_id}/branches/{branch_id}/data-api/{database_name}"),
    ),
    (
        "update_data_api",
        lambda n: n.update_data_api(P, B, "app", settings=DataAPISettings(db_max_rows=10)),
        ("PATCH", "/projects/{project_id}/branches/{branch_id}/data-api/{database_name}"),
    ),
    (
        "update_data_api",
        lambda n: n.update_data_api(P, B, "app"),
        ("PATCH", "/projects/{project_id}/branches/{branch_id}/data-api/{database_name}"),
    ),
    (
        "delete_data_api",
        lambda n: n.delete_data_api(P, B, "app"),
        ("DELETE", "/projects/{project_id}/branches/{branch_id}/data-api/{database_name}"),
    ),
    (
        "consumption_history",
        lambda n: n.consumption_history(
            org_id="org-abc-123",
            from_=T0,
            to=T1,
            granularity="hourly",
            metrics=["compute_unit_seconds", "snapshot_storage_bytes_month"],
            project_ids=[P, "proj-2"],
            limit=100,
            cursor="c",
        ),
        ("GET", "/consumption_history/v2/projects"),
    ),
    (
        "iter_consumption_history",
        lambda n: _all(
            n.iter_consumption_history(
                org_id="org-abc-123",
                from_=T0,
                to=T1,
                granularity="daily",
                metrics=["compute_unit_seconds"],
            )
        ),
        ("GET", "/consumption_history/v2/projects"),
    ),
    (
        "legacy_consumption_history",
        lambda n: n.legacy_consumption_history(
            from_=T0,
            to=T1,
            granularity="monthly",
            org_id="org-abc-123",
            metrics=["active_time_seconds", "written_data_bytes"],
            project_ids=[P],
            limit=1,
            cursor="c",
        ),
        ("GET", "/consumption_history/projects"),
    ),
    (
        "legacy_consumption_history",
        lambda n: n.legacy_consumption_history(from_=T0, to=T1, granularity="daily"),
        ("GET", "/consumption_history/projects"),
    ),
    ("list_organizations", lambda n: n.list_organizations(), ("GET", "/users/me/organizations")),
    (
        "transfer_projects",
        lambda n: n.transfer_projects(
            source_org_id="org-src-1", destination_org_id="org-dst-1", project_ids=[P, "proj-2"]
        ),
        ("POST", "/organizations/{source_org_id}/projects/transfer"),
    ),
]


@pytest.mark.parametrize(
    ("name", "call", "sent"), CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CALLS)]
)
async def test_request_validates_against_the_spec(
    mocked: NeonClient, spec_mock: SpecMock, name: str, call: Call, sent: tuple[str, str]
) -> None:
    # The mock transport validates each request (and raises ContractError if it does not fit);
    # the client's event hooks validate the spec-generated answers on the way back.
    await call(mocked)
    assert spec_mock.requests, f"{name} sent nothing"
    assert {(r.method, r.template) for r in spec_mock.requests} == {sent}


def test_every_public_call_of_the_client_is_covered() -> None:
    public = {
        name
        for name, member in inspect.getmembers(NeonClient)
        if not name.startswith("_")
        and (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member))
    }
    assert public - {"aclose"} == {name for name, _call, _sent in CALLS}


def test_every_endpoint_the_issue_names_is_covered() -> None:
    sent = {s for _name, _call, s in CALLS}
    expected = {
        ("POST", "/projects"),
        ("GET", "/projects"),
        ("GET", "/projects/{project_id}"),
        ("PATCH", "/projects/{project_id}"),
        ("DELETE", "/projects/{project_id}"),
        ("POST", "/projects/{project_id}/branches"),
        ("GET", "/projects/{project_id}/branches"),
        ("GET", "/projects/{project_id}/branches/{branch_id}"),
        ("PATCH", "/projects/{project_id}/branches/{branch_id}"),
        ("DELETE", "/projects/{project_id}/branches/{branch_id}"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/restore"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/set_as_default"),
        ("GET", "/projects/{project_id}/branches/{branch_id}/compare_schema"),
        ("GET", "/projects/{project_id}/endpoints"),
        ("GET", "/projects/{project_id}/endpoints/{endpoint_id}"),
        ("PATCH", "/projects/{project_id}/endpoints/{endpoint_id}"),
        ("POST", "/projects/{project_id}/endpoints/{endpoint_id}/start"),
        ("POST", "/projects/{project_id}/endpoints/{endpoint_id}/suspend"),
        ("GET", "/projects/{project_id}/branches/{branch_id}/roles"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/roles"),
        ("GET", "/projects/{project_id}/branches/{branch_id}/roles/{role_name}/reveal_password"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/roles/{role_name}/reset_password"),
        ("GET", "/projects/{project_id}/branches/{branch_id}/databases"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/databases"),
        ("DELETE", "/projects/{project_id}/branches/{branch_id}/databases/{database_name}"),
        ("GET", "/projects/{project_id}/connection_uri"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/snapshot"),
        ("GET", "/projects/{project_id}/snapshots"),
        ("PATCH", "/projects/{project_id}/snapshots/{snapshot_id}"),
        ("DELETE", "/projects/{project_id}/snapshots/{snapshot_id}"),
        ("POST", "/projects/{project_id}/snapshots/{snapshot_id}/restore"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/finalize_restore"),
        ("GET", "/projects/{project_id}/operations/{operation_id}"),
        ("GET", "/projects/{project_id}/operations"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/auth"),
        ("GET", "/projects/{project_id}/branches/{branch_id}/auth"),
        ("DELETE", "/projects/{project_id}/branches/{branch_id}/auth"),
        ("GET", "/projects/{project_id}/branches/{branch_id}/auth/oauth_providers"),
        ("POST", "/projects/{project_id}/branches/{branch_id}/auth/oauth_providers"),
        (
            "PATCH",
            "/projects/{project_id}/branches/{branch_id}/auth/oauth_providers/{oauth_provider_id}",
        ),
        (
            "DELETE",
            "/projects/{project_id}/branches/{branch_id}/auth/oauth_providers/{oauth_provider_id}",
        ),
        ("POST", "/projects/{project_id}/branches/{branch_id}/data-api/{database_name}"),
        ("GET", "/projects/{project_id}/branches/{branch_id}/data-api/{database_name}"),
        ("PATCH", "/projects/{project_id}/branches/{branch_id}/data-api/{database_name}"),
        ("DELETE", "/projects/{project_id}/branches/{branch_id}/data-api/{database_name}"),
        ("GET", "/consumption_history/v2/projects"),
        ("GET", "/consumption_history/projects"),
        ("GET", "/users/me/organizations"),
        ("POST", "/organizations/{source_org_id}/projects/transfer"),
    }
    assert expected <= sent
