"""Neon's official Python SDK (`neon-api` 0.3.0) against `agentdb localplane serve` run as a real
subprocess over HTTP: the code a Neon user already has, pointed at the local control plane.

The SDK is sync (requests), so these are plain sync tests; the server is another process, so
nothing here needs the session event loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import neon_api.client
import psycopg
import pytest
from neon_api import NeonAPI, NeonAPIError
from support import clean_env, serving

from agentdb.pg import ServerInfo

OPS_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def localplane_url(
    pg_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`agentdb localplane serve --port 0` on the suite's cluster; yields its `/api/v2` URL."""
    tmp = tmp_path_factory.mktemp("sdk-serve")
    with serving(clean_env(AGENTDB_DATABASE_URL=pg_server.dsn()), tmp / "data") as url:
        yield url


@pytest.fixture
def neon(localplane_url: str) -> Iterator[NeonAPI]:
    # The SDK concatenates `base_url + path`, so the base URL needs its trailing slash.
    api = NeonAPI("local-test-key", base_url=localplane_url + "/")
    try:
        yield api
    finally:
        api._session.close()  # the SDK never closes its requests.Session (ResourceWarning)


@pytest.fixture
def raw_dicts(monkeypatch: pytest.MonkeyPatch) -> None:
    # By default the SDK parses replies into pydantic dataclasses generated from a 2025 spec, which
    # silently drop every key they do not declare (API_NOTES §12 (a)): `project_create()` keeps
    # only `project` (no `operations`, `connection_uris`, role password), `branch_create()` loses
    # `endpoints` and `connection_uris`. Waiting for a new project's operations needs those keys,
    # so the lifecycle test turns the module flag off and gets the raw JSON dicts.
    monkeypatch.setattr(neon_api.client, "ENABLE_PYDANTIC", False)


def wait_for(api: NeonAPI, project_id: str, operations: list[dict[str, Any]]) -> None:
    """Polls `operation` until each one finished (the SDK itself never waits)."""
    deadline = time.monotonic() + OPS_TIMEOUT
    pending = [op["id"] for op in operations]
    while pending:
        still = []
        for op_id in pending:
            op = api.operation(project_id, op_id)["operation"]
            assert op["status"] not in {"failed", "error", "cancelling", "cancelled"}, op
            if op["status"] not in {"finished", "skipped"}:
                still.append(op_id)
        pending = still
        if pending:
            assert time.monotonic() < deadline, f"operations still running: {pending}"
            time.sleep(0.05)


def all_project_ids(api: NeonAPI) -> set[str]:
    """Every project id, following `pagination.cursor` (other tests share the cluster)."""
    ids: set[str] = set()
    cursor = None
    while True:
        page = api.projects(limit=400, cursor=cursor)
        ids.update(p["id"] for p in page["projects"])
        if len(page["projects"]) < 400:
            return ids
        cursor = page["pagination"]["cursor"]


def select_one(uri: str) -> Any:
    with psycopg.connect(uri, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("select 1").fetchone()
    assert row is not None
    return row[0]


@pytest.mark.usefixtures("raw_dicts")
def test_sdk_project_branch_connect_delete(neon: NeonAPI) -> None:
    created = neon.project_create(project={"name": "neon-sdk"})
    project_id = created["project"]["id"]
    assert created["project"]["name"] == "neon-sdk"
    wait_for(neon, project_id, created["operations"])
    assert project_id in all_project_ids(neon)

    branch = neon.branch_create(
        project_id, branch={"name": "sdk-dev"}, endpoints=[{"type": "read_write"}]
    )
    branch_id = branch["branch"]["id"]
    assert [ep["type"] for ep in branch["endpoints"]] == ["read_write"]
    assert branch["endpoints"][0]["branch_id"] == branch_id
    wait_for(neon, project_id, branch["operations"])
    assert branch_id in {b["id"] for b in neon.branches(project_id)["branches"]}

    # The SDK's connection_uri takes no branch_id: it names the default branch's database.
    uri = neon.connection_uri(project_id, database_name="neondb", role_name="neondb_owner")["uri"]
    assert select_one(uri) == 1
    assert select_one(branch["connection_uris"][0]["connection_uri"]) == 1

    deleted = neon.branch_delete(project_id, branch_id)
    assert deleted["branch"]["id"] == branch_id
    wait_for(neon, project_id, deleted["operations"])
    assert branch_id not in {b["id"] for b in neon.branches(project_id)["branches"]}

    gone = neon.project_delete(project_id)
    assert gone["project"]["id"] == project_id
    wait_for(neon, project_id, gone.get("operations", []))
    with pytest.raises(NeonAPIError, match="NOT_FOUND"):
        neon.project(project_id)
    assert project_id not in all_project_ids(neon)


def test_sdk_default_models_parse_local_replies(
    neon: NeonAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In its default mode the SDK validates replies against its own dataclasses and closed enums
    (API_NOTES §12 (b)); the local plane's replies must pass, keys dropped or not."""
    monkeypatch.setattr(neon_api.client, "ENABLE_PYDANTIC", True)
    created = neon.project_create(project={"name": "neon-sdk-models"})
    project_id = created.project.id
    # `operations` was dropped by the dataclass: find the creation's work through the list.
    deadline = time.monotonic() + OPS_TIMEOUT
    while any(op.status.value != "finished" for op in neon.operations(project_id).operations):
        assert time.monotonic() < deadline, "project creation still running"
        time.sleep(0.05)

    branch = neon.branch_create(project_id, endpoints=[{"type": "read_write"}])
    assert {op.action.value for op in branch.operations} == {"create_branch", "start_compute"}
    for op in branch.operations:
        while (current := neon.operation(project_id, op.id).operation).status.value != "finished":
            assert time.monotonic() < deadline, current
            time.sleep(0.05)
    assert branch.branch.id in {b.id for b in neon.branches(project_id).branches}
    endpoints = neon.endpoints(project_id).endpoints
    assert {ep.branch_id for ep in endpoints} >= {branch.branch.id}
    assert neon.project(project_id).project.id == project_id
    assert neon.connection_uri(
        project_id, database_name="neondb", role_name="neondb_owner"
    ).uri.startswith("postgresql://")

    neon.project_delete(project_id)
