"""The meta database's first tables: users, tokens, agent sessions, checkpoints, branches, the
append-only event log, usage samples and fleet migrations.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 11:17:45

Autogenerate's output, checked by hand: the agent_sessions -> checkpoints foreign key (a cycle)
is added after both tables exist, since CREATE TABLE leaves out a `use_alter` constraint, and the
events trigger is written out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One statement-level trigger refuses every change to events but INSERT.
EVENTS_APPEND_ONLY = """
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = 'events are append-only: ' || TG_OP || ' is not allowed';
END
$$
"""
EVENTS_TRIGGER = """
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON events
FOR EACH STATEMENT EXECUTE FUNCTION events_append_only()
"""


def _created_at(name: str = "created_at") -> sa.Column[datetime]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def _timestamp(name: str) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _text(name: str, *, nullable: bool = True) -> sa.Column[str]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        _text("name", nullable=False),
        _text("external_id"),
        _text("tier", nullable=False),
        _text("org_id"),
        _created_at(),
        _timestamp("disabled_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("external_id", name=op.f("uq_users_external_id")),
    )
    op.create_table(
        "agent_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        _text("name", nullable=False),
        _text("status", nullable=False),
        _text("tier", nullable=False),
        _text("org_id"),
        _text("project_id"),
        _text("live_branch_id"),
        _text("endpoint_id"),
        _text("database_name"),
        _text("role_name"),
        sa.Column("head_checkpoint_id", sa.Uuid(), nullable=True),
        _text("error"),
        _text("idempotency_key"),
        _created_at(),
        _created_at("updated_at"),
        _timestamp("deleted_at"),
        sa.Column("encrypted_connection_secret", sa.LargeBinary(), nullable=True),
        sa.CheckConstraint(
            "status IN ('provisioning', 'ready', 'checkpointing', 'restoring', 'deleting',"
            " 'deleted', 'failed')",
            name=op.f("ck_agent_sessions_status"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_agent_sessions_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_sessions")),
        sa.UniqueConstraint("id", "user_id", name=op.f("uq_agent_sessions_id_user_id")),
        sa.UniqueConstraint("project_id", name=op.f("uq_agent_sessions_project_id")),
        sa.UniqueConstraint(
            "user_id", "idempotency_key", name=op.f("uq_agent_sessions_user_id_idempotency_key")
        ),
    )
    op.create_index(
        op.f("ix_agent_sessions_user_id_created_at"), "agent_sessions", ["user_id", "created_at"]
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        _text("name"),
        _text("prefix", nullable=False),
        _text("scope", nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        _created_at(),
        _timestamp("expires_at"),
        _timestamp("last_used_at"),
        _timestamp("revoked_at"),
        _text("token_hash", nullable=False),
        sa.CheckConstraint(
            "(scope = 'admin' AND session_id IS NULL)"
            " OR (scope = 'user' AND user_id IS NOT NULL AND session_id IS NULL)"
            " OR (scope = 'session' AND user_id IS NOT NULL AND session_id IS NOT NULL)",
            name=op.f("ck_api_tokens_scope_owner"),
        ),
        sa.CheckConstraint(
            "scope IN ('admin', 'user', 'session')", name=op.f("ck_api_tokens_scope")
        ),
        sa.CheckConstraint(
            "token_hash ~ '^[0-9a-f]{64}$'", name=op.f("ck_api_tokens_token_hash_sha256_hex")
        ),
        sa.ForeignKeyConstraint(
            ["session_id", "user_id"],
            ["agent_sessions.id", "agent_sessions.user_id"],
            name=op.f("fk_api_tokens_session_id_user_id_agent_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_session_id"), "api_tokens", ["session_id"])
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"])
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        _text("status", nullable=False),
        _text("label"),
        _text("message"),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        _text("code_ref"),
        _text("schema_hash"),
        _text("snapshot_id"),
        _text("source_branch_id"),
        _text("lsn"),
        _timestamp("taken_at"),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("pinned", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        _timestamp("expires_at"),
        _text("error"),
        _text("idempotency_key"),
        _created_at(),
        sa.CheckConstraint(
            "status IN ('pending', 'ready', 'failed', 'deleting', 'deleted')",
            name=op.f("ck_checkpoints_status"),
        ),
        sa.CheckConstraint("parent_id <> id", name=op.f("ck_checkpoints_not_own_parent")),
        sa.CheckConstraint("size_bytes >= 0", name=op.f("ck_checkpoints_size_bytes_not_negative")),
        sa.ForeignKeyConstraint(
            ["parent_id", "session_id"],
            ["checkpoints.id", "checkpoints.session_id"],
            name=op.f("fk_checkpoints_parent_id_session_id_checkpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["agent_sessions.id"],
            name=op.f("fk_checkpoints_session_id_agent_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
        sa.UniqueConstraint("id", "session_id", name=op.f("uq_checkpoints_id_session_id")),
        sa.UniqueConstraint(
            "session_id", "idempotency_key", name=op.f("uq_checkpoints_session_id_idempotency_key")
        ),
    )
    op.create_index(op.f("ix_checkpoints_parent_id"), "checkpoints", ["parent_id"])
    op.create_index(
        op.f("ix_checkpoints_session_id_created_at"), "checkpoints", ["session_id", "created_at"]
    )
    op.create_foreign_key(
        op.f("fk_agent_sessions_head_checkpoint_id_id_checkpoints"),
        "agent_sessions",
        "checkpoints",
        ["head_checkpoint_id", "id"],
        ["id", "session_id"],
    )
    op.create_table(
        "branches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        _text("kind", nullable=False),
        _text("name", nullable=False),
        _text("status", nullable=False),
        sa.Column("source_checkpoint_id", sa.Uuid(), nullable=True),
        _text("branch_id"),
        _text("endpoint_id"),
        _timestamp("expires_at"),
        _text("error"),
        _text("idempotency_key"),
        _created_at(),
        sa.Column("encrypted_connection_secret", sa.LargeBinary(), nullable=True),
        sa.CheckConstraint("kind IN ('dev', 'preview')", name=op.f("ck_branches_kind")),
        sa.CheckConstraint(
            "status IN ('pending', 'ready', 'failed', 'deleting', 'deleted')",
            name=op.f("ck_branches_status"),
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["agent_sessions.id"],
            name=op.f("fk_branches_session_id_agent_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_checkpoint_id", "session_id"],
            ["checkpoints.id", "checkpoints.session_id"],
            name=op.f("fk_branches_source_checkpoint_id_session_id_checkpoints"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_branches")),
        sa.UniqueConstraint(
            "session_id", "idempotency_key", name=op.f("uq_branches_session_id_idempotency_key")
        ),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        _created_at("at"),
        _text("actor", nullable=False),
        _text("actor_scope", nullable=False),
        _text("request_id"),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        _text("action", nullable=False),
        _text("target_kind"),
        _text("target_id"),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "neon_operation_ids",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "actor_scope IN ('admin', 'user', 'session', 'system')",
            name=op.f("ck_events_actor_scope"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_session_id_at"), "events", ["session_id", "at"])
    op.execute(EVENTS_APPEND_ONLY)
    op.execute(EVENTS_TRIGGER)
    op.create_table(
        "usage_samples",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        _text("metric", nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        _created_at("collected_at"),
        sa.CheckConstraint(
            "period_end > period_start", name=op.f("ck_usage_samples_period_not_empty")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["agent_sessions.id"],
            name=op.f("fk_usage_samples_session_id_agent_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_samples")),
        sa.UniqueConstraint(
            "session_id",
            "metric",
            "period_start",
            name=op.f("uq_usage_samples_session_id_metric_period_start"),
        ),
    )
    op.create_table(
        "fleet_migrations",
        sa.Column("id", sa.Uuid(), nullable=False),
        _text("name", nullable=False),
        _text("sql", nullable=False),
        _text("status", nullable=False),
        _text("created_by", nullable=False),
        _text("error"),
        _created_at(),
        _timestamp("started_at"),
        _timestamp("finished_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'finished', 'failed', 'cancelled')",
            name=op.f("ck_fleet_migrations_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_migrations")),
        sa.UniqueConstraint("name", name=op.f("uq_fleet_migrations_name")),
    )
    op.create_table(
        "fleet_migration_results",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("fleet_migration_id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        _text("status", nullable=False),
        sa.Column("checkpoint_id", sa.Uuid(), nullable=True),
        _text("error"),
        _timestamp("started_at"),
        _timestamp("finished_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'applied', 'failed', 'skipped')",
            name=op.f("ck_fleet_migration_results_status"),
        ),
        sa.ForeignKeyConstraint(
            ["checkpoint_id", "session_id"],
            ["checkpoints.id", "checkpoints.session_id"],
            name=op.f("fk_fleet_migration_results_checkpoint_id_session_id_checkpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["fleet_migration_id"],
            ["fleet_migrations.id"],
            name=op.f("fk_fleet_migration_results_fleet_migration_id_fleet_migrations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["agent_sessions.id"],
            name=op.f("fk_fleet_migration_results_session_id_agent_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_migration_results")),
        sa.UniqueConstraint(
            "fleet_migration_id",
            "session_id",
            name=op.f("uq_fleet_migration_results_fleet_migration_id_session_id"),
        ),
    )
    op.create_index(
        op.f("ix_fleet_migration_results_session_id"), "fleet_migration_results", ["session_id"]
    )


def downgrade() -> None:
    op.drop_table("fleet_migration_results")
    op.drop_table("fleet_migrations")
    op.drop_table("usage_samples")
    op.drop_table("events")
    op.execute("DROP FUNCTION events_append_only()")
    op.drop_table("branches")
    op.drop_constraint(
        op.f("fk_agent_sessions_head_checkpoint_id_id_checkpoints"),
        "agent_sessions",
        type_="foreignkey",
    )
    op.drop_table("checkpoints")
    op.drop_table("api_tokens")
    op.drop_table("agent_sessions")
    op.drop_table("users")
