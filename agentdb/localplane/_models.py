"""The local control plane's records (what it stores) and request bodies (what it accepts).

Records mirror Neon's resources plus the physical names that back them in the shared cluster.
Request models follow `openapi-v2.json`; unknown fields are ignored as Neon does.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

JSON = dict[str, Any]

_ADJECTIVES = (
    "aged",
    "bold",
    "calm",
    "cool",
    "damp",
    "dark",
    "fancy",
    "frosty",
    "gentle",
    "holy",
    "icy",
    "lively",
    "misty",
    "noisy",
    "odd",
    "plain",
    "quiet",
    "rapid",
    "shiny",
    "silent",
    "small",
    "snowy",
    "sparkling",
    "steep",
    "sweet",
    "tiny",
    "twilight",
    "wild",
    "winter",
    "young",
)
_NOUNS = (
    "band",
    "bird",
    "boat",
    "breeze",
    "brook",
    "cake",
    "cell",
    "cherry",
    "cloud",
    "dawn",
    "dew",
    "dream",
    "field",
    "fire",
    "flower",
    "forest",
    "frog",
    "glade",
    "grass",
    "hill",
    "lake",
    "leaf",
    "meadow",
    "moon",
    "mouse",
    "paper",
    "pine",
    "rain",
    "river",
    "salad",
    "sea",
    "sky",
    "smoke",
    "snow",
    "star",
    "sun",
    "surf",
    "tree",
    "water",
    "wind",
)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def neon_id(prefix: str = "") -> str:
    """An id shaped like Neon's (`br-shiny-wind-02883412`), matching `^[a-z0-9-]{1,60}$`."""
    words = f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(10**8):08d}"
    return f"{prefix}-{words}" if prefix else words


def physical_key() -> str:
    """A short random suffix for physical role and database names (lowercase, no quoting)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(10))


def new_password() -> str:
    return secrets.token_urlsafe(18)


class Record(BaseModel):
    """A stored resource. `kind` names its rows in `lp_resources`."""

    model_config = ConfigDict(extra="ignore")
    kind: ClassVar[str]

    id: str
    project_id: str
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)


class ProjectRecord(Record):
    kind: ClassVar[str] = "project"

    name: str
    key: str  # suffix of every physical name that belongs to this project
    region_id: str = "local"
    org_id: str | None = None
    pg_version: int = 18
    history_retention_seconds: int = 86400
    store_passwords: bool = True
    settings: JSON = Field(default_factory=dict)
    default_endpoint_settings: JSON = Field(default_factory=dict)
    # Set while a time, written-data or transfer quota is exceeded: the message naming it.
    quota_exceeded: str | None = None

    @property
    def quota(self) -> dict[str, int]:
        """The project's quotas that are set (0 or absent means unlimited)."""
        raw = self.settings.get("quota") or {}
        return {k: int(v) for k, v in raw.items() if isinstance(v, int) and v > 0}

    @property
    def group_role(self) -> str:
        """NOLOGIN role that every role of the project is a member of; it holds CONNECT."""
        return f"lp_{self.key}"


class BranchRecord(Record):
    kind: ClassVar[str] = "branch"

    name: str
    parent_id: str | None = None
    default: bool = False
    protected: bool = False
    current_state: str = "init"
    state_changed_at: datetime = Field(default_factory=now)
    init_source: str = "parent-data"
    expires_at: datetime | None = None
    restore_status: str | None = None
    restored_from: str | None = None
    restored_as: str | None = None
    restore_target_id: str | None = None  # set until a restored branch is finalized
    annotations: dict[str, str] = Field(default_factory=dict)
    logical_size: int | None = None
    # True while the branch is over the project's `logical_size_bytes` quota: its databases
    # default to read-only transactions (re-applied by the meter after swaps and restarts).
    read_only: bool = False
    # Its last endpoint was deleted: its databases refuse clients until an endpoint is created.
    computeless: bool = False


class EndpointRecord(Record):
    kind: ClassVar[str] = "endpoint"

    branch_id: str
    type: Literal["read_write", "read_only"] = "read_write"
    current_state: Literal["init", "active", "idle"] = "init"
    autoscaling_limit_min_cu: float = 0.25
    autoscaling_limit_max_cu: float = 0.25
    suspend_timeout_seconds: int = 0
    disabled: bool = False
    name: str | None = None
    settings: JSON = Field(default_factory=dict)
    provisioner: str = "k8s-neonvm"
    suspended_at: datetime | None = None
    started_at: datetime | None = None
    last_active: datetime | None = None
    # Idle because the meter saw no activity for `suspend_timeout_seconds` (Neon's
    # auto-suspend, for billing): unlike a suspend, its databases stay open and activity wakes it.
    auto_suspended: bool = False

    @property
    def door_closed(self) -> bool:
        """Whether its databases refuse clients (suspended by the API or a quota)."""
        return self.current_state == "idle" and not self.auto_suspended


class OrganizationRecord(Record):
    """An organization; projects name it in `org_id`. Not tied to a project (`project_id` "")."""

    kind: ClassVar[str] = "organization"

    name: str
    plan: str = "local"


class UsageHourRecord(Record):
    """One project's consumption in one UTC hour (`created_at` is the hour's start).

    Sizes are the largest seen in the hour; an hour without a record has the sizes of the last
    hour before it that has one (only changes are written)."""

    kind: ClassVar[str] = "usage_hour"

    active_time_s: float = 0
    compute_time_s: float = 0
    written_data_bytes: int = 0
    data_transfer_bytes: int = 0
    # "logical" (all branches), "root", "child" (branches with a parent), "snapshot" (copies),
    # "synthetic" (logical + snapshot): the largest in the hour, and the last measured
    sizes: dict[str, int] = Field(default_factory=dict)
    last_sizes: dict[str, int] = Field(default_factory=dict)


@dataclass(frozen=True)
class PeriodUsage:
    """A project's consumption in the current billing period (the UTC calendar month)."""

    period_start: datetime
    period_end: datetime
    active_time_seconds: int = 0
    compute_time_seconds: int = 0
    written_data_bytes: int = 0
    data_transfer_bytes: int = 0
    data_storage_bytes_hour: int = 0
    synthetic_storage_size: int = 0
    compute_last_active_at: datetime | None = None


class RoleRecord(Record):
    """A role of a project. Roles are cluster-wide in PostgreSQL, so a role is shared by all
    branches of its project (on Neon each branch has its own copy)."""

    kind: ClassVar[str] = "role"

    name: str
    physical: str
    password: str | None = None
    no_login: bool = False
    protected: bool = False


class DatabaseRecord(Record):
    kind: ClassVar[str] = "database"

    branch_id: str
    name: str
    owner_name: str
    physical: str
    number: int = Field(default_factory=lambda: secrets.randbelow(2**31 - 1) + 1)
    # The WAL position from which the database's content was that of a new, empty database
    # (set when the plane made it so; a snapshot checks nothing changed since: `Snapshot`).
    empty_since: str | None = None
    # The physical name it is made under, when a swap renames it before it is made (a restore).
    made_as: str | None = None


class SnapshotRecord(Record):
    kind: ClassVar[str] = "snapshot"

    name: str
    source_branch_id: str
    expires_at: datetime | None = None
    manual: bool = True
    lsn: str | None = None
    timestamp: datetime | None = None
    full_size: int | None = None
    # logical database name -> (owner role name, physical snapshot database)
    databases: dict[str, tuple[str, str]] = Field(default_factory=dict)
    # Databases whose content was a new, empty database's when the snapshot was taken: their
    # physical copy was never made (a restore makes a new database instead).
    empty: list[str] = Field(default_factory=list)


class OperationRecord(Record):
    kind: ClassVar[str] = "operation"

    action: str
    status: str = "running"
    branch_id: str | None = None
    endpoint_id: str | None = None
    error: str | None = None
    failures_count: int = 0
    total_duration_ms: int = 0
    batch: str = Field(default_factory=lambda: str(uuid.uuid4()))
    job: JSON | None = None  # the work behind the batch; kept so a restart can finish it
    runner: int = 0  # id of the local-plane process running the job

    @classmethod
    def new(
        cls,
        project_id: str,
        action: str,
        *,
        branch_id: str | None = None,
        endpoint_id: str | None = None,
    ) -> OperationRecord:
        return cls(
            id=str(uuid.uuid4()),
            project_id=project_id,
            action=action,
            branch_id=branch_id,
            endpoint_id=endpoint_id,
        )


# --- request bodies -------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


Annotations = Annotated[dict[str, str], Field(max_length=50)]


class BranchSpec(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=256)
    annotations: Annotations | None = None
    role_name: str | None = Field(default=None, min_length=1, max_length=53)
    database_name: str | None = Field(default=None, min_length=1, max_length=63)


class EndpointSettingsSpec(_Body):
    autoscaling_limit_min_cu: float | None = Field(default=None, ge=0.25)
    autoscaling_limit_max_cu: float | None = Field(default=None, ge=0.25)
    suspend_timeout_seconds: int | None = Field(default=None, ge=-1, le=604800)
    pg_settings: dict[str, str] | None = None


class QuotaSpec(_Body):
    active_time_seconds: int | None = Field(default=None, ge=0)
    compute_time_seconds: int | None = Field(default=None, ge=0)
    written_data_bytes: int | None = Field(default=None, ge=0)
    data_transfer_bytes: int | None = Field(default=None, ge=0)
    logical_size_bytes: int | None = Field(default=None, ge=0)


class ProjectSettingsSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    quota: QuotaSpec | None = None


class ProjectSpec(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=256)
    region_id: str | None = None
    org_id: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,60}$")
    pg_version: int | None = Field(default=None, ge=14, le=18)
    branch: BranchSpec | None = None
    default_endpoint_settings: EndpointSettingsSpec | None = None
    settings: ProjectSettingsSpec | None = None
    history_retention_seconds: int | None = Field(default=None, ge=0, le=2592000)
    store_passwords: bool | None = None
    autoscaling_limit_min_cu: float | None = Field(default=None, ge=0.25)
    autoscaling_limit_max_cu: float | None = Field(default=None, ge=0.25)


class ProjectCreateBody(_Body):
    project: ProjectSpec


class ProjectUpdateSpec(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=256)
    settings: ProjectSettingsSpec | None = None
    default_endpoint_settings: EndpointSettingsSpec | None = None
    history_retention_seconds: int | None = Field(default=None, ge=0, le=2592000)


class ProjectUpdateBody(_Body):
    project: ProjectUpdateSpec


class NewBranchSpec(_Body):
    parent_id: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,60}$")
    name: str | None = Field(default=None, min_length=1, max_length=256)
    parent_lsn: str | None = None
    parent_timestamp: str | None = None
    protected: bool | None = None
    archived: bool | None = None
    init_source: Literal["parent-data", "schema-only"] | None = None
    expires_at: datetime | None = None


class NewEndpointSpec(_Body):
    type: Literal["read_write", "read_only"]
    autoscaling_limit_min_cu: float | None = Field(default=None, ge=0.25)
    autoscaling_limit_max_cu: float | None = Field(default=None, ge=0.25)
    suspend_timeout_seconds: int | None = Field(default=None, ge=-1, le=604800)
    settings: JSON | None = None
    provisioner: str | None = None


class BranchCreateBody(_Body):
    branch: NewBranchSpec | None = None
    endpoints: list[NewEndpointSpec] | None = None
    annotation_value: Annotations | None = None


class BranchUpdateSpec(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=256)
    protected: bool | None = None
    expires_at: datetime | None = None


class BranchUpdateBody(_Body):
    branch: BranchUpdateSpec


class BranchRestoreBody(_Body):
    source_branch_id: str = Field(pattern=r"^[a-z0-9-]{1,60}$")
    source_lsn: str | None = None
    source_timestamp: str | None = None
    preserve_under_name: str | None = Field(default=None, max_length=256)


class EndpointUpdateSpec(_Body):
    autoscaling_limit_min_cu: float | None = Field(default=None, ge=0.25)
    autoscaling_limit_max_cu: float | None = Field(default=None, ge=0.25)
    suspend_timeout_seconds: int | None = Field(default=None, ge=-1, le=604800)
    disabled: bool | None = None
    name: str | None = None
    settings: JSON | None = None
    provisioner: str | None = None


class EndpointUpdateBody(_Body):
    endpoint: EndpointUpdateSpec


class EndpointCreateSpec(_Body):
    branch_id: str = Field(pattern=r"^[a-z0-9-]{1,60}$")
    type: Literal["read_write", "read_only"]
    region_id: str | None = None
    autoscaling_limit_min_cu: float | None = Field(default=None, ge=0.25)
    autoscaling_limit_max_cu: float | None = Field(default=None, ge=0.25)
    suspend_timeout_seconds: int | None = Field(default=None, ge=-1, le=604800)
    disabled: bool | None = None
    name: str | None = Field(default=None, min_length=1, max_length=64)
    settings: JSON | None = None
    provisioner: str | None = None


class EndpointCreateBody(_Body):
    endpoint: EndpointCreateSpec


class RoleSpec(_Body):
    name: str = Field(min_length=1, max_length=53)
    no_login: bool = False

    @field_validator("name")
    @classmethod
    def _no_reserved_prefix(cls, value: str) -> str:
        if value.startswith("pg_"):
            raise ValueError("role names starting with 'pg_' are reserved")
        return value


class RoleCreateBody(_Body):
    role: RoleSpec


class DatabaseSpec(_Body):
    name: str = Field(min_length=1, max_length=63)
    owner_name: str = Field(min_length=1, max_length=53)


class DatabaseCreateBody(_Body):
    database: DatabaseSpec


class DatabaseUpdateSpec(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=63)
    owner_name: str | None = Field(default=None, min_length=1, max_length=53)


class DatabaseUpdateBody(_Body):
    database: DatabaseUpdateSpec


class SnapshotRenameSpec(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=256)


class SnapshotUpdateBody(_Body):
    snapshot: SnapshotRenameSpec


class SnapshotRestoreBody(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=256)
    target_branch_id: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,60}$")
    finalize_restore: bool = False


class TransferBody(_Body):
    destination_org_id: str = Field(pattern=r"^[a-z0-9-]{1,60}$")
    project_ids: list[Annotated[str, Field(pattern=r"^[a-z0-9-]{1,60}$")]] = Field(
        min_length=1, max_length=400
    )


class FinalizeRestoreBody(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=256)
