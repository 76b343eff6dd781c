"""Running an agent's SQL on its session's own database, as the session's own role: one
transaction per call, a statement timeout, a row cap and a byte cap, and results as JSON-safe
values.

Results are read a row at a time as the server sends them (libpq's single-row mode), so what one
call holds is bounded by its caps plus one row, however large the result: a row whose text alone
is past the byte cap is never converted, rows past a cap are counted for `row_count` and dropped
unconverted, up to `_READ_FACTOR` times the byte cap read in all (at least `_MIN_READ`); past
that the call fails (54000) and the server's statement is cancelled. Rows libpq already holds are
taken without a round through the event loop (a wait per row would cost four times as much),
and the loop is handed back every `_YIELD_EVERY` rows.

A call's connection, once the call finished cleanly, is reset (`DISCARD ALL`: temp tables,
prepared statements, advisory locks, settings, LISTEN) and kept idle for the session's next call
(`IdleConnections`): a new connection costs a backend and a SCRAM authentication, milliseconds of
CPU on both ends. Only the same session's calls reuse it, and a connection a checkpoint or a
restore ended meanwhile is found at its first statement and replaced.

The connection URI never leaves this module; nothing here can name another database, so the
SQL reaches the session's data and nothing else (the role has no CONNECT elsewhere, and
dblink/postgres_fdw need a superuser to install).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from typing import Any

import psycopg
import stamina
import structlog
from aiolimiter import AsyncLimiter
from psycopg import abc, errors, generators, pq
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import AdaptersMap, Loader, PyFormat, Transformer
from psycopg.types.json import Jsonb
from psycopg.types.string import TextLoader
from pydantic import JsonValue
from sqlalchemy.ext.asyncio import AsyncSession

from agentdb.wire import MAX_SQL_ROWS, MAX_SQL_TIMEOUT_SECONDS, SqlColumn, SqlResult
from meta_schema import SessionStatus

from ._common import (
    SYSTEM,
    Actor,
    Clock,
    SessionFactory,
    SessionGate,
    event,
    load_session,
    system_clock,
)
from ._errors import Conflict, InvalidInput, QuotaExceeded, SessionBusy, SqlFailed
from ._secrets import Secrets
from .credentials import INVALID_PASSWORD, merged_options

log = structlog.get_logger(__name__)

MAX_ROWS_LIMIT = MAX_SQL_ROWS
#: Default cap on the JSON size of the rows one call returns.
DEFAULT_MAX_RESULT_BYTES = 16 * 1024 * 1024
#: Rows past the caps are only counted, up to this many times the byte cap read in all (and
#: at least `_MIN_READ`): enough for an `INSERT ... RETURNING` past its caps to finish, little
#: enough that a hostile result costs agentdb a few rows' reading.
_READ_FACTOR = 2
_MIN_READ = 32 * 1024 * 1024
#: Results taken from libpq's buffer between two turns of the event loop.
_YIELD_EVERY = 512
#: Bytes of rows read between two payments to the user's read pace.
_PAY_EVERY = 1024 * 1024
#: A row of more bytes than this is converted to JSON on a worker thread: its conversion takes
#: milliseconds (50 ms at 10 MB), which the event loop would otherwise not serve anyone else in.
_BIG_ROW = 256 * 1024
#: Users whose read pace is remembered; idle ones are forgotten past this many.
_PACED_USERS = 4096


#: How a call's transaction begins, by whether the call is read-only.
_BEGIN = {False: "BEGIN", True: "BEGIN READ ONLY"}


class ReadPace:
    """How fast one user's SQL calls may read result rows, across all their sessions: a
    leaky bucket per user (aiolimiter) holding `rate` bytes, refilled at `rate` per second.
    An ordinary call never waits (its whole result fits the bucket); a user streaming huge
    results again and again waits for the bucket, and meanwhile the server's backend blocks
    on its full socket, so one user's reading cannot take agentdb's event loop from the
    others."""

    def __init__(self, rate: int) -> None:
        if rate < _PAY_EVERY:
            raise ValueError(f"rate must be at least {_PAY_EVERY} bytes per second")
        self.rate = rate
        self._buckets: dict[uuid.UUID, AsyncLimiter] = {}

    async def pay(self, user_id: uuid.UUID, amount: int) -> None:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            if len(self._buckets) >= _PACED_USERS:
                self._forget_idle()
            bucket = self._buckets[user_id] = AsyncLimiter(self.rate, 1)
        while amount > 0:
            part = min(amount, self.rate)
            await bucket.acquire(part)
            amount -= part

    def _forget_idle(self) -> None:
        idle = [u for u, b in self._buckets.items() if b.has_capacity(self.rate)]
        for user_id in idle:
            del self._buckets[user_id]


MAX_TIMEOUT = timedelta(seconds=MAX_SQL_TIMEOUT_SECONDS)
MAX_SQL_LENGTH = 1_000_000
#: PostgreSQL's own limit on bind parameters in one statement.
MAX_PARAMS = 65_535
CONNECT_TIMEOUT_S = 10
#: A checkpoint closes the database for ~0.1-2 s and a restore's swap for ~15-75 ms
#: (DESIGN.md); these attempts span about 3 s.
_CONNECT_ATTEMPTS = 7
#: The whole call may run this much longer than `timeout` before agentdb cancels it: the
#: server's statement_timeout counts per statement, and the agent's SQL may change it.
_CALL_GRACE_S = 1.0
#: Sessions in these states have a database to run SQL on; a checkpoint only closes it briefly.
_RUNNABLE = frozenset({SessionStatus.READY, SessionStatus.CHECKPOINTING})
#: How often a SQL call waiting for a restore reads the session's status again.
_RESTORE_POLL_S = 0.05
_BUSY = frozenset({SessionStatus.PROVISIONING, SessionStatus.RESTORING, SessionStatus.DELETING})
#: Types whose psycopg value maps to JSON as is; every other type comes back as PostgreSQL's
#: text for it (numeric keeps its precision, interval its months, ranges their bounds).
_NATIVE_TYPES = frozenset(
    {
        "bool",
        "int2",
        "int4",
        "int8",
        "oid",
        "float4",
        "float8",
        "text",
        "varchar",
        "bpchar",
        "name",
        "json",
        "jsonb",
        "bytea",
        "uuid",
        "date",
        "time",
        "timetz",
        "timestamp",
        "timestamptz",
    }
)
_CONNECTION_CLOSED_STATES = frozenset({"57P01", "57P02", "57P03"})
#: Command tags (and keywords) after which the Data API's schema cache is stale.
_DDL_TAGS = frozenset({"CREATE", "ALTER", "DROP", "GRANT", "REVOKE", "COMMENT"})
_DDL_WORD = re.compile(r"\b(create|alter|drop|grant|revoke|comment)\b", re.IGNORECASE)
#: Called with the session's id after SQL that may have been DDL ran and committed.
AfterDdl = Callable[[uuid.UUID], Awaitable[object]]
#: Called with the session's id when its database refused a connection or a write: returns the
#: session's used-up quota, if that is why (the error then names it instead).
ExplainQuota = Callable[[uuid.UUID], Awaitable[QuotaExceeded | None]]
#: Called with the session's id and the URI its role refused (the password was changed from
#: SQL): returns a working URI, with a password agentdb set through the control plane.
RecoverCredentials = Callable[[uuid.UUID, str], Awaitable[str]]
#: Pays a user's read pace for bytes of rows a call read (waits while it is spent).
Pay = Callable[[int], Awaitable[None]]
#: SQL that may have changed the role's password: agentdb checks at once that it still logs in,
#: so the owner's connection string never stays broken until the next call.
_PASSWORD_WORD = re.compile(r"\bpassword\b", re.IGNORECASE)
#: json/jsonb values nested deeper than this come back as their text: converting them would
#: recurse past Python's limit (PostgreSQL's own limit is far deeper).
MAX_JSON_DEPTH = 100
#: SQLSTATEs that a used-up quota causes: writes in a read-only database (logical size), and
#: connections refused while the compute is suspended (time, written data, transfer).
_QUOTA_STATES = frozenset({"25006", "08001", "08006", "57P01"})


def is_ddl(sql: str, command: str) -> bool:
    """Whether SQL that ran may have changed the schema: its last command tag is DDL, or its
    text holds a DDL keyword (an earlier statement of a script). A false positive costs one
    schema-cache refresh."""
    return command.split(" ", 1)[0].upper() in _DDL_TAGS or _DDL_WORD.search(sql) is not None


class _NativeOrText(Loader):
    """psycopg's loader for a type, falling back to PostgreSQL's text for values Python cannot
    hold (dates at infinity, BC, or after year 9999)."""

    native: type[Loader]

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        self._native = self.native(oid, context)
        self._text = TextLoader(oid, context)

    def load(self, data: Buffer) -> Any:  # noqa: ANN401 - whatever the type's loader makes
        try:
            return self._native.load(data)
        except psycopg.DataError:
            return self._text.load(data)


def _too_deep(value: object, limit: int) -> bool:
    """Whether decoded JSON nests containers deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class _JsonOrText(Loader):
    """json/jsonb as Python values; nested beyond `MAX_JSON_DEPTH` (which Python could not
    convert without recursing past its limit), as their text instead."""

    def load(self, data: Buffer) -> Any:  # noqa: ANN401 - whatever the JSON holds
        text = bytes(data).decode()
        try:
            value = json.loads(text)
        except RecursionError:
            return text
        return text if _too_deep(value, MAX_JSON_DEPTH) else value


def _result_adapters() -> AdaptersMap:
    """psycopg's adapters, with the loaders of `_NATIVE_TYPES` made lenient and every other
    known type loaded as text (arrays keep their own loader, so they stay lists)."""
    adapters = AdaptersMap(psycopg.adapters)
    for info in psycopg.postgres.types:
        native = psycopg.adapters.get_loader(info.oid, pq.Format.TEXT)
        if info.name in {"json", "jsonb"}:
            adapters.register_loader(info.oid, _JsonOrText)
        elif info.name in _NATIVE_TYPES and native is not None:
            lenient = type(f"{native.__name__}OrText", (_NativeOrText,), {"native": native})
            adapters.register_loader(info.oid, lenient)
        else:
            adapters.register_loader(info.oid, TextLoader)
    return adapters


def _json_value(value: object) -> JsonValue:  # noqa: PLR0911 - one case per Python type
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, datetime | date | time_of_day):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        # json/jsonb, decoded by json.loads: JSON already.
        return {str(key): _json_value(item) for key, item in value.items()}
    return str(value)


def _leaves(value: list[JsonValue]) -> Iterator[JsonValue]:
    for item in value:
        if isinstance(item, list):
            yield from _leaves(item)
        elif item is not None:
            yield item


def _floats(value: JsonValue) -> JsonValue:
    if isinstance(value, list):
        return [_floats(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _kind(value: JsonValue) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return "object"


def _param(value: JsonValue, where: str) -> object:
    """One parameter as psycopg adapts it: scalars as themselves (text as an untyped literal
    PostgreSQL casts to what the statement needs), lists as arrays, objects as jsonb."""
    if isinstance(value, dict):
        return Jsonb(value)
    if isinstance(value, list):
        leaves = list(_leaves(value))
        kinds = {_kind(leaf) for leaf in leaves}
        if "object" in kinds:
            raise InvalidInput(
                "params", f"{where}: arrays cannot hold objects; pass such an array as JSON"
            )
        if len(kinds) > 1:
            raise InvalidInput("params", f"{where}: array items must all be of one type")
        if any(isinstance(leaf, str) and "\x00" in leaf for leaf in leaves):
            raise InvalidInput("params", f"{where}: text cannot contain NUL characters")
        # psycopg wants one Python type per array: ints beside floats become floats.
        if any(isinstance(leaf, float) for leaf in leaves):
            return _floats(value)
        return value
    if isinstance(value, str) and "\x00" in value:
        raise InvalidInput("params", f"{where}: text cannot contain NUL characters")
    if value is not None and not isinstance(value, bool | int | float | str):
        raise InvalidInput("params", f"{where}: {type(value).__name__} is not a JSON value")
    return value


def _bind(params: Sequence[JsonValue] | None) -> list[object] | None:
    if params is None:
        return None
    if not isinstance(params, list):
        raise InvalidInput("params", "must be a list of values for $1, $2, ...")
    if len(params) > MAX_PARAMS:
        raise InvalidInput("params", f"must have at most {MAX_PARAMS} values")
    return [_param(value, f"${index}") for index, value in enumerate(params, start=1)]


def _milliseconds(timeout: timedelta) -> int:
    return max(1, round(timeout.total_seconds() * 1000))


def _seconds(timeout: timedelta) -> str:
    return f"{timeout.total_seconds():g} s"


def _is_briefly_closed(error: Exception) -> bool:
    """A connect refused because a checkpoint or restore has the database closed for a moment
    (local plane: ALLOW_CONNECTIONS false, or the rename swap of a restore)."""
    if not isinstance(error, psycopg.OperationalError):
        return False
    text = str(error)
    return "is not currently accepting connections" in text or (
        "database" in text and "does not exist" in text
    )


def _is_refused_password(error: psycopg.Error) -> bool:
    """libpq reports a refused password as an OperationalError whose SQLSTATE is not always
    set, with the server's message."""
    return error.sqlstate == INVALID_PASSWORD or "password authentication failed" in str(error)


def _server_reason(error: psycopg.Error) -> str:
    """libpq's connect error without the server's address (`... failed: FATAL:  reason`)."""
    text = str(error).strip()
    _, fatal, reason = text.rpartition("FATAL:")
    return reason.strip() if fatal else text.rsplit(":", 1)[-1].strip() or "connection failed"


@dataclass(eq=False)
class _Idle:
    session_id: uuid.UUID
    conn: psycopg.AsyncConnection[tuple[Any, ...]]
    #: The statement_timeout its startup options set (what `DISCARD ALL` goes back to).
    timeout_ms: int
    since: float


class IdleConnections:
    """Connections finished calls left clean, kept for their session's next call: at most
    `per_session` of one session, `total` in all (the longest idle are closed first), each
    for `idle_for` seconds. Every kept connection holds a backend of its session's role, so
    the bounds are small; `total` 0 keeps none."""

    def __init__(self, total: int = 64, *, per_session: int = 2, idle_for: float = 30.0) -> None:
        if total < 0 or per_session < 1 or idle_for <= 0:
            raise ValueError("total must be >= 0, per_session >= 1 and idle_for positive")
        self._total = total
        self._per_session = per_session
        self._idle_for = idle_for
        self._kept: list[_Idle] = []  # longest idle first

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def keeps(self) -> bool:
        return self._total > 0

    async def take(self, session_id: uuid.UUID) -> _Idle | None:
        """The session's most recently kept connection, if any (no longer kept)."""
        await self.close_expired()
        for index in range(len(self._kept) - 1, -1, -1):
            if self._kept[index].session_id == session_id:
                return self._kept.pop(index)
        return None

    async def put(self, idle: _Idle) -> None:
        """Keeps a clean connection; closes those it displaces past the bounds."""
        self._kept.append(idle)
        displaced: list[_Idle] = []
        mine = [k for k in self._kept if k.session_id == idle.session_id]
        displaced += mine[: len(mine) - self._per_session]
        rest = [k for k in self._kept if all(k is not d for d in displaced)]
        displaced += rest[: max(0, len(rest) - self._total)]
        if displaced:
            self._kept = [k for k in rest if all(k is not d for d in displaced)]
            for old in displaced:
                await _close_quietly(old.conn)

    async def close_expired(self) -> int:
        """Closes the connections idle past `idle_for`; returns how many."""
        cutoff = time.monotonic() - self._idle_for
        expired = [k for k in self._kept if k.since < cutoff]
        if expired:
            self._kept = [k for k in self._kept if k.since >= cutoff]
            for old in expired:
                await _close_quietly(old.conn)
        return len(expired)

    async def close(self) -> None:
        kept, self._kept = self._kept, []
        for old in kept:
            await _close_quietly(old.conn)


async def _close_quietly(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
    with contextlib.suppress(psycopg.Error, OSError):
        await conn.close()


class SqlService:
    """Runs SQL in agent sessions' databases."""

    def __init__(
        self,
        sessions: SessionFactory,
        secrets: Secrets,
        *,
        statement_timeout: timedelta = timedelta(seconds=30),
        max_rows: int = 1000,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        clock: Clock = system_clock,
        after_ddl: AfterDdl | None = None,
        explain_quota: ExplainQuota | None = None,
        recover_credentials: RecoverCredentials | None = None,
        read_pace: ReadPace | None = None,
        idle: IdleConnections | None = None,
        gate: SessionGate | None = None,
        audit_chars: int = 1000,
    ) -> None:
        """`after_ddl` runs after SQL that may have changed the schema (the Data API's schema
        cache refresh); it must not raise. `explain_quota` looks up whether a refused
        connection or write is a used-up quota; it must not raise either.
        `recover_credentials` gives a working URI when the session's role refuses the stored
        password (an agent changed it from SQL). `read_pace` bounds how fast each user's
        calls read result rows (none: unbounded). `idle` keeps finished calls' connections for
        their session's next call (none by default); close the service (`close`) to close
        them. `gate`: the same `SessionGate` as the checkpoint and branch services', so a
        call waits for a checkpoint or restore of its session instead of being broken by it."""
        if not timedelta(0) < statement_timeout <= MAX_TIMEOUT:
            raise ValueError("statement_timeout must be positive and at most an hour")
        if not 1 <= max_rows <= MAX_ROWS_LIMIT:
            raise ValueError(f"max_rows must be between 1 and {MAX_ROWS_LIMIT}")
        if max_result_bytes < 1:
            raise ValueError("max_result_bytes must be positive")
        self._sessions = sessions
        self._secrets = secrets
        self._timeout = statement_timeout
        self._max_rows = max_rows
        self._max_bytes = max_result_bytes
        self._clock = clock
        self._after_ddl = after_ddl
        self._explain_quota = explain_quota
        self._recover_credentials = recover_credentials
        self._read_pace = read_pace
        self._idle = IdleConnections(0) if idle is None else idle
        self._gate = SessionGate() if gate is None else gate
        self._adapters = _result_adapters()
        self._audit_chars = audit_chars

    async def close(self) -> None:
        """Closes the idle connections kept for sessions' next calls."""
        await self._idle.close()

    @property
    def kept_connections(self) -> int:
        """Connections of finished calls kept open now (`IdleConnections`)."""
        return len(self._idle)

    async def close_idle(self) -> int:
        """Closes the connections idle too long; returns how many. Meant for a periodic job:
        a session nobody calls any more does not keep its backends."""
        return await self._idle.close_expired()

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    async def run(
        self,
        session_id: uuid.UUID,
        sql: str,
        params: list[JsonValue] | None = None,
        *,
        max_rows: int | None = None,
        timeout: timedelta | None = None,  # noqa: ASYNC109 - PostgreSQL's statement_timeout
        actor: Actor = SYSTEM,
        read_only: bool = False,
    ) -> SqlResult:
        """Runs `sql` in one transaction on the session's database and returns the last
        statement's result; any error rolls back everything the call did.

        With `params` (values for `$1`, `$2`, ...) `sql` must be one statement; without, it
        may be several separated by `;`. `timeout` (default: the service's) bounds each
        statement and, with a second's grace, the whole call. BEGIN/COMMIT inside `sql` are
        the caller's own: a COMMIT makes what ran before it permanent.

        Raises `SessionNotFound`, `SessionBusy` (provisioning, deleting, or a restore that
        has not ended within `timeout`: one under way is waited for),
        `Conflict` (deleted or failed), `InvalidInput` (sql, params, max_rows, timeout) and
        `SqlFailed` (PostgreSQL's error; SQLSTATE class 08 when the database is unreachable),
        `QuotaExceeded` (the session used up a quota: its compute is suspended, or its
        database is over its size and refuses writes).

        `read_only` (a read-only token's call): `sql` is one statement (sent with the extended
        protocol, which refuses two), run in a `READ ONLY` transaction that is always rolled
        back, so nothing it does outlasts the call: `SET TRANSACTION READ WRITE`, a `COMMIT`,
        a function that writes, all end with nothing changed.
        """
        _check_sql(sql)
        bound = _bind(params)
        cap = self._max_rows if max_rows is None else max_rows
        if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_ROWS_LIMIT:
            raise InvalidInput("max_rows", f"must be between 1 and {MAX_ROWS_LIMIT}")
        limit = self._timeout if timeout is None else timeout
        if not timedelta(milliseconds=1) <= limit <= MAX_TIMEOUT:
            raise InvalidInput("timeout", "must be between 1 ms and 1 hour")
        uri, user_id = await self._uri_after_restore(session_id, limit)
        started = time.perf_counter()
        pay = None
        if self._read_pace is not None:
            pay = functools.partial(self._read_pace.pay, user_id)
        try:
            # A checkpoint or restore of the session in progress is waited out, not failed on.
            async with self._gate.query(session_id, wait=limit.total_seconds()):
                conn, timeout_ms, begun = await self._checkout(
                    session_id, uri, limit, read_only=read_only
                )
                clean = False
                try:
                    result = await self._execute(
                        conn, sql, bound, cap, limit, pay=pay, begun=begun, read_only=read_only
                    )
                    clean = True
                finally:
                    await self._checkin(session_id, conn, timeout_ms, clean=clean)
        except SqlFailed as failed:
            await self._audit(session_id, actor, sql, started, read_only=read_only, failed=failed)
            if read_only and failed.sqlstate == "42601" and "multiple commands" in str(failed):
                raise SqlFailed(
                    "42601",
                    "a read-only token runs one statement per call: send the statements one "
                    "at a time",
                ) from failed
            if self._explain_quota is not None and failed.sqlstate in _QUOTA_STATES:
                over = await self._explain_quota(session_id)
                if over is not None:
                    raise over from failed
            raise
        await self._audit(session_id, actor, sql, started, read_only=read_only, result=result)
        log.debug(
            "sql.run",
            session_id=str(session_id),
            actor=actor.id,
            params=len(bound or ()),
            command=result.command,
            row_count=result.row_count,
            truncated=result.truncated,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        if self._after_ddl is not None and is_ddl(sql, result.command):
            await self._after_ddl(session_id)
        if self._recover_credentials is not None and _PASSWORD_WORD.search(sql):
            await self._check_credentials(session_id, uri, limit)
        return result

    async def _audit(
        self,
        session_id: uuid.UUID,
        actor: Actor,
        sql: str,
        started: float,
        *,
        read_only: bool,
        result: SqlResult | None = None,
        failed: SqlFailed | None = None,
    ) -> None:
        """The call's `sql.run` event: the statement's text cut to `audit_chars`, its SHA-256,
        the command tag and row count or the SQLSTATE, who ran it and what the agent said it
        was doing; never the parameters' values."""
        details: dict[str, JsonValue] = {
            "statement": sql[: self._audit_chars],
            "statement_truncated": len(sql) > self._audit_chars,
            "sha256": hashlib.sha256(sql.encode()).hexdigest(),
            "read_only": read_only,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
        if result is not None:
            details |= {"phase": "succeeded", "command": result.command}
            details["row_count"] = result.row_count
        if failed is not None:
            details |= {"phase": "failed", "sqlstate": failed.sqlstate}
        async with self._db() as db:
            db.add(
                event(
                    actor,
                    "sql.run",
                    at=self._clock(),
                    session_id=session_id,
                    target_kind="session",
                    target_id=session_id,
                    details=details,
                )
            )
            await db.commit()

    async def _checkout(
        self, session_id: uuid.UUID, uri: str, limit: timedelta, *, read_only: bool = False
    ) -> tuple[psycopg.AsyncConnection[tuple[Any, ...]], int, bool]:
        """A connection for one call, with the call's statement_timeout: a kept one of the
        session's, its transaction begun (which shows it is alive: a checkpoint or restore ends
        the session's connections), or else a new one. Returns it, the statement_timeout its
        startup set, and whether the transaction is begun."""
        milliseconds = _milliseconds(limit)
        while (idle := await self._idle.take(session_id)) is not None:
            try:
                await idle.conn.execute(_BEGIN[read_only])
                if idle.timeout_ms != milliseconds:
                    # For the session: `DISCARD ALL` at check-in sets it back.
                    await idle.conn.execute(
                        "SELECT pg_catalog.set_config('statement_timeout', $1, false)",
                        [str(milliseconds)],
                    )
            except psycopg.Error:
                await _close_quietly(idle.conn)
                continue
            return idle.conn, idle.timeout_ms, True
        conn = await self._connect_as_session(session_id, uri, limit)
        return conn, milliseconds, False

    async def _checkin(
        self,
        session_id: uuid.UUID,
        conn: psycopg.AsyncConnection[tuple[Any, ...]],
        timeout_ms: int,
        *,
        clean: bool,
    ) -> None:
        """Keeps the connection of a call that finished with no transaction open, reset to how
        it connected; closes any other (closing without a commit rolls back what an error left
        open)."""
        if (
            clean
            and self._idle.keeps
            and not conn.closed
            and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        ):
            # What the call wrote reaches the statistics (the plane's meter) as it would had
            # the connection closed, not when the idle backend next reports (PostgreSQL 15+;
            # without it the connection is still kept).
            with contextlib.suppress(psycopg.Error):
                await conn.execute("SELECT pg_catalog.pg_stat_force_next_flush()")
            try:
                await conn.execute("DISCARD ALL")
            except psycopg.Error:
                pass
            else:
                await self._idle.put(_Idle(session_id, conn, timeout_ms, time.monotonic()))
                return
        await _close_quietly(conn)

    async def _connect_as_session(
        self, session_id: uuid.UUID, uri: str, limit: timedelta
    ) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        """A connection to the session's database; a refused password is reset once."""
        try:
            return await self._connect(uri, limit)
        except SqlFailed as failed:
            if failed.sqlstate != INVALID_PASSWORD or self._recover_credentials is None:
                raise
        fresh = await self._recover_credentials(session_id, uri)
        return await self._connect(fresh, limit)

    async def _check_credentials(self, session_id: uuid.UUID, uri: str, limit: timedelta) -> None:
        """Resets the role's password now if the SQL that just ran changed it."""
        try:
            conn = await self._connect_as_session(session_id, uri, limit)
        except SqlFailed:
            return  # unreachable for another reason: the next call reports it
        await conn.close()

    async def _uri_after_restore(
        self, session_id: uuid.UUID, limit: timedelta
    ) -> tuple[str, uuid.UUID]:
        """`_uri`, once a restore of the session under way has ended (waited for up to
        `limit`, as a checkpoint is by the gate): a client's query is held, not failed. The
        status is read again each time, so a restore run by another process is waited out
        too; one a crash left unfinished answers `SessionBusy` after `limit`."""
        deadline = time.monotonic() + limit.total_seconds()
        while True:
            try:
                return await self._uri(session_id)
            except SessionBusy as busy:
                left = deadline - time.monotonic()
                if busy.status != SessionStatus.RESTORING.value or left <= 0:
                    raise
            # In this process the restore holds the gate closed: pass once it opens.
            async with self._gate.query(session_id, wait=left):
                pass
            await asyncio.sleep(min(_RESTORE_POLL_S, max(0.0, deadline - time.monotonic())))

    async def _uri(self, session_id: uuid.UUID) -> tuple[str, uuid.UUID]:
        """The session's connection URI and its user."""
        async with self._db() as db:
            row = await load_session(db, session_id)
        if row.status in _BUSY:
            raise SessionBusy(session_id, row.status.value)
        if row.status not in _RUNNABLE or row.encrypted_connection_secret is None:
            raise Conflict(f"session {session_id} is {row.status}: it has no database to query")
        return self._secrets.decrypt(row.encrypted_connection_secret), row.user_id

    async def _connect(
        self, uri: str, limit: timedelta
    ) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        milliseconds = _milliseconds(limit)
        # The server notices within half a second that agentdb gave up on a call (or died) and
        # ends the statement, instead of running it for nobody (PostgreSQL 14+): a statement
        # that swallows its cancel is ended this way.
        options = merged_options(
            uri, f"-c statement_timeout={milliseconds} -c client_connection_check_interval=500"
        )
        try:
            # Only connecting is retried: a statement once sent is never sent again.
            async for attempt in stamina.retry_context(
                on=_is_briefly_closed,
                attempts=_CONNECT_ATTEMPTS,
                wait_initial=0.05,
                wait_max=1.0,
                wait_jitter=0.05,
            ):
                with attempt:
                    return await psycopg.AsyncConnection.connect(
                        uri,
                        # The call's transaction is begun and ended explicitly (_execute).
                        autocommit=True,
                        options=options,
                        connect_timeout=CONNECT_TIMEOUT_S,
                        application_name="agentdb-sql",
                        prepare_threshold=None,
                        context=self._adapters,
                        cursor_factory=psycopg.AsyncRawCursor,
                    )
        except psycopg.Error as error:
            state = INVALID_PASSWORD if _is_refused_password(error) else "08001"
            raise SqlFailed(
                state, f"cannot connect to the session's database: {_server_reason(error)}"
            ) from None
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _execute(
        self,
        conn: psycopg.AsyncConnection[tuple[Any, ...]],
        sql: str,
        params: list[object] | None,
        cap: int,
        limit: timedelta,
        *,
        pay: Pay | None,
        begun: bool = False,
        read_only: bool = False,
    ) -> SqlResult:
        committing = False
        try:
            async with asyncio.timeout(limit.total_seconds() + _CALL_GRACE_S):
                if not begun:
                    await conn.execute(_BEGIN[read_only])
                kept = _Kept(cap, self._max_bytes, Transformer(conn))
                await _stream(conn, sql, params, kept, pay, one_statement=read_only)
                types = await self._type_names(conn, kept.oids, kept.modifiers)
                if conn.pgconn.transaction_status == pq.TransactionStatus.INTRANS:
                    committing = not read_only
                    # A read-only call never commits: whatever it did is undone.
                    await conn.execute("ROLLBACK" if read_only else "COMMIT")
                return kept.result(types)
        except SqlFailed:
            # Given up while the server still sends rows: it stops now, not at its timeout.
            with contextlib.suppress(psycopg.Error, TimeoutError):
                await conn.cancel_safe(timeout=5)
            raise
        except TimeoutError:
            # The server may still be running it (the agent's SQL can lift its own
            # statement_timeout): cancel it rather than leave a backend nobody waits for.
            with contextlib.suppress(psycopg.Error, TimeoutError):
                await conn.cancel_safe(timeout=5)
            raise SqlFailed(
                "57014", f"canceled: the statement timeout of {_seconds(limit)} was exceeded"
            ) from None
        except psycopg.Error as error:
            raise _failed(error, limit, committing=committing, with_params=bool(params)) from None

    @staticmethod
    async def _type_names(
        conn: psycopg.AsyncConnection[tuple[Any, ...]], oids: list[int], modifiers: list[int]
    ) -> list[str]:
        """PostgreSQL's own names for the columns' types ("integer", "numeric(10,2)",
        "timestamp with time zone", an enum's name), in one query."""
        if not oids:
            return []
        # As text: psycopg would send small numbers as int2[], which has no cast to oid[].
        found = await conn.execute(
            "SELECT pg_catalog.format_type(t, m) FROM ROWS FROM"
            " (pg_catalog.unnest($1::oid[]), pg_catalog.unnest($2::int4[]))"
            " WITH ORDINALITY AS c(t, m, n) ORDER BY n",
            [[str(oid) for oid in oids], [str(mod) for mod in modifiers]],
        )
        return [str(name) for (name,) in await found.fetchall()]


class _Kept:
    """The last statement's result as it streams in: its columns, the rows the caps admit
    (as JSON values), and how many rows there were in all."""

    def __init__(self, cap: int, max_bytes: int, loader: abc.Transformer) -> None:
        self._cap = cap
        self._max_bytes = max_bytes
        self._max_read = max(max_bytes * _READ_FACTOR, _MIN_READ)
        self._loader = loader
        self.read = 0  # bytes of rows received in the whole call (estimated, see `add`)
        self.start(None)

    def start(self, result: pq.abc.PGresult | None) -> None:
        """A new statement's first result (or none yet): what came before is not the last."""
        self.names = [] if result is None else _column_names(result)
        self.oids = [] if result is None else [result.ftype(i) for i in range(result.nfields)]
        self.modifiers = [] if result is None else [result.fmod(i) for i in range(result.nfields)]
        self.rows: list[list[JsonValue]] = []
        self.seen = 0
        self.size = 2  # the brackets of the rows' list
        self.full = False
        self.command = ""
        self.count = 0
        self._last_tag: bytes | None = None

    def add(self, chunk: pq.abc.PGresult) -> None:
        """Rows of the current statement (one in single-row mode): converted while the caps admit
        them, else counted. Raises `SqlFailed` (54000) once the call has read more than
        `_READ_FACTOR` times the byte cap: counting rows past the caps would cost agentdb without
        end."""
        self.seen += chunk.ntuples
        self._last_tag = chunk.command_status
        if not chunk.ntuples:
            return
        # The row's text as the server sent it. Its JSON is as long or longer (quotes, escapes;
        # only a json value's spaces or repeated keys shrink), so a row whose text alone is
        # past the byte cap is dropped unconverted: the cap bounds what agentdb reads too.
        raw = _raw_size(chunk)
        self.read += raw * chunk.ntuples
        if not self.full and self.size + raw > self._max_bytes:
            self.full = True
        if self.full:
            if self.read > self._max_read:
                raise SqlFailed(
                    "54000",
                    f"the result is too large: past {self._max_read >> 20} MiB of rows, beyond "
                    "the ones returned, agentdb stops counting them",
                    hint="add LIMIT, or select fewer or narrower columns",
                )
            return
        self._loader.set_pgresult(chunk)
        for row in range(chunk.ntuples):
            if len(self.rows) >= self._cap:
                self.full = True
                return
            values = [_json_value(value) for value in self._loader.load_row(row, tuple) or ()]
            size = len(json.dumps(values, ensure_ascii=False).encode()) + 1
            if self.size + size > self._max_bytes:
                self.full = True
                return
            self.rows.append(values)
            self.size += size

    def finish(self, result: pq.abc.PGresult) -> None:
        """The statement's closing result: its command tag and row count (the tag may also
        have come with the last rows, as libpq's chunked mode puts it)."""
        tag = result.command_status or self._last_tag
        self.command = tag.decode() if tag else ""
        tuples = result.command_tuples
        self.count = tuples if tuples is not None else self.seen

    def result(self, types: list[str]) -> SqlResult:
        return SqlResult(
            columns=[SqlColumn(name=n, type=t) for n, t in zip(self.names, types, strict=True)],
            rows=self.rows,
            row_count=max(self.count, 0),
            truncated=self.full,
            command=self.command,
        )


def _column_names(result: pq.abc.PGresult) -> list[str]:
    return [(result.fname(i) or b"").decode() for i in range(result.nfields)]


_ROWS = frozenset({pq.ExecStatus.TUPLES_CHUNK, pq.ExecStatus.SINGLE_TUPLE})
_DONE = frozenset({pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY})
_COPY = frozenset({pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH})


async def _stream(
    conn: psycopg.AsyncConnection[tuple[Any, ...]],
    sql: str,
    params: list[object] | None,
    kept: _Kept,
    pay: Pay | None,
    *,
    one_statement: bool = False,
) -> None:
    """Runs `sql` and streams each statement's rows into `kept` a row at a time, paying `pay`
    for every `_PAY_EVERY` bytes read; raises the first error once the server is done. Without
    parameters (none or an empty list) `sql` may be several statements (the simple-query
    protocol); with them it is one, bound as psycopg binds them."""
    pgconn = conn.pgconn
    query = sql.encode(conn.info.encoding)
    if not params and not one_statement:
        pgconn.send_query(query)
    else:
        binder = Transformer(conn)
        values = binder.dump_sequence(params or [], [PyFormat.AUTO] * len(params or []))
        pgconn.send_query_params(
            query, values, param_types=binder.types, param_formats=binder.formats
        )
    pgconn.set_single_row_mode()
    await conn.wait(generators.send(pgconn))
    error: psycopg.Error | None = None
    fresh = True  # the next result opens a statement
    taken = 0
    paid = 0
    while (result := await _next_result(conn, error, taken)) is not None:
        taken += 1
        if pay is not None and kept.read - paid >= _PAY_EVERY:
            await pay(kept.read - paid)
            paid = kept.read
        status = pq.ExecStatus(result.status)
        if status == pq.ExecStatus.FATAL_ERROR:
            error = error or errors.error_from_result(result, encoding=conn.info.encoding)
        elif status in _COPY:
            # The connection is given up (closed by the caller): COPY has no JSON form.
            raise SqlFailed(
                "0A000",
                "COPY to or from the client is not supported here: use INSERT ... SELECT, "
                "or COPY with a file the server reads",
            )
        elif error is None and status in _ROWS | _DONE:
            if fresh:
                kept.start(result)
            if status in _ROWS:
                await _add_rows(kept, result)
                fresh = False
            else:
                kept.finish(result)
                fresh = True
    if error is not None:
        raise error


async def _add_rows(kept: _Kept, chunk: pq.abc.PGresult) -> None:
    """Adds a chunk's rows to the call's result; a big row's conversion runs on a worker thread
    (`_BIG_ROW`)."""
    if not kept.full and _raw_size(chunk) > _BIG_ROW:
        await asyncio.to_thread(kept.add, chunk)
    else:
        kept.add(chunk)


def _raw_size(chunk: pq.abc.PGresult) -> int:
    """The bytes of a chunk's first row as the server sent them (one row: single-row mode)."""
    if not chunk.ntuples:
        return 0
    return sum(len(chunk.get_value(0, column) or b"") for column in range(chunk.nfields))


async def _next_result(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], error: psycopg.Error | None, taken: int
) -> pq.abc.PGresult | None:
    """The next result: at once when libpq already holds it (the loop gets a turn every
    `_YIELD_EVERY` results), else once the server sends it. Once the server reported an error,
    a connection it then closed (a terminated backend) ends the results with that error instead
    of a bare disconnect."""
    pgconn = conn.pgconn
    if not pgconn.is_busy():
        if taken % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
        return pgconn.get_result()
    try:
        return await conn.wait(generators.fetch(pgconn))
    except psycopg.OperationalError:
        if error is not None:
            raise error from None
        raise


def _check_sql(sql: str) -> None:
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidInput("sql", "must not be empty")
    if len(sql) > MAX_SQL_LENGTH:
        raise InvalidInput("sql", f"must be at most {MAX_SQL_LENGTH} characters")
    if "\x00" in sql:
        raise InvalidInput("sql", "must not contain NUL characters")


def _failed(
    error: psycopg.Error, timeout: timedelta, *, committing: bool, with_params: bool
) -> SqlFailed | InvalidInput:
    diag = error.diag
    sqlstate = error.sqlstate
    message = diag.message_primary or str(error).strip() or type(error).__name__
    if with_params and isinstance(error, errors.SyntaxError) and "multiple commands" in message:
        return InvalidInput(
            "sql", "with params, sql must be a single statement (drop the params to run several)"
        )
    if isinstance(error, errors.QueryCanceled) and "statement timeout" in message:
        message = f"canceled: the statement timeout of {_seconds(timeout)} was exceeded"
    elif sqlstate in _CONNECTION_CLOSED_STATES or (
        sqlstate is None and isinstance(error, psycopg.OperationalError)
    ):
        outcome = (
            "whether the transaction committed is unknown"
            if committing
            else "nothing was committed"
        )
        message = f"{message} (the connection closed, e.g. for a checkpoint or restore; {outcome})"
        sqlstate = sqlstate or "08006"
    position = diag.statement_position
    hints = [h for h in (diag.message_hint, _instead(sqlstate, message)) if h]
    return SqlFailed(
        sqlstate,
        message,
        detail=diag.message_detail,
        hint=" ".join(hints) or None,
        position=int(position) if position else None,
    )


#: What to do instead, for statements generated code writes for a database of its own that a
#: session's role may not run on a shared cluster: (SQLSTATE, start of the message, hint).
_INSTEAD = (
    (
        "42501",
        "permission denied to create role",
        (
            "A session's roles are made through agentdb: POST /v1/sessions/{id}/roles (agent tool "
            "create_role), then GRANT to the role's sql_name."
        ),
    ),
    (
        "42501",
        "permission denied to create database",
        (
            "A session has one database; for a separate copy create a branch: POST "
            "/v1/sessions/{id}/branches (agent tool create_branch)."
        ),
    ),
    (
        "25001",
        "CREATE DATABASE",
        (
            "A session has one database; for a separate copy create a branch: POST "
            "/v1/sessions/{id}/branches (agent tool create_branch)."
        ),
    ),
    (
        "25001",
        "",
        (
            "agentdb runs each call in one transaction; a statement that cannot run in one "
            "(VACUUM, CREATE INDEX CONCURRENTLY, ...) runs through the connection string."
        ),
    ),
    (
        "3D000",
        "database ",
        (
            "On agentdb's local plane the session's database has a cluster-wide name: see SELECT "
            "current_database(), or write ON DATABASE with that name. Its schema already belongs "
            "to the session's role, so GRANTs on the database itself are rarely needed."
        ),
    ),
    (
        "0A000",
        "extension ",
        (
            "GET /v1/sessions/{id}/extensions (agent tool list_extensions) lists the extensions "
            "this server offers."
        ),
    ),
    (
        "42501",
        "permission denied to create extension",
        (
            "Only trusted extensions can be installed by the session's role: GET "
            "/v1/sessions/{id}/extensions (agent tool list_extensions) lists them."
        ),
    ),
)


def _instead(sqlstate: str | None, message: str) -> str | None:
    for state, start, hint in _INSTEAD:
        if sqlstate == state and message.startswith(start):
            return hint
    return None


__all__ = [
    "MAX_ROWS_LIMIT",
    "AfterDdl",
    "ReadPace",
    "SqlColumn",
    "SqlResult",
    "SqlService",
    "is_ddl",
]
