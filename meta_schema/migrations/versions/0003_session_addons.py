"""Session add-ons: Neon Auth and the Data API per agent session (intent, outcome and the
encrypted keys Neon hands out once).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 13:19:20

Autogenerate's output, checked by hand: a new table only, with its CHECKs from the enums.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_addons",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column(
            "settings",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("encrypted_secret", sa.LargeBinary(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
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
        sa.CheckConstraint("kind IN ('auth', 'data_api')", name=op.f("ck_session_addons_kind")),
        sa.CheckConstraint(
            "status IN ('enabling', 'enabled', 'disabling', 'disabled', 'failed')",
            name=op.f("ck_session_addons_status"),
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["agent_sessions.id"],
            name=op.f("fk_session_addons_session_id_agent_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_addons")),
        sa.UniqueConstraint("session_id", "kind", name=op.f("uq_session_addons_session_id_kind")),
    )


def downgrade() -> None:
    op.drop_table("session_addons")
