"""agentdb keeps control of a session's credentials: a password changed from SQL is reset
through the control plane, stored encrypted and audited; role settings an agent persists do
not lift agentdb's per-call limits."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import psycopg
import pytest
import sqlalchemy as sa

from agentdb.services import CredentialService, SessionService, SessionView, SqlFailed, SqlService
from agentdb.services.credentials import with_password
from meta_schema import AgentSession, Event


@pytest.fixture
def credentials(meta_sessions, neon, box) -> CredentialService:
    return CredentialService(meta_sessions, neon, box)


@pytest.fixture
def sql_service(meta_sessions, box, credentials) -> SqlService:
    return SqlService(meta_sessions, box, recover_credentials=credentials.recover)


@pytest.fixture
async def session(session_service: SessionService, user_id: uuid.UUID) -> SessionView:
    return await session_service.create(user_id)


async def stored_uri(meta_sessions, box, session_id: uuid.UUID) -> str:
    async with meta_sessions() as db:
        row = await db.get(AgentSession, session_id)
        assert row is not None
        assert row.encrypted_connection_secret is not None
        return box.decrypt(row.encrypted_connection_secret)


async def resets(meta_sessions, session_id: uuid.UUID) -> list[Event]:
    async with meta_sessions() as db:
        found = await db.scalars(
            sa.select(Event).where(
                Event.session_id == session_id, Event.action == "session.credentials_reset"
            )
        )
        return list(found)


async def test_a_password_changed_from_sql_is_reset_at_once(
    sql_service, session, meta_sessions, box
) -> None:
    before = await stored_uri(meta_sessions, box, session.id)
    await sql_service.run(session.id, "ALTER ROLE current_user PASSWORD 'agent-owns-this-now'")

    after = await stored_uri(meta_sessions, box, session.id)
    assert after != before
    assert "agent-owns-this-now" not in after
    # The agent's password does not work any more; agentdb's does.
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(
            with_password(before, "agent-owns-this-now"), connect_timeout=5
        )
    async with await psycopg.AsyncConnection.connect(after, connect_timeout=5) as conn:
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    [event] = await resets(meta_sessions, session.id)
    assert event.details["role"]
    assert "agent-owns-this-now" not in str(event.details)
    assert (await sql_service.run(session.id, "SELECT 2")).rows == [[2]]


async def test_a_password_changed_behind_agentdbs_back_is_reset_on_the_next_call(
    sql_service, session, meta_sessions, box
) -> None:
    """A change agentdb did not see (a client with the connection string, or SQL that hid the
    word) is found when the role refuses the stored password."""
    uri = await stored_uri(meta_sessions, box, session.id)
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute("ALTER ROLE current_user PASSWORD 'changed-elsewhere-123'")

    result = await sql_service.run(session.id, "SELECT current_user")
    assert result.rows[0][0]
    assert await stored_uri(meta_sessions, box, session.id) != uri
    assert len(await resets(meta_sessions, session.id)) == 1


async def test_concurrent_refused_calls_reset_once(
    sql_service, session, meta_sessions, box
) -> None:
    uri = await stored_uri(meta_sessions, box, session.id)
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute("ALTER ROLE current_user PASSWORD 'changed-elsewhere-456'")

    results = await asyncio.gather(*(sql_service.run(session.id, "SELECT 1") for _ in range(5)))
    assert all(result.rows == [[1]] for result in results)
    assert len(await resets(meta_sessions, session.id)) == 1


async def test_role_settings_the_agent_persists_do_not_lift_the_timeout(
    sql_service, session
) -> None:
    await sql_service.run(session.id, "ALTER ROLE current_user SET statement_timeout = 0")
    with pytest.raises(SqlFailed) as failed:
        await sql_service.run(session.id, "SELECT pg_sleep(5)", timeout=timedelta(milliseconds=300))
    assert failed.value.sqlstate == "57014"


async def test_a_timed_out_call_leaves_no_backend_running(sql_service, session, pg_server) -> None:
    """The agent may lift statement_timeout inside its own call; agentdb then gives up on the
    call and cancels the statement, so no backend keeps burning CPU for nobody."""
    with pytest.raises(SqlFailed) as failed:
        await sql_service.run(
            session.id,
            "SET statement_timeout = 0; SELECT pg_sleep(60)",
            timeout=timedelta(milliseconds=300),
        )
    assert failed.value.sqlstate == "57014"
    # Read as the superuser: tenants do not see the cluster's backends.
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as conn:
        for _ in range(50):
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'agentdb-sql' AND state = 'active'"
                " AND pid <> pg_backend_pid()"
            )
            row = await cur.fetchone()
            if row == (0,):
                break
            await asyncio.sleep(0.1)
        assert row == (0,)


async def test_deeply_nested_json_comes_back_as_text(sql_service, session) -> None:
    result = await sql_service.run(
        session.id, "SELECT (repeat('[', 3000) || repeat(']', 3000))::jsonb AS deep"
    )
    [[deep]] = result.rows
    assert isinstance(deep, str)
    assert deep.startswith("[[[")
    shallow = await sql_service.run(session.id, """SELECT '{"a": [1, {"b": 2}]}'::jsonb""")
    assert shallow.rows == [[{"a": [1, {"b": 2}]}]]
