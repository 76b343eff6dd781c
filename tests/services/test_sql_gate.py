"""SQL calls through agentdb and checkpoints, restores and branches of the same session take
turns (`SessionGate`): a call waits out a checkpoint instead of failing, and a checkpoint lets
the calls already running finish first (up to its drain time)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from agentdb.neon import NeonClient
from agentdb.services import (
    BranchService,
    CheckpointService,
    SessionGate,
    SessionService,
    SessionView,
)
from agentdb.services._errors import SqlFailed
from agentdb.services.sql import SqlService


@pytest.fixture
def gate() -> SessionGate:
    return SessionGate(drain=5.0)


@pytest.fixture
def sql(meta_sessions, box, gate: SessionGate) -> SqlService:
    return SqlService(meta_sessions, box, gate=gate)


@pytest.fixture
def checkpoints(meta_sessions, neon: NeonClient, gate: SessionGate) -> CheckpointService:
    return CheckpointService(meta_sessions, neon, gate=gate)


@pytest.fixture
async def session(session_service: SessionService, user_id: uuid.UUID) -> SessionView:
    return await session_service.create(user_id)


async def count(sql: SqlService, session_id: uuid.UUID) -> object:
    return (await sql.run(session_id, "SELECT count(*) FROM log")).rows[0][0]


async def test_calls_during_checkpoints_and_a_branch_all_succeed(  # noqa: PLR0917 - fixtures
    sql: SqlService,
    checkpoints: CheckpointService,
    meta_sessions,
    neon: NeonClient,
    box,
    gate: SessionGate,
    session: SessionView,
) -> None:
    branches = BranchService(meta_sessions, neon, box, gate=gate)
    await sql.run(session.id, "CREATE TABLE log (n int)")
    stop = asyncio.Event()
    written = 0

    async def agent() -> None:
        nonlocal written
        while not stop.is_set():
            await sql.run(session.id, "INSERT INTO log VALUES (1); SELECT pg_sleep(0.02)")
            written += 1

    agents = [asyncio.create_task(agent()) for _ in range(3)]
    try:
        for n in range(3):
            await checkpoints.create(session.id, label=f"while the agent writes {n}")
        dev = await branches.create(session.id, name="while the agent writes")
    finally:
        stop.set()
        # Every call of every agent succeeded: a failure would surface here.
        await asyncio.gather(*agents)
    assert dev.status == "ready"
    assert await count(sql, session.id) == written
    assert written > 0
    assert len(gate) == 0  # nothing is kept for a session once its calls are done


async def test_a_running_call_finishes_before_the_checkpoint_copies(
    sql: SqlService, checkpoints: CheckpointService, session: SessionView
) -> None:
    await sql.run(session.id, "CREATE TABLE log (n int)")
    running = asyncio.create_task(
        sql.run(session.id, "INSERT INTO log VALUES (1); SELECT pg_sleep(0.5)")
    )
    await asyncio.sleep(0.1)
    taken = await checkpoints.create(session.id, label="after the call")
    result = await running  # not ended by the checkpoint's copy
    assert result.command == "SELECT 1"
    await sql.run(session.id, "INSERT INTO log VALUES (2)")
    await checkpoints.restore(session.id, taken.id)
    # The checkpoint holds the call's row: it was taken after the call committed.
    assert await count(sql, session.id) == 1


async def test_a_call_longer_than_the_drain_is_ended_as_before(
    meta_sessions, box, neon: NeonClient, session: SessionView
) -> None:
    gate = SessionGate(drain=0.2)
    sql = SqlService(meta_sessions, box, gate=gate)
    checkpoints = CheckpointService(meta_sessions, neon, gate=gate)
    await sql.run(session.id, "CREATE TABLE log (n int)")
    running = asyncio.create_task(
        sql.run(session.id, "INSERT INTO log VALUES (1); SELECT pg_sleep(30)")
    )
    await asyncio.sleep(0.2)
    await checkpoints.create(session.id, label="does not wait 30 s")
    with pytest.raises(SqlFailed) as caught:
        await running
    assert caught.value.sqlstate == "57P01"
    assert await count(sql, session.id) == 0


async def test_calls_during_restores_wait_and_see_the_restored_data(
    sql: SqlService, checkpoints: CheckpointService, session: SessionView, gate: SessionGate
) -> None:
    """A call that arrives while the session is restoring waits for the restore to end
    instead of answering "session is restoring", and then reads the restored database."""
    await sql.run(session.id, "CREATE TABLE log (n int)")
    empty = await checkpoints.create(session.id, label="empty table")
    await sql.run(session.id, "INSERT INTO log VALUES (1)")
    stop = asyncio.Event()
    seen: list[object] = []

    async def agent() -> None:
        while not stop.is_set():
            seen.append(await count(sql, session.id))

    agents = [asyncio.create_task(agent()) for _ in range(3)]
    try:
        await asyncio.sleep(0.1)
        for _ in range(2):
            await checkpoints.restore(session.id, empty.id)
            await sql.run(session.id, "INSERT INTO log VALUES (1)")
    finally:
        stop.set()
        await asyncio.gather(*agents)  # every call answered: a SessionBusy would surface here
    assert set(seen) <= {0, 1}
    assert 0 in seen  # calls ran between the restores and saw the restored (empty) table
    assert len(gate) == 0
