"""Drops two columns nothing reads or writes: `users.external_id` (idempotent user creation
was never built on it) and `checkpoints.expires_at` (retention counts checkpoints per tier).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 20:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f("uq_users_external_id"), "users", type_="unique")
    op.drop_column("users", "external_id")
    op.drop_column("checkpoints", "expires_at")


def downgrade() -> None:
    op.add_column(
        "checkpoints",
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column("users", sa.Column("external_id", sa.Text(), nullable=True))
    op.create_unique_constraint(op.f("uq_users_external_id"), "users", ["external_id"])
