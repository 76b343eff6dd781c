"""Fleet migrations on the wire: the request that starts one (its SQL, targets and rollout),
and the views of a migration and of its run on one session."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from ._api import Body, Boolean, Text, WholeNumber, _number
from ._enums import FleetMigrationResultStatus, FleetMigrationStatus

MAX_MIGRATION_SQL = 1_000_000
MAX_MIGRATION_CONCURRENCY = 64
MAX_TARGET_IDS = 10_000
MIGRATION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"
#: Statuses after which nothing happens unless someone resumes or rolls back.
TERMINAL_MIGRATION_STATUSES = frozenset(
    {
        FleetMigrationStatus.FINISHED,
        FleetMigrationStatus.HALTED,
        FleetMigrationStatus.CANCELLED,
        FleetMigrationStatus.ROLLED_BACK,
    }
)
_PERCENT = re.compile(r"^(\d{1,3}(?:\.\d+)?)%$")


def _share(value: object) -> object:
    """A count (a whole number ≥ 0) or a percentage ("5%", up to "100%")."""
    if isinstance(value, bool):
        raise ValueError('must be a whole number or a percentage such as "5%"')  # noqa: TRY004
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str) and (match := _PERCENT.match(value.strip())):
        if float(match.group(1)) > 100:  # noqa: PLR2004 - a percentage
            raise ValueError("must be at most 100%")
        return value.strip()
    raise ValueError('must be a whole number or a percentage such as "5%"')


def _sql(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _positive_share(value: object) -> object:
    checked = _share(value)
    if checked == 0 or (isinstance(checked, str) and not float(checked.rstrip("%"))):
        raise ValueError("must be at least 1 (or more than 0%)")
    return checked


Share = Annotated[int | str, BeforeValidator(_share)]
PositiveShare = Annotated[int | str, BeforeValidator(_positive_share)]
Percent = Annotated[float, BeforeValidator(_number)]
MigrationSql = Annotated[Text, AfterValidator(_sql)]


def share_of(share: int | str, total: int) -> int:
    """How many of `total` a `Share` is: a count (at most `total`), or a percentage rounded
    up (5% of 10 is 1, not 0: a canary asked for is never empty)."""
    if isinstance(share, int):
        return min(share, total)
    percent = float(share.rstrip("%"))
    return min(total, -(-int(percent * total) // 100) if percent else 0)


class MigrationTarget(Body):
    """Whom a migration targets: every session (the default), or the sessions of these tiers,
    of these users, or these sessions (one kind at a time)."""

    all: Boolean | None = None
    tiers: list[Annotated[Text, Field(max_length=32)]] | None = Field(
        default=None, min_length=1, max_length=100
    )
    user_ids: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=MAX_TARGET_IDS)
    session_ids: list[uuid.UUID] | None = Field(
        default=None, min_length=1, max_length=MAX_TARGET_IDS
    )

    def kinds(self) -> list[str]:
        return [
            name for name in ("tiers", "user_ids", "session_ids") if getattr(self, name) is not None
        ] + (["all"] if self.all else [])


class MigrationRollout(Body):
    """How a migration rolls out: first `canary` sessions (a count or a percentage), then the
    rest in waves of `wave_size` (all the rest in one wave when unset), `concurrency`
    sessions at a time. It halts once `halt_after_failures` sessions failed, or once
    `halt_failure_percent` of the sessions done so far failed; unset, that rule is off."""

    canary: Share = 0
    concurrency: WholeNumber = Field(default=4, ge=1, le=MAX_MIGRATION_CONCURRENCY)
    wave_size: PositiveShare | None = None
    halt_after_failures: WholeNumber | None = Field(default=1, ge=1)
    halt_failure_percent: Percent | None = Field(default=None, ge=0, le=100)


class CreateMigration(Body):
    name: Text = Field(
        pattern=MIGRATION_NAME_PATTERN,
        description="Unique among migrations (dry runs of a name may be many).",
    )
    up: MigrationSql = Field(
        max_length=MAX_MIGRATION_SQL,
        description="One or more statements, applied in one transaction (statements that "
        "cannot run in one, such as CREATE INDEX CONCURRENTLY, one by one).",
    )
    down: MigrationSql | None = Field(
        default=None,
        max_length=MAX_MIGRATION_SQL,
        description="Undoes `up`: what a rollback runs (without it, a rollback restores the "
        "checkpoint taken before the migration, where nothing was written after it).",
    )
    target: MigrationTarget = Field(default_factory=lambda: MigrationTarget(all=True))
    baseline: Boolean = Field(
        default=False, description="Sessions created later take the migration too."
    )
    rollout: MigrationRollout = Field(default_factory=MigrationRollout)
    dry_run: Boolean = Field(
        default=False,
        description="Applies `up` on a short-lived branch of each target and deletes it; "
        "the live databases are untouched.",
    )
    tested_by: uuid.UUID | None = Field(
        default=None,
        description="A finished dry run of this very SQL: the migration is refused unless its "
        "`up` is the one that dry run tested, with no failure.",
    )


class ResumeMigration(Body):
    continue_: Boolean = Field(
        default=False,
        alias="continue",
        description="Roll on past the failures that halted the migration (the halt rule then "
        "counts only later ones).",
    )


class MigrationCounts(BaseModel):
    pending: int = 0
    running: int = 0
    applied: int = 0
    skipped: int = 0
    failed: int = 0
    tested: int = 0
    cancelled: int = 0
    rolled_back: int = 0
    not_rolled_back: int = 0


class FleetMigrationView(BaseModel):
    """A fleet migration, its rollout and how many of its sessions are where."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    name: str
    status: FleetMigrationStatus
    dry_run: bool
    baseline: bool
    checksum: str
    has_down: bool
    target: dict[str, Any]
    rollout: dict[str, Any]
    tested_by: uuid.UUID | None
    total: int
    counts: MigrationCounts
    error: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class FleetMigrationResultView(BaseModel):
    """The migration on one session."""

    model_config = ConfigDict(frozen=True)

    session_id: uuid.UUID
    status: FleetMigrationResultStatus
    wave: int
    canary: bool
    checkpoint_id: uuid.UUID | None
    error: str | None
    attempts: int
    checkpoint_ms: int | None
    apply_ms: int | None
    started_at: datetime | None
    finished_at: datetime | None


class FleetMigrationList(BaseModel):
    migrations: list[FleetMigrationView]


class FleetMigrationResultList(BaseModel):
    results: list[FleetMigrationResultView]
