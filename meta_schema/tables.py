"""The meta database's tables: who may call agentdb, the agent sessions it runs, their
checkpoints and branches, and the append-only log of everything done to them.

Rows that a workflow creates (sessions, checkpoints, branches) are written first as intent
(`provisioning`/`pending`, with an idempotency key), then completed from the control plane's
answer; ids of Neon objects stay null until then. Composite foreign keys keep every
checkpoint, branch and session token inside its own agent session.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel

from agentdb.wire import (
    ActorScope,
    AddonKind,
    AddonStatus,
    BranchKind,
    BranchStatus,
    CheckpointStatus,
    FleetMigrationResultStatus,
    FleetMigrationStatus,
    SessionStatus,
    TierChangeStatus,
    TokenMode,
    TokenScope,
)
from meta_schema._base import EnumText, TableModel, new_id, one_of, utcnow

_NOW = {"server_default": sa.func.now()}
_EMPTY_JSON = {"server_default": sa.text("'{}'::jsonb")}


class User(TableModel, table=True):
    """Someone the platform runs agent sessions for."""

    __tablename__ = "users"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    name: str = Field(sa_type=sa.Text)
    # Stored lower-cased, so one address is one user.
    email: str = Field(sa_type=sa.Text, unique=True)
    # Tiers (quotas, retention) are defined by settings, so this is not a closed enum.
    tier: str = Field(sa_type=sa.Text)
    # Neon organization for this user's projects; null means the tier's default.
    org_id: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    disabled_at: datetime | None = None


class ApiTokenBase(SQLModel):
    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    name: str | None = Field(default=None, sa_type=sa.Text)
    # The first characters of the token, so its owner can tell tokens apart.
    prefix: str = Field(sa_type=sa.Text)
    scope: TokenScope = Field(sa_type=EnumText(TokenScope))
    mode: TokenMode = Field(
        default=TokenMode.READ_WRITE,
        sa_type=EnumText(TokenMode),
        sa_column_kwargs={"server_default": TokenMode.READ_WRITE.value},
    )
    user_id: uuid.UUID | None = Field(
        default=None, foreign_key="users.id", ondelete="CASCADE", index=True
    )
    session_id: uuid.UUID | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiToken(ApiTokenBase, TableModel, table=True):
    """A bearer token; only its SHA-256 is stored. A session token belongs to the session's
    owner (composite foreign key), so it can never name someone else's session."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["session_id", "user_id"],
            ["agent_sessions.id", "agent_sessions.user_id"],
            ondelete="CASCADE",
        ),
        one_of("scope", TokenScope),
        one_of("mode", TokenMode),
        sa.CheckConstraint(
            "(scope = 'admin' AND session_id IS NULL)"
            " OR (scope = 'user' AND user_id IS NOT NULL AND session_id IS NULL)"
            " OR (scope = 'session' AND user_id IS NOT NULL AND session_id IS NOT NULL)",
            name="scope_owner",
        ),
        sa.CheckConstraint("token_hash ~ '^[0-9a-f]{64}$'", name="token_hash_sha256_hex"),
    )

    # Hex SHA-256 of the whole token; unique, which is also the index a request's lookup uses.
    token_hash: str = Field(sa_type=sa.Text, unique=True)


class AgentSessionBase(SQLModel):
    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id")
    name: str = Field(sa_type=sa.Text)
    status: SessionStatus = Field(
        default=SessionStatus.PROVISIONING, sa_type=EnumText(SessionStatus)
    )
    # The tier and Neon organization the session was created under (the user's may change).
    tier: str = Field(sa_type=sa.Text)
    org_id: str | None = Field(default=None, sa_type=sa.Text)
    # Neon's ids; the live branch changes on every finalized restore.
    project_id: str | None = Field(default=None, sa_type=sa.Text, unique=True)
    live_branch_id: str | None = Field(default=None, sa_type=sa.Text)
    endpoint_id: str | None = Field(default=None, sa_type=sa.Text)
    database_name: str | None = Field(default=None, sa_type=sa.Text)
    role_name: str | None = Field(default=None, sa_type=sa.Text)
    head_checkpoint_id: uuid.UUID | None = None
    # The checkpoint a restore in flight puts back: what the reconciler needs to finish it.
    restore_target_id: uuid.UUID | None = None
    # Why the last workflow on this session failed, for its owner to read.
    error: str | None = Field(default=None, sa_type=sa.Text)
    idempotency_key: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column_kwargs={**_NOW, "onupdate": utcnow}
    )
    deleted_at: datetime | None = None


class AgentSession(AgentSessionBase, TableModel, table=True):
    """One agent's isolated database: a Neon project, its live branch and endpoint."""

    __tablename__ = "agent_sessions"
    __table_args__ = (
        # The target of api_tokens' (session_id, user_id) foreign key.
        sa.UniqueConstraint("id", "user_id"),
        sa.UniqueConstraint("user_id", "idempotency_key"),
        sa.Index(None, "user_id", "created_at"),
        # checkpoints references agent_sessions too: the cycle is closed after both exist.
        sa.ForeignKeyConstraint(
            ["head_checkpoint_id", "id"],
            ["checkpoints.id", "checkpoints.session_id"],
            use_alter=True,
        ),
        one_of("status", SessionStatus),
    )

    # Fernet token of the connection URI (role password included); never logged or shown.
    encrypted_connection_secret: bytes | None = None


class Checkpoint(TableModel, table=True):
    """A Neon snapshot of a session's database, as a node in the session's checkpoint tree
    (history forks after a restore; both sides stay)."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        # The target of the same-session foreign keys (parent, head, branch source).
        sa.UniqueConstraint("id", "session_id"),
        sa.ForeignKeyConstraint(
            ["parent_id", "session_id"], ["checkpoints.id", "checkpoints.session_id"]
        ),
        sa.UniqueConstraint("session_id", "idempotency_key"),
        sa.Index(None, "session_id", "created_at"),
        one_of("status", CheckpointStatus),
        sa.CheckConstraint("parent_id <> id", name="not_own_parent"),
        sa.CheckConstraint("size_bytes >= 0", name="size_bytes_not_negative"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    session_id: uuid.UUID = Field(foreign_key="agent_sessions.id", ondelete="CASCADE")
    parent_id: uuid.UUID | None = Field(default=None, index=True)
    status: CheckpointStatus = Field(
        default=CheckpointStatus.PENDING, sa_type=EnumText(CheckpointStatus)
    )
    label: str | None = Field(default=None, sa_type=sa.Text)
    # The agent's message or prompt that led to this state.
    message: str | None = Field(default=None, sa_type=sa.Text)
    # Free-form JSON from the caller; the column is "metadata", a name SQLAlchemy reserves.
    meta: dict[str, Any] = Field(
        default_factory=dict, sa_type=JSONB, sa_column_kwargs={"name": "metadata", **_EMPTY_JSON}
    )
    code_ref: str | None = Field(default=None, sa_type=sa.Text)
    schema_hash: str | None = Field(default=None, sa_type=sa.Text)
    # From Neon once the snapshot exists: its id, the branch it was taken from (which retention
    # must keep in cloud mode), its LSN and time (Neon's clock, never ours) and size.
    snapshot_id: str | None = Field(default=None, sa_type=sa.Text)
    # What the snapshot holds (schema and row counts per table), described once on demand:
    # a checkpoint never changes, so diffs reuse it.
    summary: dict[str, Any] | None = Field(default=None, sa_type=JSONB)
    source_branch_id: str | None = Field(default=None, sa_type=sa.Text)
    lsn: str | None = Field(default=None, sa_type=sa.Text)
    taken_at: datetime | None = None
    size_bytes: int | None = Field(default=None, sa_type=sa.BigInteger)
    pinned: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    error: str | None = Field(default=None, sa_type=sa.Text)
    idempotency_key: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)


class BranchBase(SQLModel):
    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    session_id: uuid.UUID = Field(foreign_key="agent_sessions.id", ondelete="CASCADE")
    kind: BranchKind = Field(sa_type=EnumText(BranchKind))
    name: str = Field(sa_type=sa.Text)
    status: BranchStatus = Field(default=BranchStatus.PENDING, sa_type=EnumText(BranchStatus))
    source_checkpoint_id: uuid.UUID | None = None
    # Neon's ids, once the branch exists.
    branch_id: str | None = Field(default=None, sa_type=sa.Text)
    endpoint_id: str | None = Field(default=None, sa_type=sa.Text)
    expires_at: datetime | None = None
    error: str | None = Field(default=None, sa_type=sa.Text)
    idempotency_key: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)


class Branch(BranchBase, TableModel, table=True):
    """A dev or preview branch of a session's database, beside its live branch."""

    __tablename__ = "branches"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["source_checkpoint_id", "session_id"], ["checkpoints.id", "checkpoints.session_id"]
        ),
        sa.UniqueConstraint("session_id", "idempotency_key"),
        one_of("kind", BranchKind),
        one_of("status", BranchStatus),
    )

    encrypted_connection_secret: bytes | None = None


class SessionAddon(TableModel, table=True):
    """Neon Auth or the Data API on a session's live database. The control plane keeps the
    configuration per branch (so a restore's new live branch inherits it); this row records
    the intent, the outcome and the keys Neon hands out only once, encrypted."""

    __tablename__ = "session_addons"
    __table_args__ = (
        sa.UniqueConstraint("session_id", "kind"),
        one_of("kind", AddonKind),
        one_of("status", AddonStatus),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    session_id: uuid.UUID = Field(foreign_key="agent_sessions.id", ondelete="CASCADE")
    kind: AddonKind = Field(sa_type=EnumText(AddonKind))
    status: AddonStatus = Field(default=AddonStatus.ENABLING, sa_type=EnumText(AddonStatus))
    # What the caller asked for (e.g. the Data API's default grants), for a retry to repeat.
    settings: dict[str, Any] = Field(
        default_factory=dict, sa_type=JSONB, sa_column_kwargs=_EMPTY_JSON
    )
    # Fernet token of a JSON object of the keys Neon returned (Neon Auth's client and server
    # keys); never logged, shown only to the session's owner.
    encrypted_secret: bytes | None = None
    error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column_kwargs={**_NOW, "onupdate": utcnow}
    )


class IdempotencyRecord(TableModel, table=True):
    """A POST made with an `Idempotency-Key`: the first call's answer, replayed to a retry of
    the same request by the same token. The answer is stored encrypted: it may hold a token or
    a connection URI."""

    __tablename__ = "idempotency_records"
    __table_args__ = (
        sa.UniqueConstraint("principal", "key"),
        sa.CheckConstraint(
            "(status_code IS NULL) = (encrypted_response IS NULL)", name="answer_complete"
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    # The api_tokens id that sent the request: keys are per caller.
    principal: str = Field(sa_type=sa.Text)
    key: str = Field(sa_type=sa.Text)
    method: str = Field(sa_type=sa.Text)
    path: str = Field(sa_type=sa.Text)
    # SHA-256 of the request body: the same key with another body is a caller's mistake.
    fingerprint: str = Field(sa_type=sa.Text)
    # Null while the first call runs.
    status_code: int | None = None
    encrypted_response: bytes | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW, index=True)
    completed_at: datetime | None = None
    # The process running the first call (`JobRunner.runner`): once it is gone (its lease,
    # `agentdb.services.lease`, is free), a retry takes the key over at once.
    runner: str | None = Field(default=None, sa_type=sa.Text)


class Event(TableModel, table=True):
    """One mutation, as it happened. Append-only: a trigger rejects UPDATE, DELETE and
    TRUNCATE. No foreign keys, so the log outlives what it describes."""

    __tablename__ = "events"
    __table_args__ = (
        sa.Index(None, "session_id", "at"),
        one_of("actor_scope", ActorScope),
    )

    id: int | None = Field(
        default=None,
        primary_key=True,
        sa_type=sa.BigInteger,
        sa_column_args=[sa.Identity(always=True)],
    )
    at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    # An api_tokens id, or "system" for agentdb's own jobs (reconciler, retention).
    actor: str = Field(sa_type=sa.Text)
    actor_scope: ActorScope = Field(sa_type=EnumText(ActorScope))
    # The token's name when it had one (its id is `actor`).
    token_name: str | None = Field(default=None, sa_type=sa.Text)
    request_id: str | None = Field(default=None, sa_type=sa.Text)
    # What the agent said it was doing: tool, tool_call_id, model, prompt (an excerpt).
    agent_context: dict[str, Any] = Field(
        default_factory=dict, sa_type=JSONB, sa_column_kwargs=_EMPTY_JSON
    )
    session_id: uuid.UUID | None = None
    # What was done, as "<noun>.<verb>", e.g. "checkpoint.create".
    action: str = Field(sa_type=sa.Text)
    target_kind: str | None = Field(default=None, sa_type=sa.Text)
    target_id: str | None = Field(default=None, sa_type=sa.Text)
    details: dict[str, Any] = Field(
        default_factory=dict, sa_type=JSONB, sa_column_kwargs=_EMPTY_JSON
    )
    neon_operation_ids: list[str] = Field(
        default_factory=list,
        sa_type=ARRAY(sa.Text),
        sa_column_kwargs={"server_default": sa.text("'{}'::text[]")},
    )


class UsageSample(TableModel, table=True):
    """One consumption metric of a session over one period, as Neon (or the local plane)
    reported it."""

    __tablename__ = "usage_samples"
    __table_args__ = (
        sa.UniqueConstraint("session_id", "metric", "period_start"),
        sa.CheckConstraint("period_end > period_start", name="period_not_empty"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    session_id: uuid.UUID = Field(foreign_key="agent_sessions.id", ondelete="CASCADE")
    # Neon's metric name (e.g. compute_unit_seconds); Neon adds metrics, so not an enum.
    metric: str = Field(sa_type=sa.Text)
    period_start: datetime
    period_end: datetime
    value: int = Field(sa_type=sa.BigInteger)
    collected_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)


class FleetMigration(TableModel, table=True):
    """SQL to apply to many sessions' databases, with whom it targets and how it rolls out;
    its progress lives in its result rows (one per target session), so any run resumes it."""

    __tablename__ = "fleet_migrations"
    __table_args__ = (
        # A name is one migration; dry runs of it may be many.
        sa.Index(
            "uq_fleet_migrations_name", "name", unique=True, postgresql_where=sa.text("NOT dry_run")
        ),
        one_of("status", FleetMigrationStatus),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    name: str = Field(sa_type=sa.Text)
    dry_run: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    up_sql: str = Field(sa_type=sa.Text)
    down_sql: str | None = Field(default=None, sa_type=sa.Text)
    # sha256 of `up_sql`: what a dry run tested, and what `tested_by` must match.
    checksum: str = Field(sa_type=sa.Text)
    # Whom it targets: all sessions, or those of some tiers, users, or session ids.
    target: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB)
    # Sessions created later take it too (when they are created, and by the job after).
    baseline: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    rollout: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB)
    tested_by: uuid.UUID | None = Field(default=None, foreign_key="fleet_migrations.id")
    status: FleetMigrationStatus = Field(
        default=FleetMigrationStatus.PENDING, sa_type=EnumText(FleetMigrationStatus)
    )
    # Failures a `resume` with `continue` accepted: the halt rule counts only later ones.
    failures_accepted: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_by: str = Field(sa_type=sa.Text)
    request_id: str | None = Field(default=None, sa_type=sa.Text)
    error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    updated_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class FleetMigrationResult(TableModel, table=True):
    """A fleet migration on one session: its wave, its outcome, and the checkpoint taken just
    before it (what a rollback without `down` restores)."""

    __tablename__ = "fleet_migration_results"
    __table_args__ = (
        sa.UniqueConstraint("fleet_migration_id", "session_id"),
        sa.ForeignKeyConstraint(
            ["checkpoint_id", "session_id"], ["checkpoints.id", "checkpoints.session_id"]
        ),
        sa.Index(None, "fleet_migration_id", "wave", "status"),
        one_of("status", FleetMigrationResultStatus),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    fleet_migration_id: uuid.UUID = Field(foreign_key="fleet_migrations.id", ondelete="CASCADE")
    session_id: uuid.UUID = Field(foreign_key="agent_sessions.id", ondelete="CASCADE", index=True)
    # 0: the canary; 1, 2, ...: the waves after it, in order.
    wave: int = Field(default=1)
    status: FleetMigrationResultStatus = Field(
        default=FleetMigrationResultStatus.PENDING, sa_type=EnumText(FleetMigrationResultStatus)
    )
    checkpoint_id: uuid.UUID | None = None
    # A dry run's branch while it exists (so a crash's leftover is found and deleted).
    branch_id: uuid.UUID | None = None
    # What the database held right after the migration (`describe_database`): a rollback
    # restores the checkpoint only if it still does.
    fingerprint: str | None = Field(default=None, sa_type=sa.Text)
    attempts: int = Field(default=0)
    runner: str | None = Field(default=None, sa_type=sa.Text)
    error: str | None = Field(default=None, sa_type=sa.Text)
    checkpoint_ms: int | None = None
    apply_ms: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class TierChange(TableModel, table=True):
    """A user moved to another tier: their sessions' projects go to the tier's organization
    (in batches) and get its limits. Progress lives on the sessions themselves (`org_id`,
    `tier`), so a failed or interrupted change resumes where it stopped. At most one change per
    user is unfinished; a newer one supersedes it."""

    __tablename__ = "tier_changes"
    __table_args__ = (
        sa.Index(
            "uq_tier_changes_unfinished_user",
            "user_id",
            unique=True,
            postgresql_where=sa.text("status IN ('running', 'failed')"),
        ),
        one_of("status", TierChangeStatus),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    from_tier: str = Field(sa_type=sa.Text)
    to_tier: str = Field(sa_type=sa.Text)
    # The organization the user's projects go to; null keeps them where they are.
    to_org_id: str | None = Field(default=None, sa_type=sa.Text)
    status: TierChangeStatus = Field(
        default=TierChangeStatus.RUNNING, sa_type=EnumText(TierChangeStatus)
    )
    sessions_total: int = 0
    sessions_moved: int = 0
    sessions_updated: int = 0
    transfer_requests: int = 0
    attempts: int = 0
    error: str | None = Field(default=None, sa_type=sa.Text)
    # The api_tokens id that asked, and the request's id (as in `events`).
    actor: str = Field(sa_type=sa.Text)
    request_id: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column_kwargs={**_NOW, "onupdate": utcnow}
    )
    finished_at: datetime | None = None


class WarmProject(TableModel, table=True):
    """A project made ahead of any session (the warm pool): its live branch, compute, role and
    database, and the root snapshot of its empty database. A session create takes one whole,
    in one transaction: the session gets this row's id, which the project is already named
    after, and the root checkpoint gets `root_checkpoint_id`, which the snapshot is named after.

    A row is written before its project is made (`ready` false): a fill that a crash cut short
    is found, and its project deleted, by the next fill."""

    __tablename__ = "warm_projects"
    __table_args__ = (sa.Index(None, "pool", "fingerprint", "ready", "created_at"),)

    # The id the session that takes this project gets; the project is named after it.
    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    root_checkpoint_id: uuid.UUID = Field(default_factory=new_id)
    # The tier the project was made for, and a digest of what it was made with (organization,
    # compute, quotas, history retention): a project made before the tier changed is not used.
    pool: str = Field(sa_type=sa.Text)
    fingerprint: str = Field(sa_type=sa.Text)
    org_id: str | None = Field(default=None, sa_type=sa.Text)
    ready: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    project_id: str | None = Field(default=None, sa_type=sa.Text, unique=True)
    live_branch_id: str | None = Field(default=None, sa_type=sa.Text)
    endpoint_id: str | None = Field(default=None, sa_type=sa.Text)
    # Fernet token of the connection URI, as on agent_sessions.
    encrypted_connection_secret: bytes | None = None
    # The root snapshot, as `checkpoints` records it.
    snapshot_id: str | None = Field(default=None, sa_type=sa.Text)
    source_branch_id: str | None = Field(default=None, sa_type=sa.Text)
    lsn: str | None = Field(default=None, sa_type=sa.Text)
    taken_at: datetime | None = None
    size_bytes: int | None = Field(default=None, sa_type=sa.BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)


class JobRun(TableModel, table=True):
    """One run of a background job (`agentdb.services.jobs`) by one agentdb process, written as
    it starts and completed as it ends: the record that shows two processes sharing the meta
    database never ran a job at once, and what each run took. Rows older than a week are
    deleted by the runner itself."""

    __tablename__ = "job_runs"
    __table_args__ = (sa.Index(None, "job", "started_at"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=sa.BigInteger)
    job: str = Field(sa_type=sa.Text)
    # The process: host, pid and a random tag (a restarted process is another runner).
    runner: str = Field(sa_type=sa.Text)
    started_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    finished_at: datetime | None = None
    # One line naming what failed; null when the run succeeded (or has not finished).
    error: str | None = Field(default=None, sa_type=sa.Text)
