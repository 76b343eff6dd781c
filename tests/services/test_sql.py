"""SqlService on the embedded PostgreSQL and the local plane: one transaction per call on the
session's own database, as its own role, with a timeout, a row cap and JSON-safe values."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from support import direct_uri, physical_names

import meta_schema
from agentdb.pg import ServerInfo
from agentdb.services import (
    CheckpointService,
    Conflict,
    InvalidInput,
    SessionBusy,
    SessionNotFound,
    SessionService,
    SessionView,
)
from agentdb.services._errors import SqlFailed
from agentdb.services.sql import ReadPace, SqlColumn, SqlService
from meta_schema import AgentSession, SessionStatus

EXISTS = "SELECT to_regclass($1) IS NOT NULL AS present"


@pytest.fixture
def sql_service(meta_sessions, box) -> SqlService:
    return SqlService(meta_sessions, box)


@pytest.fixture
async def session(session_service: SessionService, user_id: uuid.UUID) -> SessionView:
    return await session_service.create(user_id)


async def table_exists(sql_service: SqlService, session_id: uuid.UUID, name: str) -> bool:
    result = await sql_service.run(session_id, EXISTS, [name])
    return result.rows == [[True]]


async def set_status(meta_sessions, session_id: uuid.UUID, status: SessionStatus) -> None:
    async with meta_sessions() as db:
        await db.execute(
            sa.update(AgentSession).where(AgentSession.id == session_id).values(status=status)
        )
        await db.commit()


# --- running SQL -----------------------------------------------------------------------------


async def test_ddl_and_dml_in_one_call_return_the_last_result(sql_service, session) -> None:
    result = await sql_service.run(
        session.id,
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2));"
        " INSERT INTO items VALUES (1, 'pen', 1.50), (2, 'ink', 12.00);"
        " SELECT id, name, price FROM items ORDER BY id",
    )
    assert result.command == "SELECT 2"
    assert result.columns == [
        SqlColumn(name="id", type="integer"),
        SqlColumn(name="name", type="text"),
        SqlColumn(name="price", type="numeric(10,2)"),
    ]
    assert result.rows == [[1, "pen", "1.50"], [2, "ink", "12.00"]]
    assert result.row_count == 2
    assert not result.truncated

    update = await sql_service.run(session.id, "UPDATE items SET price = price * 2")
    assert (update.command, update.row_count, update.columns, update.rows) == (
        "UPDATE 2",
        2,
        [],
        [],
    )
    insert = await sql_service.run(session.id, "INSERT INTO items VALUES (3, 'pad', NULL)")
    assert (insert.command, insert.row_count) == ("INSERT 0 1", 1)
    ddl = await sql_service.run(session.id, "CREATE INDEX items_name ON items (name)")
    assert (ddl.command, ddl.row_count) == ("CREATE INDEX", 0)


async def test_parameters_use_dollar_placeholders(sql_service, session) -> None:
    await sql_service.run(
        session.id, "CREATE TABLE docs (id bigint, title text, born date, doc jsonb, tags text[])"
    )
    inserted = await sql_service.run(
        session.id,
        "INSERT INTO docs VALUES ($1, $2, $3, $4, $5) RETURNING id, title, born, doc, tags",
        [7, "it's 100% $1", "2024-02-29", {"a": [1, 2], "b": None}, ["x", "y"]],
    )
    assert inserted.command == "INSERT 0 1"
    assert inserted.rows == [
        [7, "it's 100% $1", "2024-02-29", {"a": [1, 2], "b": None}, ["x", "y"]]
    ]

    found = await sql_service.run(
        session.id,
        "SELECT title FROM docs WHERE id = ANY($1) AND born < $2 AND doc @> $3 AND $4::bool",
        [[6, 7, 8], "2025-01-01", {"a": [1]}, True],
    )
    assert found.rows == [["it's 100% $1"]]
    # An empty list is no parameters: several statements may run.
    several = await sql_service.run(session.id, "SELECT 1; SELECT 2 AS two", [])
    assert several.rows == [[2]]
    # Ints and floats in one array become floats; NULL items stay.
    mixed = await sql_service.run(session.id, "SELECT $1::float8[] AS a", [[1, 2.5, None]])
    assert mixed.rows == [[[1.0, 2.5, None]]]


async def test_params_allow_one_statement_only(sql_service, session) -> None:
    with pytest.raises(InvalidInput) as caught:
        await sql_service.run(session.id, "CREATE TABLE t1 (n int); SELECT $1", [1])
    assert caught.value.field == "sql"
    assert "single statement" in caught.value.message
    assert not await table_exists(sql_service, session.id, "t1")


async def test_an_error_rolls_back_the_whole_call(sql_service, session) -> None:
    await sql_service.run(
        session.id, "CREATE TABLE kept (n int UNIQUE); INSERT INTO kept VALUES (1)"
    )
    with pytest.raises(SqlFailed) as caught:
        await sql_service.run(
            session.id,
            "CREATE TABLE gone (n int); INSERT INTO gone VALUES (1);"
            " INSERT INTO kept VALUES (2); INSERT INTO kept VALUES (1)",
        )
    error = caught.value
    assert error.sqlstate == "23505"
    assert "kept_n_key" in error.message
    assert error.detail == "Key (n)=(1) already exists."
    assert not await table_exists(sql_service, session.id, "gone")
    kept = await sql_service.run(session.id, "SELECT n FROM kept")
    assert kept.rows == [[1]]

    # A failing COMMIT-time check (deferred constraint) rolls back too.
    await sql_service.run(
        session.id,
        "CREATE TABLE parent (id int PRIMARY KEY);"
        " CREATE TABLE child (p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)",
    )
    with pytest.raises(SqlFailed) as deferred:
        await sql_service.run(session.id, "INSERT INTO child VALUES (42)")
    assert deferred.value.sqlstate == "23503"
    assert (await sql_service.run(session.id, "SELECT count(*) FROM child")).rows == [[0]]


async def test_sql_failed_says_what_to_fix(sql_service, session) -> None:
    with pytest.raises(SqlFailed) as missing:
        await sql_service.run(session.id, "SELECT * FROM nowhere")
    assert (missing.value.sqlstate, missing.value.position) == ("42P01", 15)
    assert missing.value.message == 'relation "nowhere" does not exist'
    assert "42P01" in str(missing.value)
    assert "at character 15" in str(missing.value)

    with pytest.raises(SqlFailed) as syntax:
        await sql_service.run(session.id, "SELEC 1")
    assert (syntax.value.sqlstate, syntax.value.position) == ("42601", 1)

    with pytest.raises(SqlFailed) as hinted:
        await sql_service.run(session.id, "SELECT lenght('x')")
    assert hinted.value.sqlstate == "42883"
    assert hinted.value.hint is not None

    with pytest.raises(SqlFailed) as unbound:
        await sql_service.run(session.id, "SELECT $1")
    assert unbound.value.sqlstate == "42P02"


async def test_begin_and_commit_inside_the_sql_are_the_callers(sql_service, session) -> None:
    result = await sql_service.run(
        session.id, "BEGIN; CREATE TABLE early (n int); COMMIT; SELECT 1 AS one"
    )
    assert result.rows == [[1]]
    assert await table_exists(sql_service, session.id, "early")


async def test_comment_only_sql_returns_an_empty_result(sql_service, session) -> None:
    result = await sql_service.run(session.id, "-- nothing to do")
    assert (result.command, result.columns, result.rows) == ("", [], [])


# --- limits ----------------------------------------------------------------------------------


async def test_rows_beyond_the_cap_are_cut(meta_sessions, box, session) -> None:
    service = SqlService(meta_sessions, box, max_rows=5)
    capped = await service.run(session.id, "SELECT n FROM generate_series(1, 50) AS n")
    assert capped.rows == [[1], [2], [3], [4], [5]]
    assert capped.truncated
    assert capped.row_count == 50
    assert capped.command == "SELECT 50"

    exact = await service.run(session.id, "SELECT n FROM generate_series(1, 5) AS n")
    assert len(exact.rows) == 5
    assert not exact.truncated

    wider = await service.run(session.id, "SELECT n FROM generate_series(1, 50) AS n", max_rows=20)
    assert (len(wider.rows), wider.truncated) == (20, True)


async def test_rows_past_the_byte_cap_are_cut_and_counted(meta_sessions, box, session) -> None:
    service = SqlService(meta_sessions, box, max_result_bytes=10_000)
    capped = await service.run(
        session.id, "SELECT n, repeat('x', 1000) FROM generate_series(1, 100) AS n"
    )
    # Each row is about 1 kB of JSON: nine fit in 10 kB, the tenth would not.
    assert [row[0] for row in capped.rows] == list(range(1, 10))
    assert (capped.truncated, capped.row_count, capped.command) == (True, 100, "SELECT 100")

    # A row whose text alone is past the cap is not returned, nor is any after it.
    wide_first = await service.run(
        session.id, "SELECT n, repeat('x', 20000 / n) FROM generate_series(1, 5) AS n"
    )
    assert (wide_first.rows, wide_first.truncated, wide_first.row_count) == ([], True, 5)

    # Only the last statement's rows count toward the caps.
    last = await service.run(
        session.id, "SELECT repeat('x', 100000); SELECT n FROM generate_series(1, 3) AS n"
    )
    assert (last.rows, last.truncated, last.row_count) == ([[1], [2], [3]], False, 3)


async def test_a_user_reading_past_its_pace_waits_and_other_users_do_not(
    meta_sessions, box, session_service, session, user_id
) -> None:
    """At 1 MiB/s, a user whose call reads about 6 MiB of rows waits for its pace (about 5 s
    past the first MiB), while another user's call made meanwhile answers first."""
    service = SqlService(meta_sessions, box, read_pace=ReadPace(1024 * 1024))
    async with meta_sessions() as db:
        other = meta_schema.User(name="bob", email=f"bob-{uuid.uuid4()}@example.com", tier="free")
        other_id = other.id
        db.add(other)
        await db.commit()
    neighbour = await session_service.create(other_id)
    done: list[str] = []

    async def heavy() -> None:
        result = await service.run(
            session.id, "SELECT n, repeat('x', 1000000) FROM generate_series(1, 6) AS n"
        )
        assert (len(result.rows), result.row_count) == (6, 6)
        done.append("heavy")

    started = time.monotonic()
    reading = asyncio.create_task(heavy())
    await asyncio.sleep(0.5)  # the heavy call has spent its burst and waits
    light = await service.run(neighbour.id, "SELECT 1")
    done.append("light")
    await reading
    assert light.rows == [[1]]
    assert done == ["light", "heavy"]
    assert time.monotonic() - started >= 3.5


def _rss_bytes() -> int:
    resident_pages = Path("/proc/self/statm").read_text().split()[1]
    return int(resident_pages) * os.sysconf("SC_PAGE_SIZE")


async def test_a_huge_result_is_read_a_row_at_a_time_not_buffered(sql_service, session) -> None:
    """200 MB of rows under a cap of one row: agentdb's memory grows by a few rows, not by the
    result (which libpq would otherwise hold whole), and past 2x the byte cap (32 MiB) it stops
    counting the rows it drops: the call fails and the statement is cancelled."""
    baseline = _rss_bytes()
    peak = baseline
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        # 20 MB: the rows past the cap are counted.
        counted = await sql_service.run(
            session.id,
            "SELECT n, repeat('x', 1000000) FROM generate_series(1, 20) AS n",
            max_rows=1,
        )
        with pytest.raises(SqlFailed) as caught:
            await sql_service.run(
                session.id,
                "SELECT n, repeat('x', 1000000) FROM generate_series(1, 200) AS n",
                max_rows=1,
            )
    finally:
        done.set()
        await sampler
    assert (len(counted.rows), counted.truncated, counted.row_count) == (1, True, 20)
    assert caught.value.sqlstate == "54000"
    assert "too large" in caught.value.message
    assert caught.value.hint
    assert peak - baseline < 100 * 1024 * 1024, f"grew by {(peak - baseline) >> 20} MiB"
    # Nothing of the session's is left running.
    assert (await sql_service.run(session.id, "SELECT 1")).rows == [[1]]


async def test_an_error_after_some_rows_fails_the_call(sql_service, session) -> None:
    with pytest.raises(SqlFailed) as caught:
        await sql_service.run(session.id, "SELECT 1 / (n - 70) FROM generate_series(1, 100) AS n")
    assert caught.value.sqlstate == "22012"


async def test_copy_through_the_client_is_refused_clearly(sql_service, session) -> None:
    with pytest.raises(SqlFailed) as caught:
        await sql_service.run(session.id, "COPY (SELECT 1) TO STDOUT")
    assert caught.value.sqlstate == "0A000"
    assert "COPY" in caught.value.message
    # The session's next call runs as usual.
    assert (await sql_service.run(session.id, "SELECT 2")).rows == [[2]]


async def test_statement_timeout_cancels_and_says_so(sql_service, session) -> None:
    started = time.monotonic()
    with pytest.raises(SqlFailed) as caught:
        await sql_service.run(
            session.id,
            "CREATE TABLE slow (n int); SELECT pg_sleep(5)",
            timeout=timedelta(milliseconds=300),
        )
    assert time.monotonic() - started < 3
    assert caught.value.sqlstate == "57014"
    assert "statement timeout of 0.3 s" in caught.value.message
    assert not await table_exists(sql_service, session.id, "slow")


async def test_the_sql_cannot_lift_its_own_timeout(sql_service, session, pg_server) -> None:
    started = time.monotonic()
    with pytest.raises(SqlFailed) as caught:
        await sql_service.run(
            session.id,
            "SET statement_timeout = 0; SELECT pg_sleep(30)",
            timeout=timedelta(milliseconds=200),
        )
    assert time.monotonic() - started < 5
    assert caught.value.sqlstate == "57014"
    assert "statement timeout of 0.2 s" in caught.value.message
    # The server stopped the query too: nothing of this session still sleeps (read as the
    # superuser: tenants do not see the cluster's backends).
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as conn:
        for _ in range(50):
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%'"
                " AND pid <> pg_backend_pid()"
            )
            running = await cur.fetchone()
            if running == (0,):
                break
            await asyncio.sleep(0.1)
    assert running == (0,)


# --- values ----------------------------------------------------------------------------------


async def test_values_become_json(sql_service, session) -> None:
    await sql_service.run(session.id, "CREATE TYPE mood AS ENUM ('calm', 'busy')")
    result = await sql_service.run(
        session.id,
        """SELECT
            NULL::int AS nothing, true AS yes, 42::int8 AS big, 9007199254740993::int8 AS huge,
            1.5::float8 AS f, 'NaN'::float8 AS nan, '-Infinity'::float8 AS neg_inf,
            12345678901234567890.123456789::numeric AS exact,
            '{"a": [1, "two", null], "b": {"c": true}}'::jsonb AS doc,
            '[1, 2]'::json AS plain_json,
            '\\x00ff10'::bytea AS raw,
            '2024-05-06 07:08:09.123456+00'::timestamptz AS at,
            '2024-05-06 07:08:09'::timestamp AS local_at,
            '2024-05-06'::date AS day, 'infinity'::date AS forever,
            '12:34:56'::time AS clock,
            '0f9e2b0c-1d3a-4e5f-8a7b-9c0d1e2f3a4b'::uuid AS id,
            ARRAY[1, 2, NULL] AS ints, ARRAY[['a', 'b'], ['c', 'd']] AS grid,
            ARRAY['2024-01-01'::date] AS days, ARRAY[1.10]::numeric[] AS decimals,
            '1 year 2 months 3 days 04:05:06'::interval AS span,
            int4range(1, 10) AS range, '192.168.0.1/24'::inet AS address,
            'busy'::mood AS feeling, ROW(1, 'a') AS pair, 'héllo ✓'::text AS unicode
        """,
    )
    values = dict(zip((c.name for c in result.columns), result.rows[0], strict=True))
    assert values == {
        "nothing": None,
        "yes": True,
        "big": 42,
        "huge": 9007199254740993,
        "f": 1.5,
        "nan": "NaN",
        "neg_inf": "-Infinity",
        "exact": "12345678901234567890.123456789",
        "doc": {"a": [1, "two", None], "b": {"c": True}},
        "plain_json": [1, 2],
        "raw": "\\x00ff10",
        "at": values["at"],  # checked below: the offset depends on the session's TimeZone
        "local_at": "2024-05-06T07:08:09",
        "day": "2024-05-06",
        "forever": "infinity",
        "clock": "12:34:56",
        "id": "0f9e2b0c-1d3a-4e5f-8a7b-9c0d1e2f3a4b",
        "ints": [1, 2, None],
        "grid": [["a", "b"], ["c", "d"]],
        "days": ["2024-01-01"],
        "decimals": ["1.10"],
        "span": "1 year 2 mons 3 days 04:05:06",
        "range": "[1,10)",
        "address": "192.168.0.1/24",
        "feeling": "busy",
        "pair": "(1,a)",
        "unicode": "héllo ✓",
    }
    assert datetime.fromisoformat(str(values["at"])) == datetime(
        2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC
    )
    types = {c.name: c.type for c in result.columns}
    assert types["feeling"] == "mood"
    assert types["at"] == "timestamp with time zone"
    assert types["grid"] == "text[]"
    assert types["doc"] == "jsonb"


async def test_returned_values_read_back_as_parameters(sql_service, session) -> None:
    await sql_service.run(
        session.id,
        "CREATE TABLE blobs (id uuid, raw bytea, at timestamptz, amount numeric, doc jsonb,"
        " span interval)",
    )
    first = await sql_service.run(
        session.id,
        "INSERT INTO blobs VALUES (gen_random_uuid(), '\\xdeadbeef', now(), 0.1, '{\"k\": 1}',"
        " '1 day') RETURNING *",
    )
    row = first.rows[0]
    again = await sql_service.run(
        session.id,
        "SELECT count(*) FROM blobs WHERE id = $1 AND raw = $2 AND at = $3 AND amount = $4"
        " AND doc = $5 AND span = $6",
        row,
    )
    assert again.rows == [[1]]


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        ("", None, {}, "sql"),
        ("   \n ", None, {}, "sql"),
        ("SELECT 1\x00", None, {}, "sql"),
        ("CREATE TABLE never (n int)", "not a list", {}, "params"),
        ("CREATE TABLE never (n int)", {"a": 1}, {}, "params"),
        ("CREATE TABLE never (n int)", [[{"a": 1}]], {}, "params"),
        ("CREATE TABLE never (n int)", [[1, "a"]], {}, "params"),
        ("CREATE TABLE never (n int)", ["a\x00b"], {}, "params"),
        ("CREATE TABLE never (n int)", [object()], {}, "params"),
        ("CREATE TABLE never (n int)", None, {"max_rows": 0}, "max_rows"),
        ("CREATE TABLE never (n int)", None, {"max_rows": 10_001}, "max_rows"),
        ("CREATE TABLE never (n int)", None, {"max_rows": True}, "max_rows"),
        ("CREATE TABLE never (n int)", None, {"timeout": timedelta(0)}, "timeout"),
        ("CREATE TABLE never (n int)", None, {"timeout": timedelta(hours=2)}, "timeout"),
    ],
)
async def test_bad_input_is_refused_before_anything_runs(sql_service, session, case) -> None:
    sql, params, options, field = case
    with pytest.raises(InvalidInput) as caught:
        await sql_service.run(session.id, sql, params, **options)
    assert caught.value.field == field
    assert caught.value.message
    assert not await table_exists(sql_service, session.id, "never")


def test_the_service_refuses_bad_settings(meta_sessions, box) -> None:
    with pytest.raises(ValueError, match="max_rows"):
        SqlService(meta_sessions, box, max_rows=0)
    with pytest.raises(ValueError, match="statement_timeout"):
        SqlService(meta_sessions, box, statement_timeout=timedelta(0))


# --- session states --------------------------------------------------------------------------


async def test_only_a_session_with_a_database_runs_sql(
    sql_service, session_service, session, meta_sessions
) -> None:
    with pytest.raises(SessionNotFound):
        await sql_service.run(uuid.uuid4(), "SELECT 1")
    await set_status(meta_sessions, session.id, SessionStatus.CHECKPOINTING)
    assert (await sql_service.run(session.id, "SELECT 1")).rows == [[1]]
    for busy in (SessionStatus.PROVISIONING, SessionStatus.RESTORING, SessionStatus.DELETING):
        await set_status(meta_sessions, session.id, busy)
        with pytest.raises(SessionBusy) as caught:
            await sql_service.run(session.id, "SELECT 1")
        assert caught.value.status == busy.value
    await set_status(meta_sessions, session.id, SessionStatus.FAILED)
    with pytest.raises(Conflict):
        await sql_service.run(session.id, "SELECT 1")
    await set_status(meta_sessions, session.id, SessionStatus.READY)
    await session_service.delete(session.id)
    with pytest.raises(Conflict, match="deleted"):
        await sql_service.run(session.id, "SELECT 1")


# --- reach -----------------------------------------------------------------------------------


async def test_sql_runs_as_the_sessions_role_in_its_database(
    sql_service, session_service, session
) -> None:
    uri = await session_service.connection_uri(session.id)
    role, database = await physical_names(uri)
    who = await sql_service.run(
        session.id,
        "SELECT current_user, current_database(),"
        " (SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles"
        "  WHERE rolname = current_user)",
    )
    assert who.rows == [[role, database, False]]


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE EXTENSION dblink",
        "CREATE EXTENSION postgres_fdw",
        "COPY (SELECT 1) TO PROGRAM 'true'",
        "SELECT pg_read_file('/etc/hostname')",
        "SET ROLE postgres",
    ],
)
async def test_sql_cannot_reach_beyond_its_database(sql_service, session, statement) -> None:
    with pytest.raises(SqlFailed) as caught:
        await sql_service.run(session.id, statement)
    # Not installed (0A000/58P01) or not allowed (42501): either way, no way out.
    assert caught.value.sqlstate in {"0A000", "58P01", "42501"}


async def test_the_sessions_credentials_open_no_other_database(
    session_service, user_id, session, meta_dsn, pg_server: ServerInfo
) -> None:
    other = await session_service.create(user_id)
    _, other_db = await physical_names(await session_service.connection_uri(other.id))
    meta_db = conninfo_to_dict(meta_dsn)["dbname"]
    # What `agentdb serve` does to its meta database (the test fixture does not).
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as su:
        await su.execute(
            pgsql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(pgsql.Identifier(meta_db))
        )
    # Straight to PostgreSQL with the role's own login (through the connection string, other
    # databases are not even there to name).
    uri = await direct_uri(await session_service.connection_uri(session.id), pg_server)
    for database in (other_db, meta_db, "postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            await psycopg.AsyncConnection.connect(make_conninfo(uri, dbname=database))


# --- checkpoints and restores closing the database -------------------------------------------


async def _database_of(uri: str) -> str:
    _, name = await physical_names(uri)
    return name


async def _allow_connections(pg_server: ServerInfo, database: str, *, allowed: bool) -> None:
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as su:
        await su.execute(
            pgsql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                pgsql.Identifier(database), pgsql.Literal(allowed)
            )
        )


async def test_connecting_waits_out_a_briefly_closed_database(
    sql_service, session_service, session, pg_server
) -> None:
    database = await _database_of(await session_service.connection_uri(session.id))
    await _allow_connections(pg_server, database, allowed=False)

    async def reopen() -> None:
        await asyncio.sleep(0.3)
        await _allow_connections(pg_server, database, allowed=True)

    reopening = asyncio.create_task(reopen())
    result = await sql_service.run(session.id, "SELECT 1 AS one")
    await reopening
    assert result.rows == [[1]]


async def test_a_database_that_refuses_connections_fails_without_secrets(
    sql_service, session_service, session, pg_server
) -> None:
    # A connection limit of 0, not ALLOW_CONNECTIONS false: the plane reopens a database that
    # is closed with nothing in flight (what a crash leaves), within seconds.
    uri = await session_service.connection_uri(session.id)
    database = pgsql.Identifier(await _database_of(uri))
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as su:
        await su.execute(pgsql.SQL("ALTER DATABASE {} CONNECTION LIMIT 0").format(database))
        try:
            with pytest.raises(SqlFailed) as caught:
                await sql_service.run(session.id, "SELECT 1")
        finally:
            await su.execute(pgsql.SQL("ALTER DATABASE {} CONNECTION LIMIT -1").format(database))
    assert caught.value.sqlstate == "08001"
    assert "too many connections" in caught.value.message
    password = conninfo_to_dict(uri)["password"]
    assert isinstance(password, str)
    assert password not in str(caught.value)
    assert str(pg_server.port) not in str(caught.value)


async def test_a_checkpoint_during_a_statement_fails_it_and_keeps_nothing(
    sql_service, checkpoint_service: CheckpointService, session
) -> None:
    await sql_service.run(session.id, "CREATE TABLE log (n int)")
    running = asyncio.create_task(
        sql_service.run(session.id, "INSERT INTO log VALUES (1); SELECT pg_sleep(10)")
    )
    await asyncio.sleep(0.3)
    checkpoint = await checkpoint_service.create(session.id, label="during a statement")
    with pytest.raises(SqlFailed) as caught:
        await running
    assert caught.value.sqlstate == "57P01"
    assert "nothing was committed" in caught.value.message
    assert (await sql_service.run(session.id, "SELECT count(*) FROM log")).rows == [[0]]
    assert checkpoint.status == "ready"
