"""Fleet migrations: one schema change rolled across many sessions' databases, each session
checkpointed first, in a canary and then waves, halted by a failure rule, resumable, and
reversible.

The rows are the state. `create` records the migration (`pending`); the `fleet_migrations` job
(one process at a time across replicas: the job runner's advisory lock) lists its targets as
result rows, the canary as wave 0 and the rest in waves 1, 2, ..., and works through them,
`concurrency` sessions at a time. Per session, under the session's lock: a checkpoint labelled
"before migration <name>", then `up` in one transaction together with a marker row in the
session's own database (`agentdb.fleet_migrations`), then the outcome on the result row. The
marker is what makes a crash safe: a session whose `up` committed but whose outcome was never
recorded carries the marker, and the next run records it as applied instead of applying it
again. SQL that cannot run in a transaction (`CREATE INDEX CONCURRENTLY`) runs one statement at
a time; if one fails, the checkpoint is restored.

Everything runs as the session's own role, over its own connection string: never as a
superuser, so a migration can do in a session's database exactly what its owner can.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
import sqlparse
import structlog
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql
from pydantic import JsonValue
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.wire import (
    TERMINAL_MIGRATION_STATUSES,
    CreateMigration,
    FleetMigrationResultView,
    FleetMigrationView,
    MigrationCounts,
    share_of,
)
from meta_schema import (
    AgentSession,
    Event,
    FleetMigration,
    FleetMigrationResult,
    FleetMigrationResultStatus,
    FleetMigrationStatus,
    SessionStatus,
    User,
)

from ._common import (
    SYSTEM,
    Actor,
    Clock,
    SessionFactory,
    SessionLocks,
    check_limit,
    describe,
    event,
    system_clock,
)
from ._errors import AlreadyExists, Conflict, InvalidInput, NotFound, ServiceError
from ._secrets import Secrets
from .branches import BranchService
from .checkpoints import CheckpointService
from .credentials import merged_options
from .diff import describe_database

log = structlog.get_logger(__name__)

Status = FleetMigrationStatus
Result = FleetMigrationResultStatus

#: Where a session's database records the fleet migrations it carries (its owner's schema:
#: the agent may read it; dropping it only makes a later run apply a migration again).
MARKER_DDL = (
    "CREATE SCHEMA IF NOT EXISTS agentdb;"
    " CREATE TABLE IF NOT EXISTS agentdb.fleet_migrations ("
    " name text PRIMARY KEY, checksum text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)
_MARKER_INSERT = "INSERT INTO agentdb.fleet_migrations (name, checksum) VALUES (%s, %s)"
_MARKER_DELETE = "DELETE FROM agentdb.fleet_migrations WHERE name = %s"
#: A migration waits this long for a lock the agent's own transactions hold, then fails (and
#: can be resumed) rather than queue every later query of the session behind it.
LOCK_TIMEOUT_MS = 10_000
#: How long a session that is busy (a restore or create under way) is waited for.
BUSY_WAIT = timedelta(seconds=60)
#: A dry run's branch is deleted at once; this expiry deletes it if agentdb died first.
DRY_RUN_BRANCH_TTL = timedelta(minutes=15)
CONNECT_TIMEOUT_S = 10
_ACTIVE = (Status.CANARY, Status.ROLLING)
_TRANSACTION_CONTROL = frozenset({"BEGIN", "START", "COMMIT", "END", "ABORT", "PREPARE"})


class MigrationNotFound(NotFound):
    def __init__(self, migration_id: uuid.UUID) -> None:
        super().__init__(f"no fleet migration {migration_id}")
        self.migration_id = migration_id


class _SessionFailed(Exception):  # noqa: N818 - internal: this session's migration failed
    pass


class _Skipped(Exception):  # noqa: N818 - internal: nothing to do on this session
    pass


def checksum(up: str) -> str:
    return hashlib.sha256(up.encode()).hexdigest()


def statements(text: str) -> list[str]:
    """`text` split into its statements (dollar quotes and comments understood)."""
    return [part for part in (s.strip() for s in sqlparse.split(text)) if part.strip(" ;\n\t")]


def _check_sql(field: str, text: str) -> None:
    """Refuses transaction control: the migration's transaction is agentdb's to end."""
    for statement in sqlparse.parse(text):
        first = statement.token_first(skip_cm=True, skip_ws=True)  # type: ignore[no-untyped-call] # sqlparse has no types here
        word = (first.value if first is not None else "").upper()
        rollback_to = word == "ROLLBACK" and " TO " in f" {str(statement).upper()} "
        if word in _TRANSACTION_CONTROL or (word == "ROLLBACK" and not rollback_to):
            raise InvalidInput(
                field,
                f"must not control the transaction ({word} found): agentdb runs the "
                "migration in a transaction of its own",
            )


@dataclass(frozen=True, slots=True)
class _Rule:
    after: int | None
    percent: float | None

    def tripped(self, failed: int, done: int) -> str | None:
        if self.after is not None and failed >= self.after:
            return f"{failed} session(s) failed (the rule halts after {self.after})"
        if self.percent is not None and done and failed * 100 / done >= self.percent:
            return (
                f"{failed} of {done} sessions failed, {failed * 100 / done:.1f}% "
                f"(the rule halts at {self.percent:g}%)"
            )
        return None


class FleetMigrationService:
    """Creates, runs, follows, cancels and rolls back fleet migrations (admin only)."""

    def __init__(
        self,
        sessions: SessionFactory,
        secrets: Secrets,
        *,
        checkpoints: CheckpointService,
        branches: BranchService,
        locks: SessionLocks,
        runner: str = "agentdb",
        statement_timeout: timedelta = timedelta(minutes=10),
        clock: Clock = system_clock,
        kick: Callable[[], None] | None = None,
    ) -> None:
        """`runner` names this process on the rows it works on. `kick` has the
        `fleet_migrations` job run soon (after a create, resume, cancel or rollback)."""
        self._sessions = sessions
        self._secrets = secrets
        self._checkpoints = checkpoints
        self._branches = branches
        self._locks = locks
        self._runner = runner
        self._timeout = statement_timeout
        self._clock = clock
        self._kick = kick or (lambda: None)

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    # --- the API's calls -----------------------------------------------------------------------

    async def create(self, spec: CreateMigration, *, actor: Actor = SYSTEM) -> FleetMigrationView:
        """Records the migration (`pending`) and has the job start it. Raises `InvalidInput`
        (SQL that ends its own transaction, a target of two kinds), `AlreadyExists` (the
        name), `Conflict` (a `tested_by` that did not test this SQL)."""
        _check_sql("up", spec.up)
        if spec.down is not None:
            _check_sql("down", spec.down)
        kinds = spec.target.kinds()
        if len(kinds) != 1:
            raise InvalidInput(
                "target", "must name exactly one of all, tiers, user_ids or session_ids"
            )
        if spec.dry_run and spec.baseline:
            raise InvalidInput("baseline", "a dry run cannot be a baseline")
        digest = checksum(spec.up)
        async with self._db() as db:
            if spec.tested_by is not None:
                await self._check_tested(db, spec.tested_by, digest)
            if not spec.dry_run:
                taken = await db.scalar(
                    sa.select(col(FleetMigration.id)).where(
                        col(FleetMigration.name) == spec.name, ~col(FleetMigration.dry_run)
                    )
                )
                if taken is not None:
                    raise AlreadyExists("name", f"a fleet migration named {spec.name!r} exists")
            now = self._clock()
            row = FleetMigration(
                name=spec.name,
                dry_run=spec.dry_run,
                up_sql=spec.up,
                down_sql=spec.down,
                checksum=digest,
                target=spec.target.model_dump(mode="json", exclude_none=True),
                baseline=spec.baseline,
                rollout=spec.rollout.model_dump(mode="json"),
                tested_by=spec.tested_by,
                created_by=actor.id,
                request_id=actor.request_id,
                created_at=now,
                updated_at=now,
            )
            db.add(row)
            db.add(self._event(actor, row, "fleet_migration.create", phase="requested"))
            try:
                await db.commit()
            except sa.exc.IntegrityError:
                raise AlreadyExists(
                    "name", f"a fleet migration named {spec.name!r} exists"
                ) from None
        log.info("fleet_migration.created", migration_id=str(row.id), name=row.name)
        self._kick()
        return await self.get(row.id)

    async def _check_tested(self, db: AsyncSession, tested_by: uuid.UUID, digest: str) -> None:
        tested = await db.get(FleetMigration, tested_by)
        if tested is None or not tested.dry_run:
            raise InvalidInput("tested_by", f"{tested_by} is not a dry run")
        if tested.checksum != digest:
            raise Conflict(
                f"tested_by: dry run {tested_by} tested other SQL (checksum {tested.checksum}, "
                f"this up is {digest}): run a dry run of this SQL"
            )
        if tested.status != Status.FINISHED:
            raise Conflict(f"tested_by: dry run {tested_by} is {tested.status}, not finished")
        counts = await self._counts(db, tested_by)
        if counts.failed:
            raise Conflict(f"tested_by: dry run {tested_by} failed on {counts.failed} session(s)")

    async def get(self, migration_id: uuid.UUID) -> FleetMigrationView:
        async with self._db() as db:
            row = await db.get(FleetMigration, migration_id, populate_existing=True)
            if row is None:
                raise MigrationNotFound(migration_id)
            return self._view(row, await self._counts(db, migration_id))

    async def list(self, *, limit: int = 50) -> builtins.list[FleetMigrationView]:
        """Newest first."""
        check_limit(limit)
        async with self._db() as db:
            rows = list(
                await db.scalars(
                    sa.select(FleetMigration)
                    .order_by(col(FleetMigration.created_at).desc(), col(FleetMigration.id))
                    .limit(limit)
                )
            )
            return [self._view(row, await self._counts(db, row.id)) for row in rows]

    async def results(
        self,
        migration_id: uuid.UUID,
        *,
        status: FleetMigrationResultStatus | None = None,
        limit: int = 100,
        after: uuid.UUID | None = None,
    ) -> builtins.list[FleetMigrationResultView]:
        """The migration's sessions (ordered by session id, after `after`), of one status."""
        check_limit(limit)
        async with self._db() as db:
            if await db.get(FleetMigration, migration_id) is None:
                raise MigrationNotFound(migration_id)
            query = sa.select(FleetMigrationResult).where(
                col(FleetMigrationResult.fleet_migration_id) == migration_id
            )
            if status is not None:
                query = query.where(col(FleetMigrationResult.status) == status)
            if after is not None:
                query = query.where(col(FleetMigrationResult.session_id) > after)
            rows = await db.scalars(
                query.order_by(col(FleetMigrationResult.session_id)).limit(limit)
            )
            return [
                FleetMigrationResultView(
                    session_id=r.session_id,
                    status=r.status,
                    wave=r.wave,
                    canary=r.wave == 0,
                    checkpoint_id=r.checkpoint_id,
                    error=r.error,
                    attempts=r.attempts,
                    checkpoint_ms=r.checkpoint_ms,
                    apply_ms=r.apply_ms,
                    started_at=r.started_at,
                    finished_at=r.finished_at,
                )
                for r in rows
            ]

    async def resume(
        self, migration_id: uuid.UUID, *, go_on: bool = False, actor: Actor = SYSTEM
    ) -> FleetMigrationView:
        """Goes on with a halted migration. `go_on`: roll on past the failures so far (the
        halt rule counts only later ones); without it, the failed sessions are tried again
        (their data is as it was: a failed `up` changed nothing)."""
        async with self._db() as db:
            row = await self._locked(db, migration_id)
            if row.status not in (Status.HALTED, *_ACTIVE):
                raise Conflict(
                    f"fleet migration {migration_id} is {row.status}: only a halted one resumes"
                )
            counts = await self._counts(db, migration_id)
            if go_on:
                row.failures_accepted = counts.failed
            else:
                await db.execute(
                    sa.update(FleetMigrationResult)
                    .where(
                        col(FleetMigrationResult.fleet_migration_id) == migration_id,
                        col(FleetMigrationResult.status) == Result.FAILED,
                    )
                    .values(status=Result.PENDING, error=None)
                )
            canary_left = await db.scalar(
                sa.select(sa.func.count())
                .select_from(FleetMigrationResult)
                .where(
                    col(FleetMigrationResult.fleet_migration_id) == migration_id,
                    col(FleetMigrationResult.wave) == 0,
                    col(FleetMigrationResult.status) == Result.PENDING,
                )
            )
            row.status = Status.CANARY if canary_left else Status.ROLLING
            row.error = None
            row.finished_at = None
            row.updated_at = self._clock()
            db.add(
                self._event(actor, row, "fleet_migration.resume", phase="requested", go_on=go_on)
            )
            await db.commit()
        self._kick()
        return await self.get(migration_id)

    async def cancel(self, migration_id: uuid.UUID, *, actor: Actor = SYSTEM) -> FleetMigrationView:
        """Stops it: sessions not yet started are left as they are (`cancelled`); those under
        way finish. What was applied stays (roll it back to undo it)."""
        async with self._db() as db:
            row = await self._locked(db, migration_id)
            if row.status not in (Status.PENDING, Status.HALTED, *_ACTIVE):
                raise Conflict(f"fleet migration {migration_id} is {row.status}: nothing to cancel")
            await db.execute(
                sa.update(FleetMigrationResult)
                .where(
                    col(FleetMigrationResult.fleet_migration_id) == migration_id,
                    col(FleetMigrationResult.status) == Result.PENDING,
                )
                .values(status=Result.CANCELLED, finished_at=self._clock())
            )
            row.status = Status.CANCELLED
            row.finished_at = row.updated_at = self._clock()
            db.add(self._event(actor, row, "fleet_migration.cancel", phase="succeeded"))
            await db.commit()
        self._kick()
        return await self.get(migration_id)

    async def rollback(
        self, migration_id: uuid.UUID, *, actor: Actor = SYSTEM
    ) -> FleetMigrationView:
        """Undoes it on every session that took it: runs `down` where the migration has one;
        otherwise restores the checkpoint taken before it, only where nothing was written after
        the migration (the others are listed `not_rolled_back`). Runs in the background."""
        async with self._db() as db:
            row = await self._locked(db, migration_id)
            if row.dry_run:
                raise Conflict(f"fleet migration {migration_id} is a dry run: nothing to roll back")
            if row.status not in (
                Status.FINISHED,
                Status.HALTED,
                Status.CANCELLED,
                Status.ROLLING_BACK,
            ):
                raise Conflict(
                    f"fleet migration {migration_id} is {row.status}: cancel it or let it "
                    "finish before rolling it back"
                )
            row.status = Status.ROLLING_BACK
            row.finished_at = None
            row.updated_at = self._clock()
            db.add(self._event(actor, row, "fleet_migration.rollback", phase="requested"))
            await db.commit()
        self._kick()
        return await self.get(migration_id)

    async def _locked(self, db: AsyncSession, migration_id: uuid.UUID) -> FleetMigration:
        row = await db.get(FleetMigration, migration_id, with_for_update=True)
        if row is None:
            raise MigrationNotFound(migration_id)
        return row

    # --- the job -------------------------------------------------------------------------------

    async def run_pending(self) -> int:
        """The `fleet_migrations` job: advances every migration with work left (pending,
        canary, rolling, rolling back, and baselines with new sessions); returns how many
        sessions it finished."""
        async with self._db() as db:
            ids = (
                await db.scalars(
                    sa.select(col(FleetMigration.id))
                    .where(
                        col(FleetMigration.status).in_(
                            [Status.PENDING, *_ACTIVE, Status.ROLLING_BACK]
                        )
                        | (
                            col(FleetMigration.baseline)
                            & (col(FleetMigration.status) == Status.FINISHED)
                        )
                    )
                    .order_by(col(FleetMigration.created_at))
                )
            ).all()
        done = 0
        failures: builtins.list[str] = []
        for migration_id in ids:
            try:
                done += await self.advance(migration_id)
            except Exception as error:  # noqa: BLE001 - recorded on the migration, raised below
                failures.append(f"{migration_id}: {describe(error)}")
                await self._note_failure(migration_id, error)
        if failures:
            # The job's failure (its run records and metrics count it); the others went on.
            raise RuntimeError("fleet migrations failed to advance: " + "; ".join(failures))
        return done

    async def _note_failure(self, migration_id: uuid.UUID, error: Exception) -> None:
        """Shows a run that failed on the migration itself (its `error`), so a migration the
        job cannot advance does not look quietly stuck; the next run tries again."""
        log.warning(
            "fleet_migration.advance_failed", migration_id=str(migration_id), error=describe(error)
        )
        try:
            async with self._db() as db:
                await db.execute(
                    sa.update(FleetMigration)
                    .where(col(FleetMigration.id) == migration_id)
                    .values(
                        error=f"the last run failed (retried): {describe(error)}"[:2000],
                        updated_at=self._clock(),
                    )
                )
                await db.commit()
        except sa.exc.SQLAlchemyError:
            log.warning("fleet_migration.error_not_recorded", migration_id=str(migration_id))

    async def advance(self, migration_id: uuid.UUID) -> int:
        """Works the migration as far as it goes now; returns how many sessions it finished.
        Only one process may run it at a time (the job's lock): rows another run left
        `running` are taken to have died with it."""
        async with self._db() as db:
            row = await db.get(FleetMigration, migration_id, populate_existing=True)
            if row is None:
                raise MigrationNotFound(migration_id)
        await self._reset_abandoned(migration_id)
        if row.status == Status.PENDING:
            row = await self._start(row)
        done = 0
        if row.status in _ACTIVE:
            done += await self._roll(row)
        elif row.status == Status.FINISHED and row.baseline:
            # Sessions created since (those a create did not reach): the same per-session
            # steps as any wave.
            await self._list_targets(row, wave=None)
            done += await self._run_wave(row, None)
        elif row.status == Status.ROLLING_BACK:
            done += await self._roll_back(row)
        return done

    async def _reset_abandoned(self, migration_id: uuid.UUID) -> None:
        async with self._db() as db:
            await db.execute(
                sa.update(FleetMigrationResult)
                .where(
                    col(FleetMigrationResult.fleet_migration_id) == migration_id,
                    col(FleetMigrationResult.status) == Result.RUNNING,
                )
                .values(status=Result.PENDING)
            )
            await db.commit()

    def _targets(self, row: FleetMigration, *, since: bool) -> sa.Select[tuple[uuid.UUID]]:
        query = sa.select(col(AgentSession.id)).where(
            col(AgentSession.status).not_in([SessionStatus.DELETED, SessionStatus.DELETING])
        )
        target = row.target
        if "tiers" in target:
            query = query.where(col(AgentSession.tier).in_(target["tiers"]))
        elif "user_ids" in target:
            query = query.where(
                col(AgentSession.user_id).in_([uuid.UUID(u) for u in target["user_ids"]])
            )
        elif "session_ids" in target:
            query = query.where(
                col(AgentSession.id).in_([uuid.UUID(s) for s in target["session_ids"]])
            )
        if since:
            query = query.where(col(AgentSession.created_at) <= row.created_at)
        return query.where(
            col(AgentSession.user_id).in_(
                sa.select(col(User.id)).where(col(User.disabled_at).is_(None))
            )
        )

    async def _start(self, row: FleetMigration) -> FleetMigration:
        """Lists the targets (the canary first, as wave 0) and moves to `canary` or
        `rolling`."""
        total = await self._list_targets(row, wave=1)
        rollout = row.rollout
        canary = share_of(rollout.get("canary", 0), total)
        size = rollout.get("wave_size")
        async with self._db() as db:
            ids = list(
                await db.scalars(
                    sa.select(col(FleetMigrationResult.id))
                    .where(col(FleetMigrationResult.fleet_migration_id) == row.id)
                    # Oldest sessions first: a platform's canary is its longest-lived tenants.
                    .join(
                        AgentSession, col(AgentSession.id) == col(FleetMigrationResult.session_id)
                    )
                    .order_by(col(AgentSession.created_at), col(AgentSession.id))
                )
            )
            waves: dict[int, builtins.list[uuid.UUID]] = {}
            rest = ids[canary:]
            per_wave = max(1, share_of(size, len(rest))) if size is not None else max(1, len(rest))
            if canary:
                waves[0] = ids[:canary]
            for index in range(0, len(rest), per_wave):
                waves[1 + index // per_wave] = rest[index : index + per_wave]
            for wave, members in waves.items():
                if wave != 1:
                    await db.execute(
                        sa.update(FleetMigrationResult)
                        .where(col(FleetMigrationResult.id).in_(members))
                        .values(wave=wave)
                    )
            locked = await self._locked(db, row.id)
            if locked.status == Status.PENDING:
                locked.status = Status.CANARY if canary else Status.ROLLING
                locked.started_at = locked.updated_at = self._clock()
                db.add(
                    self._event(
                        SYSTEM,
                        locked,
                        "fleet_migration.start",
                        phase="succeeded",
                        sessions=total,
                        canary=canary,
                        waves=len(waves),
                    )
                )
            await db.commit()
            log.info(
                "fleet_migration.started",
                migration_id=str(row.id),
                sessions=total,
                canary=canary,
                waves=len(waves),
            )
            return locked

    async def _list_targets(self, row: FleetMigration, *, wave: int | None) -> int:
        """Adds a pending result row for each target without one (in `wave`; None: after the
        last one); returns how many rows the migration has."""
        async with self._db() as db:
            if wave is None:
                last = await db.scalar(
                    sa.select(sa.func.max(col(FleetMigrationResult.wave))).where(
                        col(FleetMigrationResult.fleet_migration_id) == row.id
                    )
                )
                wave = (last or 0) + 1
            targets = self._targets(row, since=not row.baseline).subquery()
            insert = pg_insert(FleetMigrationResult).from_select(
                ["id", "fleet_migration_id", "session_id", "wave", "status", "attempts"],
                sa.select(
                    sa.func.gen_random_uuid(),
                    sa.literal(row.id),
                    targets.c.id,
                    sa.literal(wave),
                    sa.literal(Result.PENDING.value),
                    sa.literal(0),
                ),
            )
            await db.execute(insert.on_conflict_do_nothing())
            total = await db.scalar(
                sa.select(sa.func.count())
                .select_from(FleetMigrationResult)
                .where(col(FleetMigrationResult.fleet_migration_id) == row.id)
            )
            await db.commit()
            return total or 0

    async def _roll(self, row: FleetMigration) -> int:
        done = 0
        async with self._db() as db:
            waves = list(
                await db.scalars(
                    sa.select(col(FleetMigrationResult.wave))
                    .where(
                        col(FleetMigrationResult.fleet_migration_id) == row.id,
                        col(FleetMigrationResult.status) == Result.PENDING,
                    )
                    .group_by(col(FleetMigrationResult.wave))
                    .order_by(col(FleetMigrationResult.wave))
                )
            )
        for wave in waves:
            done += await self._run_wave(row, wave)
            status = await self._status(row.id)
            if status not in _ACTIVE:
                return done
            if wave == 0:
                await self._set_status(row.id, Status.CANARY, Status.ROLLING, "canary_done")
        await self._set_status(row.id, None, Status.FINISHED, "finished")
        return done

    async def _status(self, migration_id: uuid.UUID) -> Status:
        async with self._db() as db:
            status = await db.scalar(
                sa.select(col(FleetMigration.status)).where(col(FleetMigration.id) == migration_id)
            )
            if status is None:
                raise MigrationNotFound(migration_id)
            return Status(status)

    async def _set_status(
        self,
        migration_id: uuid.UUID,
        source: Status | None,
        status: Status,
        phase: str,
        error: str | None = None,
        *,
        rule: _Rule | None = None,
    ) -> bool:
        """Moves the migration from `source` (None: either active status) to `status`, if it is
        still there (a cancel meanwhile wins) and, given a halt `rule`, if the rule trips on the
        failures not accepted."""
        sources = list(_ACTIVE) if source is None else [source]
        async with self._db() as db:
            row = await self._locked(db, migration_id)
            if row.status not in sources:
                return False
            if rule is not None:
                counts = await self._counts(db, migration_id)
                failed = counts.failed - row.failures_accepted
                reason = rule.tripped(failed, counts.applied + counts.skipped + failed)
                if reason is None:
                    return False
                error = f"halted: {reason}"
            row.status = status
            row.error = error
            row.updated_at = self._clock()
            if status in TERMINAL_MIGRATION_STATUSES:
                row.finished_at = row.updated_at
            counts = await self._counts(db, migration_id)
            db.add(
                self._event(
                    SYSTEM,
                    row,
                    f"fleet_migration.{phase}",
                    phase="succeeded",
                    error=error,
                    **counts.model_dump(),
                )
            )
            await db.commit()
        log.info("fleet_migration.status", phase=phase, migration_id=str(migration_id), error=error)
        return True

    async def _run_wave(self, row: FleetMigration, wave: int | None) -> int:
        """Works the wave's pending sessions, `concurrency` at a time, until none is left or the
        migration stops being active (halted, cancelled). `wave` None: any pending row."""
        concurrency = int(row.rollout.get("concurrency", 4))
        rule = (
            _Rule(None, None)
            if row.dry_run
            else _Rule(
                row.rollout.get("halt_after_failures"), row.rollout.get("halt_failure_percent")
            )
        )
        done = 0

        async def worker() -> None:
            nonlocal done
            while (claimed := await self._claim(row, wave)) is not None:
                await self._one(row, claimed)
                done += 1
                if wave is not None and (rule.after is not None or rule.percent is not None):
                    await self._check_rule(row.id, rule)

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        return done

    async def _claim(self, row: FleetMigration, wave: int | None) -> FleetMigrationResult | None:
        """The next pending session of `wave`, marked running, while the migration may run."""
        allowed = [*_ACTIVE] if wave is not None else [Status.FINISHED]
        async with self._db() as db:
            pick = (
                sa.select(col(FleetMigrationResult.id))
                .where(
                    col(FleetMigrationResult.fleet_migration_id) == row.id,
                    col(FleetMigrationResult.status) == Result.PENDING,
                )
                .order_by(col(FleetMigrationResult.wave), col(FleetMigrationResult.session_id))
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if wave is not None:
                pick = pick.where(col(FleetMigrationResult.wave) == wave)
            claimed = await db.scalar(
                sa.update(FleetMigrationResult)
                .where(
                    col(FleetMigrationResult.id) == pick.scalar_subquery(),
                    sa.exists().where(
                        col(FleetMigration.id) == row.id, col(FleetMigration.status).in_(allowed)
                    ),
                )
                .values(
                    status=Result.RUNNING,
                    runner=self._runner,
                    attempts=col(FleetMigrationResult.attempts) + 1,
                    started_at=self._clock(),
                    finished_at=None,
                    error=None,
                )
                .returning(FleetMigrationResult)
            )
            await db.commit()
            return claimed

    async def _check_rule(self, migration_id: uuid.UUID, rule: _Rule) -> None:
        """Halts the migration if its rule trips (decided under the migration's row lock, so a
        `resume` that just accepted the failures is never undone by stale counts)."""
        async with self._db() as db:
            counts = await self._counts(db, migration_id)
        if rule.tripped(counts.failed, counts.applied + counts.skipped + counts.failed) is None:
            return  # not even before the accepted failures are taken off
        await self._set_status(migration_id, None, Status.HALTED, "halted", rule=rule)

    # --- one session ---------------------------------------------------------------------------

    async def _one(self, row: FleetMigration, result: FleetMigrationResult) -> None:
        """Runs the migration (or its dry run) on one session and records the outcome; a
        failure of the session's is recorded, not raised."""
        try:
            if row.dry_run:
                outcome = await self._test(row, result)
            else:
                outcome = await self._migrate(row, result)
        except _Skipped as skipped:
            await self._record(row, result, Result.SKIPPED, str(skipped))
        except (_SessionFailed, ServiceError) as failed:
            await self._record(row, result, Result.FAILED, str(failed))
        else:
            await self._record(row, result, outcome, None)

    async def _ready(self, session_id: uuid.UUID) -> AgentSession:
        """The session once it is ready to migrate, waiting out a workflow in flight (up to
        `BUSY_WAIT`). Raises `_Skipped` (deleted) or `_SessionFailed`."""
        deadline = time.monotonic() + BUSY_WAIT.total_seconds()
        while True:
            async with self._db() as db:
                session = await db.get(AgentSession, session_id, populate_existing=True)
            if session is None or session.status in (SessionStatus.DELETED, SessionStatus.DELETING):
                raise _Skipped("the session was deleted")
            if session.status == SessionStatus.READY and session.encrypted_connection_secret:
                return session
            if session.status == SessionStatus.FAILED or time.monotonic() > deadline:
                raise _SessionFailed(f"the session is {session.status}")
            await asyncio.sleep(0.5)

    async def _migrate(self, row: FleetMigration, result: FleetMigrationResult) -> Result:
        session_id = result.session_id
        await self._ready(session_id)
        async with self._locks.hold(session_id):
            session = await self._ready(session_id)
            uri = self._uri(session)
            if result.attempts > 1 and await self._carries(uri, row.name):
                # An earlier run applied it and died before recording so.
                return Result.APPLIED
            started = time.perf_counter()
            checkpoint = await self._checkpoints.create(
                session_id,
                label=f"before migration {row.name}"[:200],
                metadata={
                    "reason": "fleet_migration",
                    "fleet_migration_id": str(row.id),
                    "fleet_migration": row.name,
                },
                actor=SYSTEM,
                reason="fleet_migration",
                held=True,
            )
            await self._note(
                result.id,
                checkpoint_id=checkpoint.id,
                checkpoint_ms=_ms(started),
            )
            started = time.perf_counter()
            try:
                fingerprint = await self._apply(uri, row)
            except _Carried:
                return Result.SKIPPED
            except _NeedsRestore as failed:
                await self._checkpoints.restore(
                    session_id, checkpoint.id, actor=SYSTEM, reason="fleet_migration", held=True
                )
                raise _SessionFailed(
                    f"{failed}; the checkpoint taken before it was restored"
                ) from None
            await self._note(result.id, fingerprint=fingerprint, apply_ms=_ms(started))
        return Result.APPLIED

    async def _test(self, row: FleetMigration, result: FleetMigrationResult) -> Result:
        """A dry run on one session: a branch of its live database, the migration applied
        there exactly as it would be, the branch deleted."""
        await self._ready(result.session_id)
        started = time.perf_counter()
        branch = await self._branches.create(
            result.session_id, name=f"dry run {row.name}"[:200], ttl=DRY_RUN_BRANCH_TTL
        )
        await self._note(result.id, branch_id=branch.id, checkpoint_ms=_ms(started))
        try:
            uri = await self._branches.connection_uri(result.session_id, branch.id)
            started = time.perf_counter()
            try:
                await self._apply(uri, row)
            except _Carried:
                return Result.SKIPPED
            except _NeedsRestore as failed:
                raise _SessionFailed(str(failed)) from None
            await self._note(result.id, apply_ms=_ms(started))
        finally:
            await self._branches.delete(result.session_id, branch.id)
            await self._note(result.id, branch_id=None)
        return Result.TESTED

    def _uri(self, session: AgentSession) -> str:
        assert session.encrypted_connection_secret is not None  # noqa: S101 - checked by _ready
        return self._secrets.decrypt(session.encrypted_connection_secret)

    @asynccontextmanager
    async def _connect(self, uri: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        options = merged_options(
            uri,
            f"-c statement_timeout={int(self._timeout.total_seconds() * 1000)}"
            f" -c lock_timeout={LOCK_TIMEOUT_MS}",
        )
        try:
            conn = await psycopg.AsyncConnection.connect(
                uri,
                autocommit=True,
                options=options,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="agentdb-fleet",
                prepare_threshold=None,
            )
        except psycopg.Error as error:
            raise _SessionFailed(
                f"cannot connect to the session's database: {_reason(error)}"
            ) from None
        try:
            yield conn
        finally:
            await conn.close()

    async def _carries(self, uri: str, name: str) -> bool:
        async with self._connect(uri) as conn:
            return await _carried(conn, name)

    async def _apply(self, uri: str, row: FleetMigration) -> str | None:
        """Applies `up` with its marker: in one transaction, or, for SQL that cannot run in
        one, statement by statement (`_NeedsRestore` if one of those fails). Returns the
        database's fingerprint after it (None when some table is too big to hash). Raises
        `_Carried` if the database already carries the migration, `_SessionFailed` when `up`
        failed and changed nothing."""
        async with self._connect(uri) as conn:
            try:
                if await _carried(conn, row.name):
                    raise _Carried
                async with conn.transaction():
                    await conn.execute(MARKER_DDL)
                    await conn.execute(row.up_sql.encode())
                    await conn.execute(_MARKER_INSERT, (row.name, row.checksum))
            except pg_errors.ActiveSqlTransaction:
                await self._one_by_one(conn, row)
            except psycopg.Error as error:
                raise _SessionFailed(_reason(error)) from None
            if row.down_sql is not None:
                return None  # a rollback runs `down`: no restore needs to know
            try:
                return fingerprint(await describe_database(conn))
            except psycopg.Error:
                return None

    async def _one_by_one(self, conn: psycopg.AsyncConnection[Any], row: FleetMigration) -> None:
        for number, statement in enumerate(statements(row.up_sql), start=1):
            try:
                await conn.execute(statement.encode())
            except psycopg.Error as error:
                raise _NeedsRestore(f"statement {number}: {_reason(error)}") from None
        try:
            await conn.execute(MARKER_DDL)
            await conn.execute(_MARKER_INSERT, (row.name, row.checksum))
        except psycopg.Error as error:
            raise _NeedsRestore(f"recording the migration: {_reason(error)}") from None

    async def _note(self, result_id: uuid.UUID, **values: Any) -> None:  # noqa: ANN401 - columns
        async with self._db() as db:
            await db.execute(
                sa.update(FleetMigrationResult)
                .where(col(FleetMigrationResult.id) == result_id)
                .values(**values)
            )
            await db.commit()

    async def _record(
        self,
        row: FleetMigration,
        result: FleetMigrationResult,
        status: Result,
        error: str | None,
        *,
        action: str | None = None,
    ) -> None:
        """The session's outcome and its event (`action`: by default the apply's or test's)."""
        now = self._clock()
        async with self._db() as db:
            await db.execute(
                sa.update(FleetMigrationResult)
                .where(col(FleetMigrationResult.id) == result.id)
                .values(status=status, error=error, finished_at=now)
            )
            db.add(
                event(
                    SYSTEM,
                    action or ("fleet_migration.test" if row.dry_run else "fleet_migration.apply"),
                    at=now,
                    session_id=result.session_id,
                    target_kind="fleet_migration",
                    target_id=row.id,
                    details={"phase": status.value, "name": row.name, "error": error},
                )
            )
            await db.commit()
        log.info(
            "fleet_migration.session",
            migration_id=str(row.id),
            session_id=str(result.session_id),
            status=status.value,
            error=error,
        )

    # --- rollback ------------------------------------------------------------------------------

    async def _roll_back(self, row: FleetMigration) -> int:
        concurrency = int(row.rollout.get("concurrency", 4))
        done = 0

        async def worker() -> None:
            nonlocal done
            while (result := await self._claim_applied(row.id)) is not None:
                status, error = await self._undo(row, result)
                await self._record(row, result, status, error, action="fleet_migration.rollback")
                done += 1

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        async with self._db() as db:
            counts = await self._counts(db, row.id)
        error = None
        if counts.not_rolled_back:
            error = (
                f"{counts.not_rolled_back} session(s) not rolled back: list them with "
                "status=not_rolled_back"
            )
        await self._set_status(
            row.id, Status.ROLLING_BACK, Status.ROLLED_BACK, "rolled_back", error
        )
        return done

    async def _claim_applied(self, migration_id: uuid.UUID) -> FleetMigrationResult | None:
        async with self._db() as db:
            pick = (
                sa.select(col(FleetMigrationResult.id))
                .where(
                    col(FleetMigrationResult.fleet_migration_id) == migration_id,
                    col(FleetMigrationResult.status) == Result.APPLIED,
                    col(FleetMigrationResult.runner).is_distinct_from(f"undo:{self._runner}"),
                )
                .order_by(col(FleetMigrationResult.session_id))
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            claimed = await db.scalar(
                sa.update(FleetMigrationResult)
                .where(
                    col(FleetMigrationResult.id) == pick.scalar_subquery(),
                    sa.exists().where(
                        col(FleetMigration.id) == migration_id,
                        col(FleetMigration.status) == Status.ROLLING_BACK,
                    ),
                )
                # Still `applied` until undone: a crash leaves it to the next run, which sees
                # from the marker whether the undo happened.
                .values(runner=f"undo:{self._runner}")
                .returning(FleetMigrationResult)
            )
            await db.commit()
            return claimed

    async def _undo(  # noqa: PLR0911 - one answer per way an undo ends
        self, row: FleetMigration, result: FleetMigrationResult
    ) -> tuple[Result, str | None]:
        try:
            await self._ready(result.session_id)
            async with self._locks.hold(result.session_id):
                uri = self._uri(await self._ready(result.session_id))
                async with self._connect(uri) as conn:
                    if not await _carried(conn, row.name):
                        return Result.ROLLED_BACK, None  # undone already (a run that died)
                    if row.down_sql is not None:
                        try:
                            async with conn.transaction():
                                await conn.execute(row.down_sql.encode())
                                await conn.execute(_MARKER_DELETE, (row.name,))
                        except psycopg.Error as error:
                            return Result.NOT_ROLLED_BACK, f"down failed: {_reason(error)}"
                        return Result.ROLLED_BACK, None
                    now = fingerprint(await describe_database(conn))
                if result.checkpoint_id is None or result.fingerprint is None:
                    return (
                        Result.NOT_ROLLED_BACK,
                        (
                            "no down, and no way to tell whether the database was written "
                            "after the migration (a table over the exact-hash size)"
                        ),
                    )
                if now != result.fingerprint:
                    return (
                        Result.NOT_ROLLED_BACK,
                        (
                            "no down, and the database was written after the migration: "
                            f"restoring checkpoint {result.checkpoint_id} would lose those writes"
                        ),
                    )
                await self._checkpoints.restore(
                    result.session_id,
                    result.checkpoint_id,
                    actor=SYSTEM,
                    reason="fleet_migration_rollback",
                    held=True,
                )
                return Result.ROLLED_BACK, None
        except _Skipped as skipped:
            return Result.NOT_ROLLED_BACK, str(skipped)
        except (_SessionFailed, ServiceError) as failed:
            return Result.NOT_ROLLED_BACK, str(failed)

    # --- baselines -----------------------------------------------------------------------------

    async def apply_baseline(self, session_id: uuid.UUID, *, actor: Actor = SYSTEM) -> int:
        """Brings a session just created to the fleet's schema: every baseline migration
        under way or finished that targets it, oldest first, then a checkpoint of the result
        (so its newest checkpoint has the schema). Returns how many it applied; a failure is
        recorded on the migration's result row (and its job tries the session again)."""
        async with self._db() as db:
            rows = list(
                await db.scalars(
                    sa.select(FleetMigration)
                    .where(
                        col(FleetMigration.baseline),
                        ~col(FleetMigration.dry_run),
                        col(FleetMigration.status).in_([*_ACTIVE, Status.FINISHED]),
                    )
                    .order_by(col(FleetMigration.created_at))
                )
            )
        applied = 0
        for row in rows:
            async with self._db() as db:
                wanted = await db.scalar(
                    self._targets(row, since=False).where(col(AgentSession.id) == session_id)
                )
                if wanted is None:
                    continue
                inserted = await db.scalar(
                    pg_insert(FleetMigrationResult)
                    .values(
                        id=uuid.uuid4(),
                        fleet_migration_id=row.id,
                        session_id=session_id,
                        wave=0,
                        status=Result.RUNNING,
                        attempts=1,
                        runner=self._runner,
                        started_at=self._clock(),
                    )
                    .on_conflict_do_nothing()
                    .returning(col(FleetMigrationResult.id))
                )
                await db.commit()
            if inserted is None:
                continue  # the job got there first
            result = FleetMigrationResult(
                id=inserted, fleet_migration_id=row.id, session_id=session_id, attempts=1
            )
            before = await self._head(session_id)
            await self._note(inserted, checkpoint_id=before)
            try:
                session = await self._ready(session_id)
                started = time.perf_counter()
                async with self._locks.hold(session_id):
                    fingerprint_ = await self._apply(self._uri(session), row)
                await self._note(inserted, fingerprint=fingerprint_, apply_ms=_ms(started))
            except _Carried:
                await self._record(row, result, Result.SKIPPED, "already carried")
            except (_SessionFailed, _NeedsRestore, _Skipped, ServiceError) as failed:
                # Left pending for the job, which checkpoints and retries it.
                await self._note(inserted, status=Result.PENDING, error=str(failed))
                log.warning(
                    "fleet_migration.baseline_failed",
                    migration_id=str(row.id),
                    session_id=str(session_id),
                    error=str(failed),
                )
            else:
                await self._record(row, result, Result.APPLIED, None)
                applied += 1
        if applied:
            await self._checkpoints.create(
                session_id,
                label="baseline migrations",
                message=f"{applied} fleet migration(s) applied as the session was created",
                metadata={"reason": "fleet_migration_baseline"},
                actor=actor,
                reason="fleet_migration_baseline",
            )
        return applied

    async def _head(self, session_id: uuid.UUID) -> uuid.UUID | None:
        async with self._db() as db:
            return await db.scalar(
                sa.select(col(AgentSession.head_checkpoint_id)).where(
                    col(AgentSession.id) == session_id
                )
            )

    # --- views ---------------------------------------------------------------------------------

    @staticmethod
    async def _counts(db: AsyncSession, migration_id: uuid.UUID) -> MigrationCounts:
        found = await db.execute(
            sa.select(col(FleetMigrationResult.status), sa.func.count())
            .where(col(FleetMigrationResult.fleet_migration_id) == migration_id)
            .group_by(col(FleetMigrationResult.status))
        )
        return MigrationCounts(**{str(status): int(n) for status, n in found.all()})

    @staticmethod
    def _view(row: FleetMigration, counts: MigrationCounts) -> FleetMigrationView:
        return FleetMigrationView(
            id=row.id,
            name=row.name,
            status=row.status,
            dry_run=row.dry_run,
            baseline=row.baseline,
            checksum=row.checksum,
            has_down=row.down_sql is not None,
            target=row.target,
            rollout=row.rollout,
            tested_by=row.tested_by,
            total=sum(counts.model_dump().values()),
            counts=counts,
            error=row.error,
            created_by=row.created_by,
            created_at=row.created_at,
            updated_at=row.updated_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )

    def _event(
        self,
        actor: Actor,
        row: FleetMigration,
        action: str,
        *,
        phase: str,
        **details: JsonValue,
    ) -> Event:
        return event(
            actor,
            action,
            at=self._clock(),
            session_id=None,
            target_kind="fleet_migration",
            target_id=row.id,
            details={"phase": phase, "name": row.name, "status": row.status.value, **details},
        )


class _Carried(Exception):  # noqa: N818 - internal: the database has the migration already
    pass


class _NeedsRestore(Exception):  # noqa: N818 - internal: a statement outside a transaction failed
    pass


async def _carried(conn: psycopg.AsyncConnection[Any], name: str) -> bool:
    found = await conn.execute("SELECT to_regclass('agentdb.fleet_migrations') IS NOT NULL")
    exists = await found.fetchone()
    if not exists or not exists[0]:
        return False
    found = await conn.execute(
        pg_sql.SQL("SELECT 1 FROM agentdb.fleet_migrations WHERE name = %s"), (name,)
    )
    return await found.fetchone() is not None


def fingerprint(description: Any) -> str | None:  # noqa: ANN401 - a DatabaseDescription
    """A hash of the database's schema and rows, or None if some table was only estimated."""
    if any(not table.rows_exact for table in description.tables.values()):
        return None
    return hashlib.sha256(description.model_dump_json().encode()).hexdigest()


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def _reason(error: psycopg.Error) -> str:
    """PostgreSQL's message and SQLSTATE (no connection details, no secrets)."""
    diag = error.diag
    message = diag.message_primary or describe(error)
    state = error.sqlstate or "08000"
    return f"{message} (SQLSTATE {state})"
