"""`agentdb migrations`: fleet migrations, SQL applied to many sessions' databases (canary
first, then in waves, each session checkpointed just before), followed live with a progress
bar on a terminal and summed up as counts and the failed sessions; and their listing, halts,
resumes, cancels and rollbacks."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import cyclopts
from cyclopts import Parameter
from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from agentdb.sdk import (
    AgentDB,
    InvalidRequestError,
    Migration,
    MigrationCounts,
    MigrationResult,
    MigrationRollout,
    MigrationTarget,
)
from agentdb.wire import TERMINAL_MIGRATION_STATUSES

from ._base import FAILED, HELP, ClientError
from ._remote import NO_OPTIONS, Remote, connected, emit, listing, shown, usage_error

__all__ = ["migrations"]

migrations = cyclopts.App(name="migrations", help=HELP["migrations"])

Positive = Annotated[int, Parameter(validator=cyclopts.validators.Number(gt=0))]
Flag = Annotated[bool, Parameter(negative="", show_default=False)]
Repeated = Parameter(negative="")
#: A session's outcome within a migration, as `sessions --status` takes it.
ResultStatusName = Literal[
    "pending",
    "running",
    "applied",
    "skipped",
    "failed",
    "tested",
    "cancelled",
    "rolled_back",
    "not_rolled_back",
]

MIGRATION_COLUMNS = ("id", "name", "status", "dry_run", "total", "done", "failed", "created_at")
RESULT_COLUMNS = (
    "session_id",
    "status",
    "wave",
    "canary",
    "attempts",
    "apply_ms",
    "checkpoint_id",
    "error",
)
#: How many failed (or not rolled back) sessions a summary lists (`agentdb migrations sessions
#: ID --status failed` lists them all).
SHOWN = 20
#: The outcomes a summary lists the sessions of: failed ones, or those a rollback left.
Troubled = Literal["failed", "not_rolled_back"]
#: The counts a summary shows, in this order (those at zero are left out).
COUNT_NAMES = tuple(MigrationCounts.model_fields)
#: The counts of sessions not done yet, and those the progress bar always shows.
AT_WORK = ("pending", "running")
LIVE_COUNTS = ("applied", "failed", "skipped")


# --- apply -------------------------------------------------------------------------------------


@migrations.command(name="apply")
async def apply(
    file: Annotated[Path, Parameter(name="FILE")],
    /,
    *,
    name: str,
    down: Path | None = None,
    canary: str | None = None,
    concurrency: Annotated[
        int | None, Parameter(validator=cyclopts.validators.Number(gte=1, lte=64))
    ] = None,
    wave_size: str | None = None,
    halt_after: Annotated[
        int | None, Parameter(validator=cyclopts.validators.Number(gte=0))
    ] = None,
    halt_percent: Annotated[
        float | None, Parameter(validator=cyclopts.validators.Number(gte=0, lte=100))
    ] = None,
    tier: Annotated[list[str] | None, Repeated] = None,
    user: Annotated[list[uuid.UUID] | None, Repeated] = None,
    session: Annotated[list[uuid.UUID] | None, Repeated] = None,
    baseline: Flag = False,
    dry_run: Flag = False,
    tested_by: uuid.UUID | None = None,
    wait: bool = True,
    options: Remote = NO_OPTIONS,
) -> None:
    """Apply FILE's SQL to many sessions' databases (admin token): every session, or those of
    the --tier, --user or --session given (one kind of them). Each session is checkpointed
    just before; canary sessions go first, then waves; it halts at the first failed session
    unless told otherwise, and skips sessions that already carry it. Shows the progress,
    then the counts and the failed sessions; exits 1 unless it finished with no failure.

    Parameters
    ----------
    file
        The migration's SQL (the `up`), run in one transaction per session.
    name
        Its unique name (letters, digits and _ . : -); a session that already carries it is
        skipped.
    down
        A file of SQL that undoes it, for `agentdb migrations rollback` (without one, a
        rollback restores each session's checkpoint).
    canary
        Sessions to migrate first, as a count or a percentage (5 or 5%; default 0).
    concurrency
        Sessions migrated at a time (1 to 64; default 4).
    wave_size
        Sessions per wave after the canary, as a count or a percentage (default: all the rest
        in one wave).
    halt_after
        Halt once this many sessions failed (default 1; 0: never on a count).
    halt_percent
        Halt once this percentage of the sessions done failed.
    tier
        Only the sessions of users on this tier (repeat the option for more).
    user
        Only this user's sessions (repeatable).
    session
        Only this session (repeatable).
    baseline
        Sessions created later take it too.
    dry_run
        Test it on a short-lived branch of each session; the sessions stay as they are.
    tested_by
        A finished dry run of this very SQL (agentdb refuses the migration otherwise).
    wait
        Follow it until it finished, halted or was cancelled (--no-wait returns at once).
    """
    up = _sql_file("FILE", file)
    undo = None if down is None else _sql_file("--down", down)
    rollout = _rollout(canary, concurrency, wave_size, halt_after, halt_percent)
    target = _target(tier, user, session)
    async with connected(options) as db:
        with _options_named():
            migration = await db.create_migration(
                name,
                up,
                down=undo,
                target=target,
                baseline=baseline,
                rollout=rollout,
                dry_run=dry_run,
                tested_by=tested_by,
            )
        if wait:
            migration = await _follow(db, migration)
        failed = await _troubled(db, migration, "failed")
    _report(options, migration, failed, "failed")
    _exit_for(migration)


def _sql_file(option: str, path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise usage_error(f"{option}: no such file: {path}") from None
    except UnicodeDecodeError:
        raise usage_error(f"{option}: {path} is not UTF-8 text") from None
    except OSError as exc:
        raise usage_error(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise usage_error(f"{option}: {path} is empty")
    return text


_COUNT = re.compile(r"\d+")
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")


def _count_or_percent(option: str, text: str, *, least: int) -> int | str:
    """`text` as the API takes a number of sessions: a whole count (at least `least`) or a
    percentage ("5%", "2.5%"; above 0 when `least` is)."""
    text = text.strip()
    if _COUNT.fullmatch(text):
        if int(text) < least:
            raise usage_error(f"{option}: must be at least {least}")
        return int(text)
    percent = _PERCENT.fullmatch(text)
    if percent is None:
        raise usage_error(f"{option}: {text!r} is not a count or a percentage (e.g. 5 or 5%)")
    value = float(percent[1])
    if value > 100 or (least and not value):  # noqa: PLR2004 - per cent
        span = "above 0% and at most 100%" if least else "from 0% to 100%"
        raise usage_error(f"{option}: {text!r} is not a percentage {span}")
    return f"{percent[1]}%"


def _rollout(
    canary: str | None,
    concurrency: int | None,
    wave_size: str | None,
    halt_after: int | None,
    halt_percent: float | None,
) -> MigrationRollout | None:
    # Only what was given is sent (the server's defaults apply to the rest); --halt-after 0
    # is sent as null, which turns the rule off.
    given: dict[str, int | str | float | None] = {}
    if canary is not None:
        given["canary"] = _count_or_percent("--canary", canary, least=0)
    if concurrency is not None:
        given["concurrency"] = concurrency
    if wave_size is not None:
        given["wave_size"] = _count_or_percent("--wave-size", wave_size, least=1)
    if halt_after is not None:
        given["halt_after_failures"] = halt_after or None
    if halt_percent is not None:
        given["halt_failure_percent"] = halt_percent
    return MigrationRollout.model_validate(given) if given else None


def _target(
    tiers: list[str] | None, users: list[uuid.UUID] | None, sessions: list[uuid.UUID] | None
) -> MigrationTarget | None:
    given = {"--tier": tiers, "--user": users, "--session": sessions}
    named = [option for option, values in given.items() if values]
    if not named:
        return None  # every session: the server's default
    if len(named) > 1:
        raise usage_error(f"give one kind of target, not {' and '.join(named)}")
    return MigrationTarget(tiers=tiers, user_ids=users, session_ids=sessions)


#: The API's field names as `apply` spells them, for its "field: message" errors.
_OPTION_OF = {
    "name": "--name",
    "up": "FILE",
    "down": "--down",
    "baseline": "--baseline",
    "dry_run": "--dry-run",
    "tested_by": "--tested-by",
    "rollout.canary": "--canary",
    "rollout.concurrency": "--concurrency",
    "rollout.wave_size": "--wave-size",
    "rollout.halt_after_failures": "--halt-after",
    "rollout.halt_failure_percent": "--halt-percent",
    "target.tiers": "--tier",
    "target.user_ids": "--user",
    "target.session_ids": "--session",
}


def _option_of(field: str) -> str:
    """The option a field of the API's answer came from (`target.tiers.0` is --tier)."""
    parts = field.removeprefix("body.").split(".")
    for end in range(len(parts), 0, -1):
        if (option := _OPTION_OF.get(".".join(parts[:end]))) is not None:
            return option
    return field


@contextmanager
def _options_named() -> Iterator[None]:
    """A value agentdb refuses, named as the option that gave it."""
    try:
        yield
    except InvalidRequestError as exc:
        if not exc.errors:
            raise
        raise usage_error(
            "; ".join(
                f"{_option_of(e.get('field', ''))}: {e.get('message', '')}" for e in exc.errors
            )
        ) from None


# --- following and reporting -------------------------------------------------------------------


class _Live:
    """Shows each view of a migration on the progress bar."""

    def __init__(self, bar: Progress, task: TaskID) -> None:
        self._bar = bar
        self._task = task

    def __call__(self, view: Migration) -> None:
        self._bar.update(
            self._task,
            description=view.name,
            total=view.total or None,
            completed=done(view.counts),
            tally=_tally(view.counts, live=True),
            status=view.status.value,
        )


async def _follow(db: AgentDB, migration: Migration) -> Migration:
    """Waits for the migration (just created, resumed or rolled back: its answer shows it at
    work) to end, with a progress bar on stderr, drawn on a terminal only (stdout is what
    scripts read, and a failure stays one line on stderr): done/total, the counts, the
    status."""
    console = Console(stderr=True)
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tally]}", markup=False),
        TextColumn("{task.fields[status]}", markup=False, style="bold"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with bar:
        show = _Live(bar, bar.add_task(migration.name, total=None, tally="", status=""))
        return await db.wait_for_migration(migration.id, on_progress=show)


def done(counts: MigrationCounts) -> int:
    """The sessions that reached an outcome (neither pending nor running)."""
    at_work = counts.pending + counts.running
    return sum(int(getattr(counts, name)) for name in COUNT_NAMES) - at_work


def _tally(counts: MigrationCounts, *, live: bool = False) -> str:
    """The outcomes as "applied 3 · failed 1 · skipped 0": on the bar, those three always and
    first; elsewhere, each above zero."""
    first = LIVE_COUNTS if live else ()
    names = [*first, *(n for n in COUNT_NAMES if n not in first and n not in AT_WORK)]
    return " · ".join(
        f"{name.replace('_', ' ')} {value}"
        for name in names
        if (value := getattr(counts, name)) or name in first
    )


async def _troubled(db: AgentDB, migration: Migration, status: Troubled) -> list[MigrationResult]:
    """The first `SHOWN` sessions in `status` (failed, or not rolled back), if any."""
    if not getattr(migration.counts, status):
        return []
    return await db.list_migration_sessions(migration.id, status=status, limit=SHOWN)


def _report(
    options: Remote, migration: Migration, troubled: list[MigrationResult], status: Troubled
) -> None:
    emit(options, migration, lambda: summary(migration, troubled, status))


def summary(
    migration: Migration, troubled: list[MigrationResult], status: Troubled = "failed"
) -> RenderableType:
    """The migration's status, its sessions by outcome, and those in `status` (failed, or not
    rolled back: the first `SHOWN`) with their errors."""
    counts = migration.counts
    kind = "dry run" if migration.dry_run else "migration"
    title = Text(
        f"{kind} {migration.name} {migration.status.value}: "
        f"{done(counts)} of {migration.total} sessions done",
        style="bold",
    )
    parts: list[RenderableType] = [title, Text(f"id {migration.id}", style="dim")]
    if migration.error:
        parts.append(Text(f"error: {migration.error}", style="red"))
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("status")
    table.add_column("sessions", justify="right")
    for name in COUNT_NAMES:
        if value := getattr(counts, name):
            table.add_row(name, str(value))
    parts.append(table if table.row_count else Text("no sessions", style="dim"))
    if troubled:
        of = getattr(counts, status)
        more = f" (the first {len(troubled)} of {of})" if of > len(troubled) else ""
        parts.append(Text(f"{status.replace('_', ' ')} sessions{more}:", style="bold"))
        errors = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("session_id", "wave", "error"):
            errors.add_column(column, no_wrap=column == "session_id")
        for result in troubled:
            errors.add_row(str(result.session_id), shown(result.wave), shown(result.error))
        parts.append(errors)
    return Group(*parts)


def _exit_for(migration: Migration) -> None:
    """Exit 1 (one line on stderr) unless the migration finished with no failed session, or
    a rollback left no session behind; a migration still under way (--no-wait) is not a
    failure."""
    status, counts, name, mid = (
        migration.status.value,
        migration.counts,
        migration.name,
        migration.id,
    )
    if status == "rolled_back":
        if not counts.not_rolled_back:
            return
        message = (
            f"migration {name} rolled back, but not on {counts.not_rolled_back} session(s): "
            f"`agentdb migrations sessions {mid} --status not_rolled_back` lists them"
        )
    elif migration.status not in TERMINAL_MIGRATION_STATUSES:
        return
    elif status == "halted":
        reason = (migration.error or f"{counts.failed} session(s) failed").removeprefix("halted: ")
        message = (
            f"migration {name} halted: {reason}; `agentdb migrations resume {mid} --continue` "
            f"rolls on past the failed sessions, `agentdb migrations rollback {mid}` undoes it"
        )
    elif status == "cancelled":
        message = (
            f"migration {name} was cancelled with {done(counts)} of {migration.total} sessions "
            f"done; `agentdb migrations rollback {mid}` undoes what it applied"
        )
    elif counts.failed:
        message = (
            f"migration {name} {status}, but {counts.failed} session(s) failed: "
            f"`agentdb migrations sessions {mid} --status failed` lists them"
        )
    else:
        return
    raise ClientError(message, FAILED)


# --- the others --------------------------------------------------------------------------------


@migrations.command(name="ls")
async def list_migrations(*, limit: Positive = 50, options: Remote = NO_OPTIONS) -> None:
    """List fleet migrations, newest first (admin token).

    Parameters
    ----------
    limit
        At most this many.
    """
    async with connected(options) as db:
        found = await db.list_migrations(limit=limit)
    emit(options, found, lambda: _migration_table(found))


def _migration_table(found: list[Migration]) -> RenderableType:
    if not found:
        return Text("no migrations", style="dim")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in MIGRATION_COLUMNS:
        table.add_column(column, no_wrap=column == "id")
    for m in found:
        table.add_row(
            str(m.id),
            m.name,
            m.status.value,
            shown(m.dry_run),
            str(m.total),
            str(done(m.counts)),
            str(m.counts.failed),
            shown(m.created_at),
        )
    return table


@migrations.command(name="show")
async def show_migration(migration_id: uuid.UUID, /, *, options: Remote = NO_OPTIONS) -> None:
    """Show a fleet migration: its status, rollout, target and its sessions by outcome.

    Parameters
    ----------
    migration_id
        The migration (see `agentdb migrations ls`).
    """
    async with connected(options) as db:
        migration = await db.get_migration(migration_id)
    emit(options, migration, lambda: migration_details(migration))


def migration_details(migration: Migration) -> RenderableType:
    """A migration as `field  value` lines; its target, rollout and counts compact."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name in type(migration).model_fields:
        value = getattr(migration, name)
        if isinstance(value, MigrationCounts):
            grid.add_row(name, _tally(value) or "no sessions")
        elif isinstance(value, MigrationTarget | MigrationRollout):
            grid.add_row(name, shown(value.model_dump(mode="json", exclude_none=True)))
        else:
            grid.add_row(name, shown(value))
    return grid


@migrations.command(name="sessions")
async def list_results(
    migration_id: uuid.UUID,
    /,
    *,
    status: ResultStatusName | None = None,
    limit: Positive = 100,
    after: uuid.UUID | None = None,
    options: Remote = NO_OPTIONS,
) -> None:
    """List a fleet migration's sessions with their outcome, by session id.

    Parameters
    ----------
    migration_id
        The migration.
    status
        Only the sessions with this outcome (e.g. failed).
    limit
        At most this many.
    after
        Start after this session id (the last one of the previous page).
    """
    async with connected(options) as db:
        found = await db.list_migration_sessions(
            migration_id, status=status, limit=limit, after=after
        )
    emit(options, found, lambda: listing(found, RESULT_COLUMNS, empty="no sessions"))


@migrations.command(name="resume")
async def resume(
    migration_id: uuid.UUID,
    /,
    *,
    continue_: Annotated[Flag, Parameter(name="--continue")] = False,
    wait: bool = True,
    options: Remote = NO_OPTIONS,
) -> None:
    """Resume a halted fleet migration, with the progress and summary of `apply`: its failed
    sessions are tried again, or with --continue left failed while it rolls on.

    Parameters
    ----------
    migration_id
        The migration.
    continue_
        Roll on past the failed sessions that halted it (the halt rule then counts only later
        failures) instead of trying them again.
    wait
        Follow it until it stops again (--no-wait returns at once).
    """
    async with connected(options) as db:
        migration = await db.resume_migration(migration_id, continue_=continue_)
        if wait:
            migration = await _follow(db, migration)
        failed = await _troubled(db, migration, "failed")
    _report(options, migration, failed, "failed")
    _exit_for(migration)


@migrations.command(name="cancel")
async def cancel(migration_id: uuid.UUID, /, *, options: Remote = NO_OPTIONS) -> None:
    """Cancel a fleet migration: sessions not yet started are left as they are; those under
    way finish (a cancelled migration does not resume; what it applied stays until rolled
    back).

    Parameters
    ----------
    migration_id
        The migration.
    """
    async with connected(options) as db:
        migration = await db.cancel_migration(migration_id)
    emit(options, migration, lambda: migration_details(migration))


@migrations.command(name="rollback")
async def rollback(
    migration_id: uuid.UUID, /, *, wait: bool = True, options: Remote = NO_OPTIONS
) -> None:
    """Roll a finished, halted or cancelled fleet migration back on the sessions that took it:
    its `down` SQL where it has one, else a restore of the checkpoint taken before it where
    nothing was written since (the others stay, `not_rolled_back`). Shows the progress, then
    the counts and the sessions not rolled back; exits 1 if there are any.

    Parameters
    ----------
    migration_id
        The migration.
    wait
        Follow it until it is rolled back (--no-wait returns at once).
    """
    async with connected(options) as db:
        migration = await db.rollback_migration(migration_id)
        if wait:
            migration = await _follow(db, migration)
        left = await _troubled(db, migration, "not_rolled_back")
    _report(options, migration, left, "not_rolled_back")
    _exit_for(migration)
