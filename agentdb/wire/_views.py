"""What the services return and the API sends: typed, frozen views without secrets (a
connection URI is only ever returned by `SessionService.connection_uri` and
`BranchService.connection_uri`). Built from the meta tables' rows by the `of` constructors;
the rows' classes are only named for the type checker, so a client never loads them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from ._enums import (
    ActorScope,
    AddonStatus,
    BranchKind,
    BranchStatus,
    CheckpointStatus,
    SessionStatus,
    TierChangeStatus,
    TokenMode,
    TokenScope,
)

if TYPE_CHECKING:
    from meta_schema import (
        AgentSession,
        ApiToken,
        Branch,
        Checkpoint,
        Event,
        TierChange,
        User,
    )


class _View(BaseModel):
    """A view is validated from a row (`from_attributes`): only its own fields are read, so a
    secret a row holds cannot reach it."""

    model_config = ConfigDict(frozen=True)


class SessionView(_View):
    """An agent session as its owner sees it."""

    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    status: SessionStatus
    tier: str
    database_name: str | None
    role_name: str | None
    head_checkpoint_id: uuid.UUID | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @classmethod
    def of(cls, row: AgentSession) -> SessionView:
        return cls.model_validate(row, from_attributes=True)


class CheckpointView(_View):
    """One checkpoint: a node of its session's tree. `taken_at` is the control plane's time."""

    id: uuid.UUID
    session_id: uuid.UUID
    parent_id: uuid.UUID | None
    status: CheckpointStatus
    label: str | None
    message: str | None
    metadata: dict[str, JsonValue]
    code_ref: str | None = None
    taken_at: datetime | None
    size_bytes: int | None
    pinned: bool
    error: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Checkpoint, *, parent_id: uuid.UUID | None = None) -> CheckpointView:
        """`parent_id` overrides the row's (the nearest ancestor not deleted)."""
        return cls(
            id=row.id,
            session_id=row.session_id,
            parent_id=parent_id if parent_id is not None else row.parent_id,
            status=row.status,
            label=row.label,
            message=row.message,
            metadata=row.meta,
            code_ref=row.code_ref,
            taken_at=row.taken_at,
            size_bytes=row.size_bytes,
            pinned=row.pinned,
            error=row.error,
            created_at=row.created_at,
        )


class CheckpointTree(_View):
    """A session's checkpoints, oldest first, with the one its database now descends from.
    History forks after a restore: every branch of it stays."""

    session_id: uuid.UUID
    head_id: uuid.UUID | None
    checkpoints: list[CheckpointView] = Field(default_factory=list)

    def children(self, checkpoint_id: uuid.UUID | None) -> list[CheckpointView]:
        """The checkpoints whose parent is `checkpoint_id` (None: the roots)."""
        return [c for c in self.checkpoints if c.parent_id == checkpoint_id]


class BranchView(_View):
    """A dev branch (a writable copy) or a preview (a look at a checkpoint), beside the live
    database. `source_checkpoint_id` None means it was copied from the live database."""

    id: uuid.UUID
    session_id: uuid.UUID
    kind: BranchKind
    name: str
    status: BranchStatus
    source_checkpoint_id: uuid.UUID | None
    expires_at: datetime | None
    error: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Branch) -> BranchView:
        return cls.model_validate(row, from_attributes=True)


# --- diffs ---------------------------------------------------------------------------------

Change = Literal["added", "removed", "changed"]
ObjectKind = Literal["view", "type", "function"]


class ColumnShape(_View):
    """A column's type as Postgres prints it, whether it takes NULL, and its default (or
    identity / generated expression)."""

    type: str
    nullable: bool
    default: str | None = None


class ColumnChange(_View):
    name: str
    before: ColumnShape
    after: ColumnShape


class TableDiff(_View):
    """One table (schema-qualified `name`) on both sides. An added table lists all its
    columns, indexes and constraints as added; a removed one as removed. Row counts are exact when
    `rows_exact`, else Postgres' estimate (None if it has none); `data_changed` compares the
    rows' contents of small tables and is None when a side was too large to read."""

    name: str
    change: Literal["added", "removed", "changed", "unchanged"]
    rows_from: int | None
    rows_to: int | None
    rows_exact: bool
    data_changed: bool | None
    columns_added: list[str] = Field(default_factory=list)
    columns_removed: list[str] = Field(default_factory=list)
    columns_changed: list[ColumnChange] = Field(default_factory=list)
    indexes_added: list[str] = Field(default_factory=list)
    indexes_removed: list[str] = Field(default_factory=list)
    indexes_changed: list[str] = Field(default_factory=list)
    constraints_added: list[str] = Field(default_factory=list)
    constraints_removed: list[str] = Field(default_factory=list)
    constraints_changed: list[str] = Field(default_factory=list)


class ObjectDiff(_View):
    """A view, type (enum, domain, composite) or function that differs."""

    kind: ObjectKind
    name: str
    change: Change


class DiffSummary(_View):
    tables_added: int
    tables_removed: int
    tables_changed: int
    tables_unchanged: int
    objects_changed: int
    identical: bool


class DiffView(_View):
    """What changed from one checkpoint to another (`to_checkpoint_id`) or to the live
    database as it is now (`to_checkpoint_id` None): every table of either side, sorted by
    name, and the views, types and functions that differ. Equal schema hashes mean equal
    schemas (row counts and contents aside)."""

    session_id: uuid.UUID
    from_checkpoint_id: uuid.UUID
    to_checkpoint_id: uuid.UUID | None
    from_schema_hash: str
    to_schema_hash: str
    summary: DiffSummary
    tables: list[TableDiff] = Field(default_factory=list)
    objects: list[ObjectDiff] = Field(default_factory=list)


# --- add-ons: Neon Auth and the Data API ----------------------------------------------------


class AuthView(_View):
    """Neon Auth on a session's live database. `base_url` is what the app's auth client needs
    (Better Auth: sign-up at `{base_url}/sign-up/email`, sign-in at `{base_url}/sign-in/email`);
    `jwks_url` verifies the JWTs it issues. `pub_client_key` is publishable; the server key is
    never part of this view."""

    session_id: uuid.UUID
    enabled: bool
    status: AddonStatus
    provider: str | None = None
    base_url: str | None = None
    jwks_url: str | None = None
    database_name: str | None = None
    pub_client_key: str | None = None
    enabled_at: datetime | None = None
    error: str | None = None


class AuthUserView(_View):
    """A user who signed up to the app (a row of `neon_auth`'s users table)."""

    id: str
    email: str | None
    name: str | None
    email_verified: bool
    signed_in_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


class OAuthProviderView(_View):
    """A sign-in provider of Neon Auth; `type` "shared" means Neon's development keys."""

    id: str
    type: str | None = None
    client_id: str | None = None


class DataApiView(_View):
    """The Data API (PostgREST) over a session's live database: `url` serves
    `{url}/{table}`; requests with a Neon Auth JWT (`Authorization: Bearer`) run as role
    `authenticated` with the token's claims in `request.jwt.claims` (`auth.user_id()` is its
    `sub`), requests without one as `anonymous`. `state` is the control plane's status."""

    session_id: uuid.UUID
    enabled: bool
    status: AddonStatus
    url: str | None = None
    state: str | None = None
    jwks_url: str | None = None
    schemas: list[str] = Field(default_factory=list)
    available_schemas: list[str] = Field(default_factory=list)
    default_grants: bool | None = None
    #: Browser origins the Data API answers (CORS); ["*"]: any.
    cors_allowed_origins: list[str] | None = None
    error: str | None = None


# --- users, tokens, events, SQL, usage, tier changes ----------------------------------------


class UserView(BaseModel):
    """A user as the platform sees it."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    email: str
    name: str
    tier: str
    org_id: str | None
    created_at: datetime
    disabled_at: datetime | None

    @classmethod
    def of(cls, row: User) -> UserView:
        return cls.model_validate(row, from_attributes=True)


class TokenView(BaseModel):
    """A token as its owner may see it: never the token or its hash."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    scope: TokenScope
    mode: TokenMode
    user_id: uuid.UUID | None
    session_id: uuid.UUID | None
    name: str | None
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiToken) -> TokenView:
        return cls.model_validate(row, from_attributes=True)


class TierChangeView(BaseModel):
    """A user's move to another tier and how far it got."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    user_id: uuid.UUID
    from_tier: str
    to_tier: str
    to_org_id: str | None
    status: TierChangeStatus
    sessions_total: int
    sessions_moved: int
    sessions_updated: int
    transfer_requests: int
    attempts: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: TierChange) -> TierChangeView:
        return cls.model_validate(row, from_attributes=True)


class EventView(BaseModel):
    """One recorded mutation: who did what to which target, and the control plane's
    operation ids it took."""

    model_config = ConfigDict(frozen=True)

    id: int
    at: datetime
    actor: str
    actor_scope: ActorScope
    token_name: str | None = None
    request_id: str | None
    agent_context: dict[str, str] = Field(default_factory=dict)
    session_id: uuid.UUID | None
    action: str
    target_kind: str | None
    target_id: str | None
    # Any JSON (`Any`, not `JsonValue`: its OpenAPI `oneOf` has a whole number match both
    # "integer" and "number", which no number in the details could pass).
    details: dict[str, Any]
    neon_operation_ids: list[str]

    @classmethod
    def of(cls, row: Event) -> EventView:
        return cls.model_validate(row, from_attributes=True)


class SqlColumn(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    #: PostgreSQL's name for the type, e.g. "integer", "numeric(10,2)", "text[]".
    type: str


class RoleView(BaseModel):
    """A PostgreSQL role of the session's database. `name` is the control plane's name for it;
    `sql_name` is the name to write in SQL (`GRANT ... TO`): the same on Neon, the name with
    the project's suffix on the local plane, where one cluster holds every session's roles."""

    name: str
    sql_name: str
    owner: bool = Field(description="The session's own role, which owns its database's schema.")
    created_at: datetime | None


class ExtensionView(BaseModel):
    """An extension the session's server offers. `installable`: the session's owner may
    `CREATE EXTENSION` it (trusted, or allowed as on Neon); `installed_version` is set when it is
    installed in the session's database."""

    name: str
    default_version: str | None
    installed_version: str | None
    installable: bool
    comment: str | None


class SqlResult(BaseModel):
    """The last statement's result.

    `row_count` is what PostgreSQL counted: rows returned (even beyond the cap) or affected,
    0 for commands with neither. `truncated` says `rows` stops early: at the row cap
    (`max_rows`), or before the row that would take the rows' JSON past the byte cap. `command`
    is PostgreSQL's tag, e.g. "SELECT 3", "INSERT 0 1", "CREATE TABLE".

    Values as JSON: null, bool, text, int and float as themselves (NaN and infinities as the
    strings "NaN", "Infinity", "-Infinity"); numeric as a string, to keep every digit;
    json/jsonb as JSON; arrays as lists; bytea as PostgreSQL's hex text ("\\x0102", which
    reads back as a bytea parameter); date, time and timestamp as ISO 8601 (infinity and BC
    dates as PostgreSQL's text); uuid as a string; every other type (interval, ranges, inet,
    enums, composite rows ...) as PostgreSQL's text for it.
    """

    model_config = ConfigDict(frozen=True)

    columns: list[SqlColumn]
    rows: list[list[JsonValue]]
    row_count: int
    truncated: bool
    command: str


class MetricUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    metric: str
    unit: str
    value: int
    #: The tier's quota for one session (sessions' reports only; null: none).
    quota: int | None = None
    used_fraction: float | None = None


class PeriodUsage(BaseModel):
    """One billing period (a calendar month, UTC)."""

    model_config = ConfigDict(frozen=True)

    period_start: datetime
    period_end: datetime
    metrics: list[MetricUsage]


class UsageReport(BaseModel):
    """A session's or a user's usage, newest period first. A user's covers all their
    sessions, deleted ones included (what they consumed before deletion still counts)."""

    model_config = ConfigDict(frozen=True)

    user_id: uuid.UUID
    session_id: uuid.UUID | None
    tier: str
    sessions: int
    polled_at: datetime | None
    periods: list[PeriodUsage]
