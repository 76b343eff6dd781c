"""Neon API v2 route handlers of the local control plane: parse the request, call
`LocalPlane`, return its JSON. Paths and status codes follow `openapi-v2.json`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TypeVar

from litestar import Request, delete, get, patch, post
from litestar.params import FromPath
from pydantic import BaseModel

from ._errors import BadRequest
from ._models import (
    BranchCreateBody,
    BranchRestoreBody,
    BranchUpdateBody,
    DatabaseCreateBody,
    EndpointUpdateBody,
    FinalizeRestoreBody,
    ProjectCreateBody,
    ProjectUpdateBody,
    RoleCreateBody,
    SnapshotRestoreBody,
    SnapshotUpdateBody,
)
from ._plane import LocalPlane

JSON = dict[str, Any]
AnyRequest = Request[Any, Any, Any]
B = TypeVar("B", bound=BaseModel)
_MAX_NAME = 256


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
    # There is no pooler locally: a pooled URI is the direct one, as far as clients can tell.
    # Booleans are read as Go's strconv.ParseBool does (the official SDK sends "False").
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


ROUTES = [
    create_project, list_projects, get_project, update_project, delete_project, connection_uri,
    list_operations, get_operation, create_branch, list_branches, count_branches, get_branch,
    update_branch, delete_branch, restore_branch, set_default_branch, compare_schema,
    list_branch_endpoints, list_roles, create_role, get_role, reveal_password, reset_password,
    list_databases, create_database, get_database, delete_database, list_endpoints, get_endpoint,
    update_endpoint, start_endpoint, suspend_endpoint, create_snapshot, list_snapshots,
    update_snapshot, delete_snapshot, restore_snapshot, finalize_restore,
]  # fmt: skip
