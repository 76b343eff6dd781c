"""The meta database's tables and alembic migrations (users, agent sessions, checkpoints)."""

from meta_schema._migrate import alembic_config, database_url, metadata, upgrade
from meta_schema.enums import (
    ActorScope,
    BranchKind,
    BranchStatus,
    CheckpointStatus,
    FleetMigrationResultStatus,
    FleetMigrationStatus,
    SessionStatus,
    TokenScope,
)
from meta_schema.tables import (
    AgentSession,
    AgentSessionPublic,
    ApiToken,
    ApiTokenPublic,
    Branch,
    BranchPublic,
    Checkpoint,
    Event,
    FleetMigration,
    FleetMigrationResult,
    UsageSample,
    User,
)

__all__ = [
    "ActorScope",
    "AgentSession",
    "AgentSessionPublic",
    "ApiToken",
    "ApiTokenPublic",
    "Branch",
    "BranchKind",
    "BranchPublic",
    "BranchStatus",
    "Checkpoint",
    "CheckpointStatus",
    "Event",
    "FleetMigration",
    "FleetMigrationResult",
    "FleetMigrationResultStatus",
    "FleetMigrationStatus",
    "SessionStatus",
    "TokenScope",
    "UsageSample",
    "User",
    "alembic_config",
    "database_url",
    "metadata",
    "upgrade",
]
