"""Reshapes `fleet_migrations` and `fleet_migration_results` for fleet migrations: `up` and
`down` SQL with the checksum a dry run tested, the target, baseline and rollout, and per session
its wave, timings, fingerprint and the dry run's branch. Nothing wrote these tables before, so
any rows are dropped rather than converted.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 21:09:34.306403
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # noqa: F401 - in case autogenerate renders a SQLModel type
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_MIGRATION_STATUSES = (
    "pending",
    "canary",
    "rolling",
    "finished",
    "halted",
    "cancelled",
    "rolling_back",
    "rolled_back",
)
_RESULT_STATUSES = (
    "pending",
    "running",
    "applied",
    "skipped",
    "failed",
    "tested",
    "cancelled",
    "rolled_back",
    "not_rolled_back",
)


def _statuses(table: str, values: Sequence[str]) -> None:
    name = op.f(f"ck_{table}_status")
    op.drop_constraint(name, table, type_="check")
    listed = ", ".join(f"'{value}'" for value in values)
    op.create_check_constraint(name, table, f"status IN ({listed})")


def upgrade() -> None:
    op.execute("DELETE FROM fleet_migrations")  # results go with them (ON DELETE CASCADE)
    _statuses("fleet_migrations", _MIGRATION_STATUSES)
    _statuses("fleet_migration_results", _RESULT_STATUSES)
    op.add_column("fleet_migration_results", sa.Column("wave", sa.Integer(), nullable=False))
    op.add_column("fleet_migration_results", sa.Column("branch_id", sa.Uuid(), nullable=True))
    op.add_column("fleet_migration_results", sa.Column("fingerprint", sa.Text(), nullable=True))
    op.add_column("fleet_migration_results", sa.Column("attempts", sa.Integer(), nullable=False))
    op.add_column("fleet_migration_results", sa.Column("runner", sa.Text(), nullable=True))
    op.add_column(
        "fleet_migration_results", sa.Column("checkpoint_ms", sa.Integer(), nullable=True)
    )
    op.add_column("fleet_migration_results", sa.Column("apply_ms", sa.Integer(), nullable=True))
    op.create_index(
        op.f("ix_fleet_migration_results_fleet_migration_id_wave_status"),
        "fleet_migration_results",
        ["fleet_migration_id", "wave", "status"],
        unique=False,
    )
    op.add_column(
        "fleet_migrations",
        sa.Column("dry_run", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column("fleet_migrations", sa.Column("up_sql", sa.Text(), nullable=False))
    op.add_column("fleet_migrations", sa.Column("down_sql", sa.Text(), nullable=True))
    op.add_column("fleet_migrations", sa.Column("checksum", sa.Text(), nullable=False))
    op.add_column(
        "fleet_migrations",
        sa.Column("target", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    )
    op.add_column(
        "fleet_migrations",
        sa.Column("baseline", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column(
        "fleet_migrations",
        sa.Column("rollout", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    )
    op.add_column("fleet_migrations", sa.Column("tested_by", sa.Uuid(), nullable=True))
    op.add_column(
        "fleet_migrations",
        sa.Column("failures_accepted", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("fleet_migrations", sa.Column("request_id", sa.Text(), nullable=True))
    op.add_column(
        "fleet_migrations",
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.drop_constraint(op.f("uq_fleet_migrations_name"), "fleet_migrations", type_="unique")
    op.create_index(
        "uq_fleet_migrations_name",
        "fleet_migrations",
        ["name"],
        unique=True,
        postgresql_where=sa.text("NOT dry_run"),
    )
    op.create_foreign_key(
        op.f("fk_fleet_migrations_tested_by_fleet_migrations"),
        "fleet_migrations",
        "fleet_migrations",
        ["tested_by"],
        ["id"],
    )
    op.drop_column("fleet_migrations", "sql")


def downgrade() -> None:
    op.execute("DELETE FROM fleet_migrations")
    _statuses("fleet_migrations", ("pending", "running", "finished", "failed", "cancelled"))
    _statuses("fleet_migration_results", ("pending", "running", "applied", "failed", "skipped"))
    op.add_column(
        "fleet_migrations", sa.Column("sql", sa.TEXT(), autoincrement=False, nullable=False)
    )
    op.drop_constraint(
        op.f("fk_fleet_migrations_tested_by_fleet_migrations"),
        "fleet_migrations",
        type_="foreignkey",
    )
    op.drop_index(
        "uq_fleet_migrations_name",
        table_name="fleet_migrations",
        postgresql_where=sa.text("NOT dry_run"),
    )
    op.create_unique_constraint(
        op.f("uq_fleet_migrations_name"),
        "fleet_migrations",
        ["name"],
        postgresql_nulls_not_distinct=False,
    )
    op.drop_column("fleet_migrations", "updated_at")
    op.drop_column("fleet_migrations", "request_id")
    op.drop_column("fleet_migrations", "failures_accepted")
    op.drop_column("fleet_migrations", "tested_by")
    op.drop_column("fleet_migrations", "rollout")
    op.drop_column("fleet_migrations", "baseline")
    op.drop_column("fleet_migrations", "target")
    op.drop_column("fleet_migrations", "checksum")
    op.drop_column("fleet_migrations", "down_sql")
    op.drop_column("fleet_migrations", "up_sql")
    op.drop_column("fleet_migrations", "dry_run")
    op.drop_index(
        op.f("ix_fleet_migration_results_fleet_migration_id_wave_status"),
        table_name="fleet_migration_results",
    )
    op.drop_column("fleet_migration_results", "apply_ms")
    op.drop_column("fleet_migration_results", "checkpoint_ms")
    op.drop_column("fleet_migration_results", "runner")
    op.drop_column("fleet_migration_results", "attempts")
    op.drop_column("fleet_migration_results", "fingerprint")
    op.drop_column("fleet_migration_results", "branch_id")
    op.drop_column("fleet_migration_results", "wave")
