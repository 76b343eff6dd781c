"""The meta tables' enums: the API's own (`agentdb.wire`), stored as checked text."""

from agentdb.wire._enums import (
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
    TokenScope,
)

__all__ = [
    "ActorScope",
    "AddonKind",
    "AddonStatus",
    "BranchKind",
    "BranchStatus",
    "CheckpointStatus",
    "FleetMigrationResultStatus",
    "FleetMigrationStatus",
    "SessionStatus",
    "TierChangeStatus",
    "TokenScope",
]
