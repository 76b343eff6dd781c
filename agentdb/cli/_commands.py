"""The operator commands: `agentdb users`, `sessions`, `tokens`, `sql`, `checkpoints` and
`branches`,
each a thin client of a running `agentdb serve` through the SDK's remote mode. Tables for
people, `--json` for scripts; see `_remote` for the options, errors and exit codes."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Literal

import cyclopts
from cyclopts import Parameter
from pydantic import JsonValue
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from agentdb.sdk import SqlResult, TokenInfo, Usage

from ._base import HELP, ClientError
from ._checkpoints import branches, checkpoints
from ._remote import (
    NO_OPTIONS,
    Remote,
    Secrets,
    connected,
    details,
    emit,
    listing,
    shown,
    usage_error,
    working,
)

__all__ = ["branches", "checkpoints", "sessions", "sql", "tokens", "users"]

Positive = Annotated[int, Parameter(validator=cyclopts.validators.Number(gt=0))]
#: A session's status as the API names it (the client does not import the server's enums).
SessionStatusName = Literal[
    "provisioning", "ready", "checkpointing", "restoring", "deleting", "deleted", "failed"
]
#: A session token's mode, as the API names it.
TokenModeName = Literal["read_only", "read_write", "full"]

users = cyclopts.App(name="users", help=HELP["users"])
sessions = cyclopts.App(name="sessions", help=HELP["sessions"])
tokens = cyclopts.App(name="tokens", help=HELP["tokens"])

USER_COLUMNS = ("id", "email", "name", "tier", "created_at")
TOKEN_COLUMNS = (
    "id",
    "scope",
    "mode",
    "name",
    "prefix",
    "session_id",
    "expires_at",
    "last_used_at",
    "revoked_at",
)
SESSION_COLUMNS = ("id", "name", "status", "user_id", "head_checkpoint_id", "created_at")


# --- users -------------------------------------------------------------------------------------


@users.command(name="create")
async def create_user(
    email: str,
    /,
    *,
    name: str | None = None,
    tier: str | None = None,
    options: Remote = NO_OPTIONS,
) -> None:
    """Create a user (admin token).

    Parameters
    ----------
    email
        The user's email address (unique).
    name
        Display name (default: from the email).
    tier
        Plan tier (default: the platform's default).
    """
    async with connected(options) as db:
        user = await db.create_user(email, name=name, tier=tier)
    emit(options, user, lambda: details(user))


@users.command(name="ls")
async def list_users(
    *, limit: Positive = 100, after: uuid.UUID | None = None, options: Remote = NO_OPTIONS
) -> None:
    """List users, oldest first (admin token).

    Parameters
    ----------
    limit
        At most this many.
    after
        Start after this user id (the last one of the previous page).
    """
    async with connected(options) as db:
        found = await db.list_users(limit=limit, after=after)
    emit(options, found, lambda: listing(found, USER_COLUMNS, empty="no users"))


@users.command(name="token")
async def user_token(
    user_id: uuid.UUID,
    /,
    *,
    name: str | None = None,
    ttl: Positive | None = None,
    options: Remote = NO_OPTIONS,
) -> None:
    """Issue a user token and print it (shown this once; agentdb keeps only its hash).

    A user token reaches that user's sessions: give it to the platform code acting for them.

    Parameters
    ----------
    user_id
        The user.
    name
        A name to recognize the token by.
    ttl
        Lifetime in seconds (default: no expiry).
    """
    async with connected(options) as db:
        token = await db.create_user_token(user_id, name=name, ttl_seconds=ttl)
    emit(options, token, lambda: token.token)


@users.command(name="tier")
async def change_tier(
    user_id: uuid.UUID, tier: str, /, *, wait: bool = True, options: Remote = NO_OPTIONS
) -> None:
    """Move a user to another tier (admin token): their sessions' projects go to the tier's
    organization and get its limits.

    Parameters
    ----------
    user_id
        The user.
    tier
        The tier to move them to.
    wait
        Wait until every session has moved (--no-wait returns at once).
    """
    async with connected(options) as db:
        with working(f"Moving the user to the {tier} tier"):
            change = await db.change_tier(user_id, tier, wait=wait)
    emit(options, change, lambda: details(change, title=f"tier change {change.status.value}"))
    if change.status.value == "failed":
        raise ClientError(f"the tier change failed (agentdb retries it): {change.error}", 1)


@users.command(name="usage")
async def user_usage(
    user_id: uuid.UUID, /, *, periods: Positive = 1, options: Remote = NO_OPTIONS
) -> None:
    """A user's usage over all their sessions, per billing period and metric.

    Parameters
    ----------
    user_id
        The user.
    periods
        How many billing periods, newest first.
    """
    async with connected(options) as db:
        usage = await db.get_user_usage(user_id, periods=periods)
    emit(options, usage, lambda: usage_table(usage))


# --- sessions ----------------------------------------------------------------------------------


@sessions.command(name="create")
async def create_session(
    *,
    user: uuid.UUID | None = None,
    name: str | None = None,
    secrets: Secrets = False,
    options: Remote = NO_OPTIONS,
) -> None:
    """Open an agent session: a new PostgreSQL database with a root checkpoint.

    Parameters
    ----------
    user
        The owner (required with the admin token; a user token opens its own).
    name
        A name for the session.
    secrets
        Also print the connection URI (hidden by default).
    """
    async with connected(options) as db:
        with working("Creating the session's database"):
            session = await db.create_session(user_id=user, name=name)
    emit(options, session, lambda: details(session, secrets=secrets), secrets=secrets)


@sessions.command(name="ls")
async def list_sessions(
    *,
    user: uuid.UUID | None = None,
    status: SessionStatusName | None = None,
    limit: Positive = 100,
    after: uuid.UUID | None = None,
    secrets: Secrets = False,
    options: Remote = NO_OPTIONS,
) -> None:
    """List sessions, oldest first: a user token's own, every user's with the admin token.

    Parameters
    ----------
    user
        Only this user's sessions.
    status
        Only sessions in this status (default: all but deleted).
    limit
        At most this many.
    after
        Start after this session id (the last one of the previous page).
    secrets
        With --json, also the connection URIs (hidden by default).
    """
    async with connected(options) as db:
        found = await db.list_sessions(user_id=user, status=status, limit=limit, after=after)
    emit(
        options,
        found,
        lambda: listing(found, SESSION_COLUMNS, empty="no sessions"),
        secrets=secrets,
    )


@sessions.command(name="show")
async def show_session(
    session_id: uuid.UUID, /, *, secrets: Secrets = False, options: Remote = NO_OPTIONS
) -> None:
    """Show a session.

    Parameters
    ----------
    session_id
        The session.
    secrets
        Also print the connection URI (admin and user tokens only; hidden by default).
    """
    async with connected(options) as db:
        session = await db.get_session(session_id)
    emit(options, session, lambda: details(session, secrets=secrets), secrets=secrets)


@sessions.command(name="rm")
async def delete_session(session_id: uuid.UUID, /, *, options: Remote = NO_OPTIONS) -> None:
    """Delete a session with its database, checkpoints and branches (no undo; admin or user
    token, never a session token).

    Parameters
    ----------
    session_id
        The session.
    """
    async with connected(options) as db:
        with working("Deleting the session"):
            session = await db.delete_session(session_id)
    emit(options, session, lambda: details(session, title="deleted"))


@sessions.command(name="token")
async def session_token(
    session_id: uuid.UUID,
    /,
    *,
    name: str | None = None,
    ttl: Positive | None = None,
    mode: TokenModeName | None = None,
    options: Remote = NO_OPTIONS,
) -> None:
    """Issue a session token and print it (shown this once): what the agent gets. It reaches
    this session only and never sees connection URIs.

    Parameters
    ----------
    session_id
        The session.
    name
        A name to recognize the token by.
    ttl
        Lifetime in seconds (default: the server's AGENTDB_SESSION_TOKEN_TTL_S, a day; at
        most its AGENTDB_SESSION_TOKEN_MAX_TTL_S).
    mode
        What it may do: read_only (read; its SQL is one statement that never writes),
        read_write (the default: data, checkpoints, restores, branches) or full (also delete
        checkpoints and turn Neon Auth or the Data API off).
    """
    async with connected(options) as db:
        token = await db.create_session_token(session_id, name=name, ttl_seconds=ttl, mode=mode)
    emit(options, token, lambda: token.token)


@sessions.command(name="usage")
async def session_usage(
    session_id: uuid.UUID, /, *, periods: Positive = 1, options: Remote = NO_OPTIONS
) -> None:
    """A session's usage per billing period and metric, against its tier's quotas.

    Parameters
    ----------
    session_id
        The session.
    periods
        How many billing periods, newest first.
    """
    async with connected(options) as db:
        usage = await db.get_session_usage(session_id, periods=periods)
    emit(options, usage, lambda: usage_table(usage))


# --- tokens ------------------------------------------------------------------------------------


@tokens.command(name="ls")
async def list_tokens(
    *,
    user: uuid.UUID | None = None,
    session: uuid.UUID | None = None,
    all: Annotated[bool, Parameter(negative="")] = False,  # noqa: A002 - the option's name
    limit: Positive = 100,
    after: uuid.UUID | None = None,
    options: Remote = NO_OPTIONS,
) -> None:
    """List the tokens of a user (theirs and their sessions') or of one session, oldest first,
    without their secrets (admin or user token).

    Parameters
    ----------
    user
        Whose tokens (give --user or --session).
    session
        The session whose tokens.
    all
        Also the revoked and expired ones.
    limit
        At most this many.
    after
        Start after this token id (the last one of the previous page).
    """
    if (user is None) == (session is None):
        raise usage_error("give either --user or --session")
    async with connected(options) as db:
        if user is not None:
            found = await db.list_user_tokens(user, include_inactive=all, limit=limit, after=after)
        else:
            assert session is not None  # noqa: S101 - one of the two, checked above
            found = await db.list_session_tokens(
                session, include_inactive=all, limit=limit, after=after
            )
    emit(options, found, lambda: listing(found, TOKEN_COLUMNS, empty="no tokens"))


@tokens.command(name="show")
async def show_token(token_id: uuid.UUID, /, *, options: Remote = NO_OPTIONS) -> None:
    """Show a token (never its secret).

    Parameters
    ----------
    token_id
        The token's id (see `agentdb tokens ls`).
    """
    async with connected(options) as db:
        token = await db.get_token(token_id)
    emit(options, token, lambda: details(token))


@tokens.command(name="revoke")
async def revoke_token(token_id: uuid.UUID, /, *, options: Remote = NO_OPTIONS) -> None:
    """Revoke a token: its next request is refused (revoking twice is fine). The admin token
    revokes any user or session token, a user token its own and its sessions' tokens, a
    session token only itself.

    Parameters
    ----------
    token_id
        The token's id (see `agentdb tokens ls`).
    """
    async with connected(options) as db:
        token: TokenInfo = await db.revoke_token(token_id)
    emit(options, token, lambda: details(token, title="revoked"))


def usage_table(usage: Usage) -> RenderableType:
    if not usage.periods:
        return Text("no usage polled yet (agentdb polls every 15 minutes)", style="dim")
    parts: list[RenderableType] = []
    for period in usage.periods:
        table = Table(
            title=f"{period.period_start:%Y-%m-%d} to {period.period_end:%Y-%m-%d}",
            box=None,
            header_style="bold",
            pad_edge=False,
        )
        for name in ("metric", "value", "unit", "quota", "used"):
            table.add_column(name, justify="left" if name == "metric" else "right")
        for m in period.metrics:
            used = "-" if m.used_fraction is None else f"{m.used_fraction:.0%}"
            table.add_row(m.metric, str(m.value), m.unit, shown(m.quota), used)
        parts.append(table)
    return Group(*parts)


# --- sql ---------------------------------------------------------------------------------------


async def sql(
    session_id: uuid.UUID,
    statement: Annotated[str, Parameter(name="SQL")],
    /,
    *,
    param: Annotated[list[str] | None, Parameter(negative="")] = None,
    params_json: str | None = None,
    max_rows: Positive | None = None,
    timeout_seconds: Annotated[
        float | None, Parameter(name="--timeout", validator=cyclopts.validators.Number(gt=0))
    ] = None,
    options: Remote = NO_OPTIONS,
) -> None:
    """Run SQL on a session's database, in one transaction, as the session's own role.

    Parameters
    ----------
    session_id
        The session.
    statement
        The SQL: one or more statements (only one with parameters); the last one's rows show.
    param
        A value for $1, $2, ... in order (repeat the option); text that PostgreSQL casts to
        the type the statement needs.
    params_json
        All the values as a JSON array instead, for numbers, NULLs, arrays and jsonb,
        e.g. '[1, null, {"a": 2}]'.
    max_rows
        Return at most this many rows (default: the server's AGENTDB_SQL_MAX_ROWS).
    timeout_seconds
        Statement timeout in seconds (default: the server's).
    """
    values = _params(param, params_json)
    async with connected(options) as db:
        result = await db.sql(
            session_id, statement, values, max_rows=max_rows, timeout_seconds=timeout_seconds
        )
    emit(options, result, lambda: _result_table(result))


def _params(param: list[str] | None, params_json: str | None) -> list[JsonValue] | None:
    if params_json is None:
        return list(param) if param is not None else None
    if param is not None:
        raise usage_error("give either --param or --params-json, not both")
    try:
        values = json.loads(params_json)
    except ValueError as exc:
        raise usage_error(f"--params-json: not JSON ({exc})") from None
    if not isinstance(values, list):
        raise usage_error("--params-json: must be a JSON array, e.g. '[1, \"two\", null]'")
    return values


def _result_table(result: SqlResult) -> RenderableType:
    summary = Text(result.command, style="dim")
    if result.truncated:
        summary.append(
            f" (showing {len(result.rows)} of {result.row_count} rows; see --max-rows)",
            style="yellow",
        )
    if not result.columns:
        return summary
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in result.columns:
        table.add_column(column.name)
    for row in result.rows:
        table.add_row(*(Text("NULL", style="dim") if v is None else shown(v) for v in row))
    return Group(table, summary)
