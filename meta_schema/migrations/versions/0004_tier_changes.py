"""Tier changes: a user's move to another tier, whose progress lives on their sessions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 14:38:51

Autogenerate's output, checked by hand: a new table, its CHECK from the enum, and a partial
unique index that allows one unfinished change per user.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tier_changes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("from_tier", sa.Text(), nullable=False),
        sa.Column("to_tier", sa.Text(), nullable=False),
        sa.Column("to_org_id", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("sessions_total", sa.Integer(), nullable=False),
        sa.Column("sessions_moved", sa.Integer(), nullable=False),
        sa.Column("sessions_updated", sa.Integer(), nullable=False),
        sa.Column("transfer_requests", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'finished', 'failed', 'superseded')",
            name=op.f("ck_tier_changes_status"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_tier_changes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tier_changes")),
    )
    op.create_index(op.f("ix_tier_changes_user_id"), "tier_changes", ["user_id"], unique=False)
    op.create_index(
        "uq_tier_changes_unfinished_user",
        "tier_changes",
        ["user_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('running', 'failed')"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_tier_changes_unfinished_user",
        table_name="tier_changes",
        postgresql_where=sa.text("status IN ('running', 'failed')"),
    )
    op.drop_index(op.f("ix_tier_changes_user_id"), table_name="tier_changes")
    op.drop_table("tier_changes")
