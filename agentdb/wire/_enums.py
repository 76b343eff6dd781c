"""The closed sets of values the API speaks and the meta tables store (as checked text, see
`meta_schema.EnumText`).

Adding a value needs a migration that replaces the column's CHECK constraint
(`ck_<table>_<column>`); the tests compare every CHECK with these enums.
"""

from __future__ import annotations

from enum import StrEnum


class TokenScope(StrEnum):
    """What an API token reaches: everything, one user's sessions, or one session."""

    ADMIN = "admin"
    USER = "user"
    SESSION = "session"


#: How each scope's tokens begin: a client tells a session token from its text alone.
SCOPE_PREFIXES = {
    TokenScope.ADMIN: "adb_admin_",
    TokenScope.USER: "adb_user_",
    TokenScope.SESSION: "adb_sess_",
}


class ActorScope(StrEnum):
    """Who did something recorded in `events`: a token of some scope, or agentdb itself."""

    ADMIN = "admin"
    USER = "user"
    SESSION = "session"
    SYSTEM = "system"


class SessionStatus(StrEnum):
    """An agent session's state; all but `ready`, `deleted` and `failed` mean a job is running."""

    PROVISIONING = "provisioning"
    READY = "ready"
    CHECKPOINTING = "checkpointing"
    RESTORING = "restoring"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


class CheckpointStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"
    DELETING = "deleting"
    DELETED = "deleted"


class BranchKind(StrEnum):
    """`dev`: a writable copy to try things on; `preview`: a look at an old checkpoint;
    `replaced`: a live branch a restore replaced (Neon's "(old)" branch), kept while a
    retained checkpoint's snapshot was taken from it, then deleted."""

    DEV = "dev"
    PREVIEW = "preview"
    REPLACED = "replaced"


class BranchStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"
    DELETING = "deleting"
    DELETED = "deleted"


class TokenMode(StrEnum):
    """What a token's holder may do: `read_only` reads (its SQL runs in a read-only
    transaction that is always rolled back, one statement per call), `read_write` reads and
    writes the session's data, checkpoints, restores and branches (a session token's default),
    `full` also deletes checkpoints and turns add-ons off. User and admin tokens are `full`."""

    READ_ONLY = "read_only"
    READ_WRITE = "read_write"
    FULL = "full"

    def allows(self, needed: TokenMode) -> bool:
        order = (TokenMode.READ_ONLY, TokenMode.READ_WRITE, TokenMode.FULL)
        return order.index(self) >= order.index(needed)


class FleetMigrationStatus(StrEnum):
    """A fleet migration's lifecycle: `pending` until its targets are listed, `canary` while
    its first sessions take it, `rolling` through its waves, then `finished`, `halted` (its
    halt rule tripped: `resume` goes on) or `cancelled`; `rolling_back` to `rolled_back`."""

    PENDING = "pending"
    CANARY = "canary"
    ROLLING = "rolling"
    FINISHED = "finished"
    HALTED = "halted"
    CANCELLED = "cancelled"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


class FleetMigrationResultStatus(StrEnum):
    """One session's outcome within a fleet migration. `skipped`: the session already carried
    the migration, or was deleted; `tested`: a dry run applied it on a branch;
    `not_rolled_back`: a rollback left it (written after the migration, with no `down`)."""

    PENDING = "pending"
    RUNNING = "running"
    APPLIED = "applied"
    SKIPPED = "skipped"
    FAILED = "failed"
    TESTED = "tested"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"
    NOT_ROLLED_BACK = "not_rolled_back"


class AddonKind(StrEnum):
    """A per-session add-on of the control plane: Neon Auth, or the Data API (REST over the
    session's database, with Neon Auth's JWTs)."""

    AUTH = "auth"
    DATA_API = "data_api"


class AddonStatus(StrEnum):
    """`enabling` and `disabling` are intents written before the control-plane call."""

    ENABLING = "enabling"
    ENABLED = "enabled"
    DISABLING = "disabling"
    DISABLED = "disabled"
    FAILED = "failed"


class TierChangeStatus(StrEnum):
    """A user's move to another tier: `running` until every session is in the tier's
    organization with its limits, `failed` when a step failed (retried; what moved is
    recorded), `superseded` when a newer change for the same user replaced it."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    SUPERSEDED = "superseded"
