"""Neon API v2 route handlers of the local control plane: parse the request, call
`LocalPlane`, return its JSON. Paths and status codes follow `openapi-v2.json`."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, TypeVar

from litestar import Request, Response, delete, get, patch, post
from litestar.params import FromPath
from pydantic import BaseModel

from ._consumption import (
    GRANULARITY_WINDOWS,
    HISTORY_START,
    LEGACY_METRICS,
    LEGACY_REQUIRED,
    V2_METRICS,
    floor_to,
    project_consumption,
)
from ._errors import BadRequest, NotAcceptable
from ._models import (
    BranchCreateBody,
    BranchRestoreBody,
    BranchUpdateBody,
    DatabaseCreateBody,
    DatabaseUpdateBody,
    EndpointCreateBody,
    EndpointUpdateBody,
    FinalizeRestoreBody,
    ProjectCreateBody,
    ProjectUpdateBody,
    RoleCreateBody,
    SnapshotRestoreBody,
    SnapshotUpdateBody,
    TransferBody,
    now,
)
from ._plane import LocalPlane

JSON = dict[str, Any]
AnyRequest = Request[Any, Any, Any]
B = TypeVar("B", bound=BaseModel)
_MAX_NAME = 256
_ID = re.compile(r"[a-z0-9-]{1,60}")
MAX_CONSUMPTION_PROJECTS = 100


def _plane(request: AnyRequest) -> LocalPlane:
    plane: LocalPlane = request.app.state.plane
    return plane


async def _body(request: AnyRequest, model: type[B], *, optional: bool = False) -> B:
    raw = await request.body()
    if not raw.strip():
        if optional:
            return model()
        raise BadRequest("request body: a JSON object is required")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body: invalid JSON ({exc.msg} at position {exc.pos})") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body: must be a JSON object")
    return model.model_validate(data)


def _query_int(request: AnyRequest, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}: must be between {low} and {high}, got {value}")
    return value


def _query_choice(request: AnyRequest, name: str, default: str, choices: set[str]) -> str:
    value = request.query_params.get(name, default)
    if value not in choices:
        raise BadRequest(f"{name}: must be one of {sorted(choices)}, got {value!r}")
    return value


def _query_required(request: AnyRequest, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise BadRequest(f"{name}: query parameter is required")
    return str(value)


def _query_time(request: AnyRequest, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name}: must be an RFC 3339 timestamp, got {raw!r}") from None
    if value.tzinfo is None:
        raise BadRequest(f"{name}: the timestamp needs a time zone (e.g. 'Z')")
    return value


# --- projects ---------------------------------------------------------------------------------


@post("/projects", status_code=201)
async def create_project(request: AnyRequest) -> JSON:
    return await _plane(request).create_project(await _body(request, ProjectCreateBody))


@get("/projects")
async def list_projects(request: AnyRequest) -> JSON:
    return await _plane(request).list_projects(
        org_id=request.query_params.get("org_id"),
        limit=_query_int(request, "limit", 10, 1, 400),
        cursor=request.query_params.get("cursor"),
        search=request.query_params.get("search"),
    )


@get("/projects/shared")
async def list_shared_projects(request: AnyRequest) -> JSON:
    _query_int(request, "limit", 10, 1, 400)
    _query_int(request, "timeout", 100, 100, 30000)
    return await _plane(request).list_shared_projects()


@get("/projects/{project_id:str}")
async def get_project(request: AnyRequest, project_id: FromPath[str]) -> JSON:
    return await _plane(request).get_project(project_id)


@patch("/projects/{project_id:str}")
async def update_project(request: AnyRequest, project_id: FromPath[str]) -> JSON:
    return await _plane(request).update_project(project_id, await _body(request, ProjectUpdateBody))


@delete("/projects/{project_id:str}", status_code=200)
async def delete_project(request: AnyRequest, project_id: FromPath[str]) -> JSON:
    return await _plane(request).delete_project(project_id)


@get("/projects/{project_id:str}/connection_uri")
async def connection_uri(request: AnyRequest, project_id: FromPath[str]) -> JSON:
    # A pooled URI names the `-pooler` endpoint, as Neon's pooled host does (through the proxy:
    # transaction pooling). Booleans are read as Go's strconv.ParseBool does (the official SDK
    # sends "False").
    pooled = request.query_params.get("pooled", "false")
    if pooled not in {
        "1",
        "t",
        "T",
        "TRUE",
        "true",
        "True",
        "0",
        "f",
        "F",
        "FALSE",
        "false",
        "False",
    }:
        raise BadRequest(f"pooled: must be true or false, got {pooled!r}")
    return await _plane(request).connection_uri(
        project_id,
        database_name=_query_required(request, "database_name"),
        role_name=_query_required(request, "role_name"),
        branch_id=request.query_params.get("branch_id"),
        pooled=pooled in {"1", "t", "T", "TRUE", "true", "True"},
        endpoint_id=request.query_params.get("endpoint_id"),
    )


@get("/projects/{project_id:str}/operations")
async def list_operations(request: AnyRequest, project_id: FromPath[str]) -> JSON:
    return await _plane(request).list_operations(
        project_id,
        limit=_query_int(request, "limit", 10, 1, 1000),
        cursor=request.query_params.get("cursor"),
    )


@get("/projects/{project_id:str}/operations/{operation_id:str}")
async def get_operation(
    request: AnyRequest, project_id: FromPath[str], operation_id: FromPath[str]
) -> JSON:
    return await _plane(request).get_operation(project_id, operation_id)


# --- branches ---------------------------------------------------------------------------------


@post("/projects/{project_id:str}/branches", status_code=201)
async def create_branch(request: AnyRequest, project_id: FromPath[str]) -> JSON:
    body = await _body(request, BranchCreateBody, optional=True)
    return await _plane(request).create_branch(project_id, body)


@get("/projects/{project_id:str}/branches")
async def list_branches(request: AnyRequest, project_id: FromPath[str]) -> JSON:
    limit = request.query_params.get("limit")
    return await _plane(request).list_branches(
        project_id,
        search=request.query_params.get("search"),
        sort_by=_query_choice(
            request, "sort_by", "updated_at", {"name", "created_at", "updated_at"}
        ),
        sort_order=_query_choice(request, "sort_order", "desc", {"asc", "desc"}),
        limit=None if limit is None else _query_int(request, "limit", 0, 1, 10000),
        cursor=request.query_params.get("cursor"),
    )


@get("/projects/{project_id:str}/branches/count")
async def count_branches(request: AnyRequest, project_id: FromPath[str]) -> JSON:
    return await _plane(request).count_branches(project_id, request.query_params.get("search"))


@get("/projects/{project_id:str}/branches/{branch_id:str}")
async def get_branch(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    return await _plane(request).get_branch(project_id, branch_id)


@patch("/projects/{project_id:str}/branches/{branch_id:str}")
async def update_branch(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    body = await _body(request, BranchUpdateBody)
    return await _plane(request).update_branch(project_id, branch_id, body)


@delete("/projects/{project_id:str}/branches/{branch_id:str}", status_code=200)
async def delete_branch(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    return await _plane(request).delete_branch(project_id, branch_id)


@post("/projects/{project_id:str}/branches/{branch_id:str}/restore", status_code=200)
async def restore_branch(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    body = await _body(request, BranchRestoreBody)
    return await _plane(request).restore_branch(project_id, branch_id, body)


@post("/projects/{project_id:str}/branches/{branch_id:str}/set_as_default", status_code=200)
async def set_default_branch(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    return await _plane(request).set_default_branch(project_id, branch_id)


@get("/projects/{project_id:str}/branches/{branch_id:str}/compare_schema")
async def compare_schema(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    for unsupported in ("lsn", "timestamp", "base_lsn", "base_timestamp"):
        if request.query_params.get(unsupported):
            raise BadRequest(
                f"{unsupported}: comparing past states is not available on the local control plane"
            )
    return await _plane(request).compare_schema(
        project_id,
        branch_id,
        base_branch_id=request.query_params.get("base_branch_id"),
        db_name=_query_required(request, "db_name"),
    )


@get("/projects/{project_id:str}/branches/{branch_id:str}/schema")
async def branch_schema(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    for unsupported in ("lsn", "timestamp"):
        if request.query_params.get(unsupported):
            raise BadRequest(
                f"{unsupported}: a past schema is not available on the local control plane, "
                "whose branches keep no history; take a snapshot to keep a schema"
            )
    _query_choice(request, "format", "sql", {"sql"})
    return await _plane(request).branch_schema(
        project_id, branch_id, db_name=_query_required(request, "db_name")
    )


@get("/projects/{project_id:str}/branches/{branch_id:str}/endpoints")
async def list_branch_endpoints(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    return await _plane(request).list_endpoints(project_id, branch_id)


# --- roles and databases ----------------------------------------------------------------------


@get("/projects/{project_id:str}/branches/{branch_id:str}/roles")
async def list_roles(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    return await _plane(request).list_roles(project_id, branch_id)


@post("/projects/{project_id:str}/branches/{branch_id:str}/roles", status_code=201)
async def create_role(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    body = await _body(request, RoleCreateBody)
    return await _plane(request).create_role(project_id, branch_id, body)


@get("/projects/{project_id:str}/branches/{branch_id:str}/roles/{role_name:str}")
async def get_role(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    role_name: FromPath[str],
) -> JSON:
    return await _plane(request).get_role(project_id, branch_id, role_name)


@delete(
    "/projects/{project_id:str}/branches/{branch_id:str}/roles/{role_name:str}", status_code=200
)
async def delete_role(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    role_name: FromPath[str],
) -> Response[JSON | None]:
    deleted = await _plane(request).delete_role(project_id, branch_id, role_name)
    # Neon answers 204 for a role that is not there.
    return Response(deleted, status_code=204) if deleted is None else Response(deleted)


@get("/projects/{project_id:str}/branches/{branch_id:str}/roles/{role_name:str}/reveal_password")
async def reveal_password(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    role_name: FromPath[str],
) -> JSON:
    return await _plane(request).reveal_password(project_id, branch_id, role_name)


@post(
    "/projects/{project_id:str}/branches/{branch_id:str}/roles/{role_name:str}/reset_password",
    status_code=200,
)
async def reset_password(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    role_name: FromPath[str],
) -> JSON:
    return await _plane(request).reset_password(project_id, branch_id, role_name)


@get("/projects/{project_id:str}/branches/{branch_id:str}/databases")
async def list_databases(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    return await _plane(request).list_databases(project_id, branch_id)


@post("/projects/{project_id:str}/branches/{branch_id:str}/databases", status_code=201)
async def create_database(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    body = await _body(request, DatabaseCreateBody)
    return await _plane(request).create_database(project_id, branch_id, body)


@get("/projects/{project_id:str}/branches/{branch_id:str}/databases/{database_name:str}")
async def get_database(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    database_name: FromPath[str],
) -> JSON:
    return await _plane(request).get_database(project_id, branch_id, database_name)


@patch("/projects/{project_id:str}/branches/{branch_id:str}/databases/{database_name:str}")
async def update_database(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    database_name: FromPath[str],
) -> JSON:
    body = await _body(request, DatabaseUpdateBody)
    return await _plane(request).update_database(project_id, branch_id, database_name, body)


@delete(
    "/projects/{project_id:str}/branches/{branch_id:str}/databases/{database_name:str}",
    status_code=200,
)
async def delete_database(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    database_name: FromPath[str],
) -> JSON:
    return await _plane(request).delete_database(project_id, branch_id, database_name)


# --- endpoints --------------------------------------------------------------------------------


@get("/projects/{project_id:str}/endpoints")
async def list_endpoints(request: AnyRequest, project_id: FromPath[str]) -> JSON:
    return await _plane(request).list_endpoints(project_id)


@post("/projects/{project_id:str}/endpoints", status_code=201)
async def create_endpoint(request: AnyRequest, project_id: FromPath[str]) -> JSON:
    return await _plane(request).create_endpoint(
        project_id, await _body(request, EndpointCreateBody)
    )


@delete("/projects/{project_id:str}/endpoints/{endpoint_id:str}", status_code=200)
async def delete_endpoint(
    request: AnyRequest, project_id: FromPath[str], endpoint_id: FromPath[str]
) -> JSON:
    return await _plane(request).delete_endpoint(project_id, endpoint_id)


@post("/projects/{project_id:str}/endpoints/{endpoint_id:str}/restart", status_code=200)
async def restart_endpoint(
    request: AnyRequest, project_id: FromPath[str], endpoint_id: FromPath[str]
) -> JSON:
    return await _plane(request).restart_endpoint(project_id, endpoint_id)


@get("/projects/{project_id:str}/endpoints/{endpoint_id:str}")
async def get_endpoint(
    request: AnyRequest, project_id: FromPath[str], endpoint_id: FromPath[str]
) -> JSON:
    return await _plane(request).get_endpoint(project_id, endpoint_id)


@patch("/projects/{project_id:str}/endpoints/{endpoint_id:str}")
async def update_endpoint(
    request: AnyRequest, project_id: FromPath[str], endpoint_id: FromPath[str]
) -> JSON:
    body = await _body(request, EndpointUpdateBody)
    return await _plane(request).update_endpoint(project_id, endpoint_id, body)


@post("/projects/{project_id:str}/endpoints/{endpoint_id:str}/start", status_code=200)
async def start_endpoint(
    request: AnyRequest, project_id: FromPath[str], endpoint_id: FromPath[str]
) -> JSON:
    return await _plane(request).start_endpoint(project_id, endpoint_id)


@post("/projects/{project_id:str}/endpoints/{endpoint_id:str}/suspend", status_code=200)
async def suspend_endpoint(
    request: AnyRequest, project_id: FromPath[str], endpoint_id: FromPath[str]
) -> JSON:
    return await _plane(request).suspend_endpoint(project_id, endpoint_id)


# --- snapshots --------------------------------------------------------------------------------


@post("/projects/{project_id:str}/branches/{branch_id:str}/snapshot", status_code=200)
async def create_snapshot(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    name = request.query_params.get("name")
    if name is not None and not 1 <= len(name) <= _MAX_NAME:
        raise BadRequest("name: must be 1 to 256 characters")
    return await _plane(request).create_snapshot(
        project_id,
        branch_id,
        name=name,
        expires_at=_query_time(request, "expires_at"),
        lsn=request.query_params.get("lsn"),
        timestamp=request.query_params.get("timestamp"),
    )


@get("/projects/{project_id:str}/snapshots")
async def list_snapshots(request: AnyRequest, project_id: FromPath[str]) -> JSON:
    return await _plane(request).list_snapshots(project_id)


@patch("/projects/{project_id:str}/snapshots/{snapshot_id:str}")
async def update_snapshot(
    request: AnyRequest, project_id: FromPath[str], snapshot_id: FromPath[str]
) -> JSON:
    body = await _body(request, SnapshotUpdateBody)
    return await _plane(request).update_snapshot(project_id, snapshot_id, body)


@delete("/projects/{project_id:str}/snapshots/{snapshot_id:str}", status_code=202)
async def delete_snapshot(
    request: AnyRequest, project_id: FromPath[str], snapshot_id: FromPath[str]
) -> JSON:
    return await _plane(request).delete_snapshot(project_id, snapshot_id)


@post("/projects/{project_id:str}/snapshots/{snapshot_id:str}/restore", status_code=200)
async def restore_snapshot(
    request: AnyRequest, project_id: FromPath[str], snapshot_id: FromPath[str]
) -> JSON:
    body = await _body(request, SnapshotRestoreBody, optional=True)
    return await _plane(request).restore_snapshot(project_id, snapshot_id, body)


@post("/projects/{project_id:str}/branches/{branch_id:str}/finalize_restore", status_code=200)
async def finalize_restore(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    body = await _body(request, FinalizeRestoreBody, optional=True)
    return await _plane(request).finalize_restore(project_id, branch_id, body)


# --- organizations ----------------------------------------------------------------------------


@get("/users/me/organizations")
async def list_organizations(request: AnyRequest) -> JSON:
    return await _plane(request).list_organizations()


@get("/organizations/{org_id:str}")
async def get_organization(request: AnyRequest, org_id: FromPath[str]) -> JSON:
    return await _plane(request).get_organization(org_id)


@post("/organizations/{source_org_id:str}/projects/transfer", status_code=200)
async def transfer_projects(request: AnyRequest, source_org_id: FromPath[str]) -> JSON:
    body = await _body(request, TransferBody)
    return await _plane(request).transfer_projects(source_org_id, body)


# --- consumption ------------------------------------------------------------------------------


def _query_list(request: AnyRequest, name: str) -> list[str]:
    """A list parameter, repeated or comma-separated (Neon accepts both)."""
    values = [v for raw in request.query_params.getall(name, []) for v in str(raw).split(",")]
    return [v.strip() for v in values if v.strip()]


async def _consumption(request: AnyRequest, *, v2: bool) -> JSON:
    known = V2_METRICS if v2 else LEGACY_METRICS
    metrics = _query_list(request, "metrics")
    if v2 and not metrics:
        raise BadRequest(f"metrics: query parameter is required (any of {', '.join(known)})")
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise BadRequest(f"metrics: unknown {unknown}; supported: {', '.join(known)}")
    if not v2:
        metrics = [*LEGACY_REQUIRED, *(m for m in metrics if m not in LEGACY_REQUIRED)]
    org_id = _query_required(request, "org_id") if v2 else request.query_params.get("org_id")
    project_ids = _query_list(request, "project_ids")
    if len(project_ids) > MAX_CONSUMPTION_PROJECTS:
        raise BadRequest(f"project_ids: at most {MAX_CONSUMPTION_PROJECTS}, got {len(project_ids)}")
    if bad := [p for p in project_ids if not _ID.fullmatch(p)]:
        raise BadRequest(f"project_ids: not a project id: {bad[0]!r}")
    granularity = _query_choice(request, "granularity", "", set(GRANULARITY_WINDOWS))
    start = _query_time(request, "from") or _missing("from")
    end = _query_time(request, "to") or _missing("to")
    if end <= start:
        raise BadRequest("to: must be later than from")
    window = GRANULARITY_WINDOWS[granularity]
    if start < HISTORY_START or start < now() - window:
        raise NotAcceptable(
            f"from: {granularity} consumption reaches back {window.days or 7} days at most "
            f"(and not before {HISTORY_START:%Y-%m-%d}); use a later from or a coarser "
            "granularity"
        )
    plane = _plane(request)
    if org_id is not None:
        await plane.get_organization(org_id)  # 404 for an unknown organization
    rows, cursor = await plane.consumption(
        org_id=org_id,
        project_ids=project_ids,
        start=floor_to(start, granularity),
        end=end,
        limit=_query_int(request, "limit", 10, 1, 100),
        cursor=request.query_params.get("cursor"),
    )
    result: JSON = {
        "projects": [
            project_consumption(p.id, hours, granularity, metrics, v2=v2) for p, hours in rows
        ]
    }
    if cursor:
        result["pagination"] = {"cursor": cursor}
    return result


def _missing(name: str) -> datetime:
    raise BadRequest(f"{name}: query parameter is required")


@get("/consumption_history/projects")
async def legacy_consumption_history(request: AnyRequest) -> JSON:
    return await _consumption(request, v2=False)


@get("/consumption_history/v2/projects")
async def consumption_history(request: AnyRequest) -> JSON:
    return await _consumption(request, v2=True)


ROUTES = [
    create_project, list_projects, get_project, update_project, delete_project, connection_uri,
    list_operations, get_operation, create_branch, list_branches, count_branches, get_branch,
    update_branch, delete_branch, restore_branch, set_default_branch, compare_schema,
    list_branch_endpoints, list_roles, create_role, get_role, reveal_password, reset_password,
    list_databases, create_database, get_database, delete_database, list_endpoints, get_endpoint,
    update_endpoint, start_endpoint, suspend_endpoint, create_snapshot, list_snapshots,
    update_snapshot, delete_snapshot, restore_snapshot, finalize_restore, list_organizations,
    get_organization, transfer_projects, legacy_consumption_history, consumption_history,
    list_shared_projects, branch_schema, delete_role, update_database, create_endpoint,
    delete_endpoint, restart_endpoint,
]  # fmt: skip
