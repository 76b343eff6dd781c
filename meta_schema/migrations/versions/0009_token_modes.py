"""Adds `api_tokens.mode` (read_only, read_write, full): what a token's holder may do.
Session tokens issued before keep today's behaviour (`read_write`); user and admin tokens are
`full`. Adds `events.token_name` and `events.agent_context` (the agent's tool, tool call id,
model and prompt excerpt, when it said them).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 21:33:54.296380
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # noqa: F401 - in case autogenerate renders a SQLModel type
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_tokens", sa.Column("mode", sa.Text(), server_default="read_write", nullable=False)
    )
    op.execute("UPDATE api_tokens SET mode = 'full' WHERE scope <> 'session'")
    op.create_check_constraint(
        op.f("ck_api_tokens_mode"), "api_tokens", "mode IN ('read_only', 'read_write', 'full')"
    )
    op.add_column("events", sa.Column("token_name", sa.Text(), nullable=True))
    op.add_column(
        "events",
        sa.Column(
            "agent_context",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("events", "agent_context")
    op.drop_column("events", "token_name")
    op.drop_column("api_tokens", "mode")
