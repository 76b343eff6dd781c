"""SqlService keeping finished calls' connections for the session's next call: reused only by
the same session, reset between calls, replaced when a checkpoint ended it, and bounded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest

from agentdb.pg import ServerInfo
from agentdb.services import CheckpointService, SessionService, SessionView
from agentdb.services._errors import SqlFailed
from agentdb.services.sql import IdleConnections, SqlService

PID = "SELECT pg_backend_pid()"


@pytest.fixture
async def idle() -> AsyncIterator[IdleConnections]:
    kept = IdleConnections(4, per_session=2)
    yield kept
    await kept.close()


@pytest.fixture
def sql_service(meta_sessions, box, idle: IdleConnections) -> SqlService:
    return SqlService(meta_sessions, box, idle=idle)


@pytest.fixture
async def session(session_service: SessionService, user_id: uuid.UUID) -> SessionView:
    return await session_service.create(user_id)


async def pid(sql_service: SqlService, session_id: uuid.UUID) -> int:
    result = await sql_service.run(session_id, PID)
    value = result.rows[0][0]
    assert isinstance(value, int)
    return value


async def test_the_next_call_of_a_session_reuses_its_connection(sql_service, session) -> None:
    first = await pid(sql_service, session.id)
    assert await pid(sql_service, session.id) == first


async def test_nothing_a_call_leaves_in_its_connection_reaches_the_next(
    sql_service, session, pg_server: ServerInfo
) -> None:
    first = await pid(sql_service, session.id)
    await sql_service.run(
        session.id,
        "CREATE TEMP TABLE scratch (n int);"
        " SET default_transaction_read_only = on;"
        " SET search_path = nowhere;"
        " PREPARE mine AS SELECT 1;"
        " SELECT pg_advisory_lock(42)",
    )
    # The same connection, without the settings, the prepared statement, the temp table...
    shown = await sql_service.run(
        session.id,
        "SELECT pg_backend_pid(), current_setting('default_transaction_read_only'),"
        " current_setting('search_path'), (SELECT count(*) FROM pg_prepared_statements),"
        " to_regclass('pg_temp.scratch') IS NULL, current_database()",
    )
    assert shown.rows[0][:5] == [first, "off", '"$user", public', 0, True]
    # ...or the lock, while it is still open and kept.
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo()) as su:
        held = await su.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND d.datname = %s",
            [shown.rows[0][5]],
        )
        assert await held.fetchone() == (0,)
    assert await pid(sql_service, session.id) == first


async def test_each_call_gets_its_own_statement_timeout(sql_service, session) -> None:
    show = "SELECT current_setting('statement_timeout')"
    first = await sql_service.run(session.id, show)
    short = await sql_service.run(session.id, show, timeout=timedelta(seconds=2))
    again = await sql_service.run(session.id, show)
    assert (first.rows, short.rows, again.rows) == ([["30s"]], [["2s"]], [["30s"]])


async def test_sessions_never_share_a_connection(
    sql_service, session, session_service: SessionService, user_id: uuid.UUID
) -> None:
    other = await session_service.create(user_id)
    mine = await pid(sql_service, session.id)
    theirs = await pid(sql_service, other.id)
    assert mine != theirs
    where = "SELECT current_database(), current_user"
    assert (await sql_service.run(other.id, where)).rows != (
        await sql_service.run(session.id, where)
    ).rows


async def test_a_connection_a_checkpoint_ended_is_replaced(
    sql_service, session, checkpoint_service: CheckpointService
) -> None:
    # Something written, so the checkpoint copies the database (an untouched one is not copied
    # and its connections live on).
    await sql_service.run(session.id, "CREATE TABLE written (x int)")
    first = await pid(sql_service, session.id)
    await checkpoint_service.create(session.id, label="ends the session's connections")
    second = await pid(sql_service, session.id)
    assert second != first
    assert await pid(sql_service, session.id) == second


async def test_a_failed_call_does_not_keep_its_connection(sql_service, session) -> None:
    first = await pid(sql_service, session.id)
    with pytest.raises(SqlFailed):
        await sql_service.run(session.id, "SELECT 1/0")
    assert await pid(sql_service, session.id) != first


async def test_a_transaction_the_caller_leaves_open_is_committed_not_kept_open(
    sql_service, session
) -> None:
    await sql_service.run(session.id, "CREATE TABLE t (n int)")
    first = await pid(sql_service, session.id)
    await sql_service.run(session.id, "COMMIT; BEGIN; INSERT INTO t VALUES (1)")
    # The next call on the same connection starts a transaction of its own: no write of the
    # last call is pending in it.
    fresh = await sql_service.run(
        session.id, "SELECT pg_backend_pid(), txid_current_if_assigned(), count(*) FROM t"
    )
    assert fresh.rows == [[first, None, 1]]


async def test_kept_connections_are_bounded(
    sql_service, idle: IdleConnections, session_service: SessionService, user_id: uuid.UUID
) -> None:
    sessions = [await session_service.create(user_id) for _ in range(4)]
    pids = [await pid(sql_service, s.id) for s in sessions[:3]]
    assert len(idle) == 3
    # Three calls at once on one session: it keeps two of their connections.
    busy = sessions[1].id
    await asyncio.gather(*(sql_service.run(busy, "SELECT pg_sleep(0.2)") for _ in range(3)))
    assert len(idle) == 4
    # A fourth session's connection displaces the longest idle of all: the first session's.
    await pid(sql_service, sessions[3].id)
    assert len(idle) == 4
    assert await pid(sql_service, sessions[0].id) != pids[0]


async def test_connections_idle_too_long_are_closed(
    meta_sessions, box, session, pg_server: ServerInfo
) -> None:
    kept = IdleConnections(4, idle_for=0.01)
    service = SqlService(meta_sessions, box, idle=kept)
    try:
        backend = await pid(service, session.id)
        assert len(kept) == 1
        await asyncio.sleep(0.05)
        assert await service.close_idle() == 1
        assert len(kept) == 0
        async with await psycopg.AsyncConnection.connect(pg_server.conninfo()) as su:
            for _ in range(300):  # the server ends the backend just after the client leaves
                found = await su.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [backend]
                )
                if await found.fetchone() == (0,):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"backend {backend} outlived its closed connection")
    finally:
        await service.close()
