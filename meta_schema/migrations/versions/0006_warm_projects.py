"""Adds `warm_projects`: projects made ahead of any session, which session creates take whole
(the warm pool).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 01:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "warm_projects",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("root_checkpoint_id", sa.Uuid(), nullable=False),
        sa.Column("pool", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("org_id", sa.Text(), nullable=True),
        sa.Column("ready", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("project_id", sa.Text(), nullable=True),
        sa.Column("live_branch_id", sa.Text(), nullable=True),
        sa.Column("endpoint_id", sa.Text(), nullable=True),
        sa.Column("encrypted_connection_secret", sa.LargeBinary(), nullable=True),
        sa.Column("snapshot_id", sa.Text(), nullable=True),
        sa.Column("source_branch_id", sa.Text(), nullable=True),
        sa.Column("lsn", sa.Text(), nullable=True),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_warm_projects")),
        sa.UniqueConstraint("project_id", name=op.f("uq_warm_projects_project_id")),
    )
    op.create_index(
        op.f("ix_warm_projects_pool_fingerprint_ready_created_at"),
        "warm_projects",
        ["pool", "fingerprint", "ready", "created_at"],
    )


def downgrade() -> None:
    op.drop_table("warm_projects")
