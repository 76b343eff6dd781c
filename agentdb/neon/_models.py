"""Typed Neon API v2 objects: projects, branches, endpoints, roles, databases, operations,
snapshots, and the envelopes that mutations return.

Neon adds fields and enum values often (the official SDK breaks on both), so every model keeps
unknown fields (`model_extra`) without showing them in its repr, and every Neon enum is a plain
`str` whose known values are listed in a comment. Secrets (passwords, connection URIs) are
`SecretStr`: reprs and logs show `**********`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

#: Operation statuses that mean done, and those that mean it will never succeed. `failed` is in
#: neither: Neon retries a failed operation (see `failures_count`) until it ends one way.
OPERATION_SUCCEEDED = frozenset({"finished", "skipped"})
OPERATION_FAILED = frozenset({"error", "cancelled"})


def _time_or_none(value: object, handler: ValidatorFunctionWrapHandler) -> datetime | None:
    try:
        parsed: datetime | None = handler(value)
    except ValidationError:
        return None
    return parsed


#: A time the spec types as a bare string (snapshots): parsed when it is one, else None, so
#: an odd value never fails the whole answer.
LenientTime = Annotated[datetime | None, WrapValidator(_time_or_none)]


class NeonModel(BaseModel):
    """Base of every Neon object: unknown fields are kept but left out of the repr."""

    # hide_input_in_errors: a validation error must not echo a password into a log.
    model_config = ConfigDict(
        extra="allow", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        known = type(self).model_fields
        for name, value in super().__repr_args__():
            if name in known:
                yield name, value


def lift_pagination(data: object, *keys: str) -> object:
    """Neon nests page cursors in `pagination`; pages expose them flat (`cursor`, `next`)."""
    if not isinstance(data, dict) or not isinstance(data.get("pagination"), dict):
        return data
    flat = dict(data)
    pagination = flat.pop("pagination")
    for key in keys:
        flat.setdefault(key, pagination.get(key) or None)
    return flat


# --- settings (sent and received) ------------------------------------------------------------


class ProjectQuota(NeonModel):
    """Per-project limits; 0 or absent = unlimited. Exceeding one suspends the computes, except
    `logical_size_bytes` (per branch: writes fail)."""

    active_time_seconds: int | None = None
    compute_time_seconds: int | None = None
    written_data_bytes: int | None = None
    data_transfer_bytes: int | None = None
    logical_size_bytes: int | None = None


class AllowedIps(NeonModel):
    ips: list[str] | None = None
    protected_branches_only: bool | None = None


class ProjectSettings(NeonModel):
    """A project's `settings`; fields Neon adds pass through as extra keyword arguments."""

    quota: ProjectQuota | None = None
    allowed_ips: AllowedIps | None = None
    enable_logical_replication: bool | None = None
    block_public_connections: bool | None = None
    block_vpc_connections: bool | None = None
    hipaa: bool | None = None
    audit_log_level: str | None = None  # base | extended | full


class DefaultEndpointSettings(NeonModel):
    """Settings for computes created in a project. `suspend_timeout_seconds`: 0 = Neon's
    default (300 s), -1 = never suspend, else 60..604800."""

    pg_settings: dict[str, str] | None = None
    autoscaling_limit_min_cu: float | None = None
    autoscaling_limit_max_cu: float | None = None
    suspend_timeout_seconds: int | None = None


class EndpointSettings(NeonModel):
    pg_settings: dict[str, str] | None = None


class EndpointOptions(NeonModel):
    """A compute to create with a branch; a branch without one is not connectable."""

    type: str = "read_write"  # read_write | read_only
    autoscaling_limit_min_cu: float | None = None
    autoscaling_limit_max_cu: float | None = None
    suspend_timeout_seconds: int | None = None
    settings: EndpointSettings | None = None
    provisioner: str | None = None


# --- resources -------------------------------------------------------------------------------


class Project(NeonModel):
    """A project (also what `GET /projects` lists). The usage counters lag and cover the
    current consumption period."""

    id: str
    name: str
    region_id: str | None = None
    pg_version: int | None = None
    org_id: str | None = None
    proxy_host: str | None = None
    store_passwords: bool | None = None
    history_retention_seconds: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    settings: ProjectSettings | None = None
    default_endpoint_settings: DefaultEndpointSettings | None = None
    compute_last_active_at: datetime | None = None
    active_time_seconds: int | None = None
    compute_time_seconds: int | None = None
    written_data_bytes: int | None = None
    data_transfer_bytes: int | None = None
    data_storage_bytes_hour: int | None = None
    synthetic_storage_size: int | None = None
    consumption_period_start: datetime | None = None
    consumption_period_end: datetime | None = None
    deleted_at: datetime | None = None
    recoverable_until: datetime | None = None


class Branch(NeonModel):
    """A branch. After a finalized snapshot restore the live branch has a new id: the
    replaced one is renamed "<name> (old)" and the new one has `restored_as` = its id."""

    id: str
    project_id: str
    name: str
    parent_id: str | None = None
    parent_lsn: str | None = None
    parent_timestamp: datetime | None = None
    current_state: str | None = None  # init | resetting | ready | archived
    pending_state: str | None = None
    default: bool = False
    protected: bool = False
    logical_size: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    init_source: str | None = None  # parent-data | schema-only
    restore_status: str | None = None  # restored | finalized | detaching
    restored_from: str | None = None  # snapshot id
    restored_as: str | None = None  # id of the branch this one replaced


class Endpoint(NeonModel):
    """A compute; its `host` stays the same when a restore moves it to another branch."""

    id: str
    project_id: str
    branch_id: str
    host: str
    type: str  # read_write | read_only
    current_state: str | None = None  # init | active | idle
    pending_state: str | None = None
    name: str | None = None
    region_id: str | None = None
    autoscaling_limit_min_cu: float | None = None
    autoscaling_limit_max_cu: float | None = None
    suspend_timeout_seconds: int | None = None
    disabled: bool = False
    settings: EndpointSettings | None = None
    last_active: datetime | None = None
    started_at: datetime | None = None
    suspended_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Role(NeonModel):
    branch_id: str
    name: str
    password: SecretStr | None = None  # only in create / reset / create-project answers
    protected: bool | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Database(NeonModel):
    branch_id: str
    name: str
    owner_name: str
    id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ConnectionParameters(NeonModel):
    database: str
    role: str
    host: str
    password: SecretStr
    pooler_host: str | None = None


class ConnectionDetails(NeonModel):
    connection_uri: SecretStr
    connection_parameters: ConnectionParameters


class Operation(NeonModel):
    """Background work a mutation started; poll until `succeeded` (or it ends in failure)."""

    id: str
    project_id: str
    action: str  # create_timeline, create_branch, start_compute, ... (the set grows)
    status: str  # scheduling | running | finished | failed | error | cancelling | cancelled | ...
    branch_id: str | None = None
    endpoint_id: str | None = None
    error: str | None = None
    failures_count: int = 0
    retry_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    total_duration_ms: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.status in OPERATION_SUCCEEDED

    @property
    def failed_for_good(self) -> bool:
        return self.status in OPERATION_FAILED


class Annotation(NeonModel):
    value: dict[str, str] = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Snapshot(NeonModel):
    """A snapshot (checkpoint) of a root branch; `manual` is false for scheduled ones."""

    id: str
    name: str
    created_at: LenientTime = None
    source_branch_id: str | None = None
    lsn: str | None = None
    timestamp: LenientTime = None
    expires_at: LenientTime = None
    manual: bool | None = None
    full_size: int | None = None  # bytes; absent = not computed yet (not billed)
    diff_size: int | None = None


# --- what calls return ------------------------------------------------------------------------


class WithOperations(NeonModel):
    """A mutation's answer: after waiting, `operations` hold their final states."""

    operations: list[Operation] = Field(default_factory=list)


class CreatedProject(WithOperations):
    """`POST /projects`: the owner role's password is only ever shown here."""

    project: Project
    branch: Branch
    endpoints: list[Endpoint] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=list)
    databases: list[Database] = Field(default_factory=list)
    connection_uris: list[ConnectionDetails] = Field(default_factory=list)


class ProjectUpdated(WithOperations):
    project: Project


class ProjectsPage(NeonModel):
    """One page of `GET /projects`; pass `cursor` to get the next."""

    projects: list[Project]
    cursor: str | None = None
    unavailable_project_ids: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: object) -> object:
        return lift_pagination(data, "cursor")


class BranchCreated(WithOperations):
    """`connection_uris` is empty when the parent has more than one role or database."""

    branch: Branch
    endpoints: list[Endpoint] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=list)
    databases: list[Database] = Field(default_factory=list)
    connection_uris: list[ConnectionDetails] = Field(default_factory=list)


class BranchChanged(WithOperations):
    """Answer of update, delete, restore and set-as-default."""

    branch: Branch


class BranchesPage(NeonModel):
    """One page of `GET .../branches`; this endpoint's cursor is `pagination.next`."""

    branches: list[Branch]
    annotations: dict[str, Annotation] = Field(default_factory=dict)
    next: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: object) -> object:
        return lift_pagination(data, "next")


class EndpointChanged(WithOperations):
    endpoint: Endpoint


class RoleChanged(WithOperations):
    """Answer of create and reset-password; `role.password` is the new password."""

    role: Role


class DatabaseChanged(WithOperations):
    database: Database


class SnapshotCreated(WithOperations):
    snapshot: Snapshot


class RestoredSnapshot(WithOperations):
    """With `finalize_restore`, `branch` is the new live branch (new id, same name and
    endpoints); without, a preview branch with a compute of its own."""

    branch: Branch
    endpoints: list[Endpoint] = Field(default_factory=list)


class OperationsPage(NeonModel):
    operations: list[Operation]
    cursor: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: object) -> object:
        return lift_pagination(data, "cursor")
