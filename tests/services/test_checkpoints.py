"""CheckpointService on the embedded PostgreSQL and the in-process local plane: the checkpoint
tree, restoring in place, and one workflow per session at a time."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import sqlalchemy as sa
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentdb.neon import NeonClient
from agentdb.services import (
    CheckpointNotFound,
    CheckpointService,
    Conflict,
    ControlPlaneFailed,
    InvalidInput,
    SessionLocks,
    SessionNotFound,
    SessionService,
    SessionView,
)
from meta_schema import (
    AgentSession,
    Branch,
    BranchKind,
    BranchStatus,
    Checkpoint,
    CheckpointStatus,
    SessionStatus,
)

from .conftest import execute, failing_neon, fetch

ROWS = "SELECT n FROM items ORDER BY n"


async def live_branch(
    meta_sessions: async_sessionmaker[AsyncSession], session_id: uuid.UUID
) -> str:
    async with meta_sessions() as db:
        row = await db.get(AgentSession, session_id)
        assert row is not None
        assert row.live_branch_id is not None
        return row.live_branch_id


async def project_of(meta_sessions: async_sessionmaker[AsyncSession], session_id: uuid.UUID) -> str:
    async with meta_sessions() as db:
        row = await db.get(AgentSession, session_id)
        assert row is not None
        assert row.project_id is not None
        return row.project_id


async def session_with_items(
    session_service: SessionService, user_id: uuid.UUID
) -> tuple[SessionView, str]:
    session = await session_service.create(user_id)
    uri = await session_service.connection_uri(session.id)
    await execute(uri, "CREATE TABLE items (n int)", "INSERT INTO items VALUES (1)")
    return session, uri


async def test_restore_rewinds_in_place_and_keeps_the_tree(
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
    meta_sessions,
) -> None:
    session, uri = await session_with_items(session_service, user_id)
    root_id = session.head_checkpoint_id
    one = await checkpoint_service.create(
        session.id, label="one row", message="after setup", metadata={"commit": "abc123"}
    )
    assert one.parent_id == root_id
    assert one.status == CheckpointStatus.READY
    assert one.metadata == {"commit": "abc123"}
    assert one.taken_at is not None
    await execute(uri, "INSERT INTO items VALUES (2)")
    two = await checkpoint_service.create(session.id, label="two rows")
    assert two.parent_id == one.id
    await execute(uri, "INSERT INTO items VALUES (3)")
    branch_before = await live_branch(meta_sessions, session.id)

    restored = await checkpoint_service.restore(session.id, one.id)
    assert restored.checkpoint.id == one.id
    assert restored.session.head_checkpoint_id == one.id
    assert await fetch(uri, ROWS) == [(1,)]
    assert await live_branch(meta_sessions, session.id) != branch_before
    assert (await session_service.get(session.id)).head_checkpoint_id == one.id

    tree = await checkpoint_service.list(session.id)
    assert tree.head_id == one.id
    assert [c.id for c in tree.checkpoints] == [root_id, one.id, two.id]
    assert [c.id for c in tree.children(one.id)] == [two.id]

    # History forks: the next checkpoint hangs under the restored one, beside `two`.
    await execute(uri, "INSERT INTO items VALUES (10)")
    fork = await checkpoint_service.create(session.id, label="fork")
    assert fork.parent_id == one.id
    tree = await checkpoint_service.list(session.id)
    assert {c.id for c in tree.children(one.id)} == {two.id, fork.id}
    assert tree.head_id == fork.id

    # The live branch changed since `two` was taken; restoring it still works.
    await checkpoint_service.restore(session.id, two.id)
    assert await fetch(uri, ROWS) == [(1,), (2,)]
    await checkpoint_service.restore(session.id, fork.id)
    assert await fetch(uri, ROWS) == [(1,), (10,)]
    assert (await checkpoint_service.get(session.id, fork.id)).label == "fork"


async def test_restore_deletes_the_replaced_branch_only_when_no_checkpoint_came_from_it(
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
    meta_sessions,
    neon: NeonClient,
) -> None:
    session, _ = await session_with_items(session_service, user_id)
    project_id = await project_of(meta_sessions, session.id)
    one = await checkpoint_service.create(session.id)
    main = await live_branch(meta_sessions, session.id)

    await checkpoint_service.restore(session.id, one.id)
    first_restore = await live_branch(meta_sessions, session.id)
    # `main` is where the root and `one` were taken from: kept.
    branches = {b.id async for b in _branch_ids(neon, project_id)}
    assert main in branches

    await checkpoint_service.restore(session.id, one.id)
    # Nothing was taken from the first restore's branch: deleted.
    branches = {b.id async for b in _branch_ids(neon, project_id)}
    assert first_restore not in branches
    assert main in branches
    assert await live_branch(meta_sessions, session.id) in branches


async def _branch_ids(neon: NeonClient, project_id: str):  # type: ignore[no-untyped-def]
    async for branch in neon.iter_branches(project_id):
        yield branch


async def test_concurrent_restores_of_one_session_take_turns(
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
) -> None:
    session, uri = await session_with_items(session_service, user_id)
    one = await checkpoint_service.create(session.id)
    await execute(uri, "INSERT INTO items VALUES (2)")
    two = await checkpoint_service.create(session.id)
    await execute(uri, "INSERT INTO items VALUES (3)")

    results = await asyncio.gather(
        checkpoint_service.restore(session.id, one.id),
        checkpoint_service.restore(session.id, two.id),
    )
    assert {r.checkpoint.id for r in results} == {one.id, two.id}
    head = (await session_service.get(session.id)).head_checkpoint_id
    assert head in {one.id, two.id}
    expected = [(1,)] if head == one.id else [(1,), (2,)]
    assert await fetch(uri, ROWS) == expected
    assert (await session_service.get(session.id)).status == SessionStatus.READY


async def test_two_services_share_no_memory_but_still_serialize(
    meta_sessions, session_service: SessionService, user_id: uuid.UUID
) -> None:
    """Two processes: each has its own locks; the advisory lock makes them take turns."""
    session = await session_service.create(user_id)
    mine, theirs = SessionLocks(meta_sessions), SessionLocks(meta_sessions)
    async with mine.hold(session.id):
        waiting = asyncio.create_task(_enter(theirs, session.id))
        await asyncio.sleep(0.2)
        assert not waiting.done()
    await asyncio.wait_for(waiting, timeout=10)


async def _enter(locks: SessionLocks, session_id: uuid.UUID) -> None:
    async with locks.hold(session_id):
        pass


async def test_sessions_never_wait_on_each_other(
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
    locks: SessionLocks,
    meta_sessions,
) -> None:
    (a, _), (b, uri_b) = await asyncio.gather(
        session_with_items(session_service, user_id),
        session_with_items(session_service, user_id),
    )
    a_one, b_one = await asyncio.gather(
        checkpoint_service.create(a.id), checkpoint_service.create(b.id)
    )
    await asyncio.gather(
        checkpoint_service.restore(a.id, a_one.id), checkpoint_service.restore(b.id, b_one.id)
    )
    # While session a is held, in this process and (advisory lock) in the database, b moves.
    other_process = SessionLocks(meta_sessions)
    async with locks.hold(a.id), other_process.hold(uuid.uuid4()):
        await asyncio.wait_for(checkpoint_service.restore(b.id, b_one.id), timeout=30)
    assert await fetch(uri_b, ROWS) == [(1,)]


async def test_unknown_and_foreign_ids_raise_not_found(
    session_service: SessionService, checkpoint_service: CheckpointService, user_id: uuid.UUID
) -> None:
    a = await session_service.create(user_id)
    b = await session_service.create(user_id)
    unknown = uuid.uuid4()
    with pytest.raises(SessionNotFound):
        await checkpoint_service.create(unknown)
    with pytest.raises(SessionNotFound):
        await checkpoint_service.list(unknown)
    with pytest.raises(CheckpointNotFound):
        await checkpoint_service.get(a.id, unknown)
    with pytest.raises(CheckpointNotFound):
        await checkpoint_service.restore(a.id, unknown)
    assert b.head_checkpoint_id is not None
    with pytest.raises(CheckpointNotFound):
        await checkpoint_service.restore(a.id, b.head_checkpoint_id)


async def test_bad_checkpoint_input_names_the_field(
    session_service: SessionService, checkpoint_service: CheckpointService, user_id: uuid.UUID
) -> None:
    session = await session_service.create(user_id)
    with pytest.raises(InvalidInput) as raised:
        await checkpoint_service.create(session.id, label="")
    assert raised.value.field == "label"
    with pytest.raises(InvalidInput) as raised:
        await checkpoint_service.create(session.id, metadata={"x": float("nan")})
    assert raised.value.field == "metadata"


async def test_same_idempotency_key_returns_the_same_checkpoint(
    session_service: SessionService, checkpoint_service: CheckpointService, user_id: uuid.UUID
) -> None:
    session = await session_service.create(user_id)
    first = await checkpoint_service.create(session.id, idempotency_key="step-1")
    again = await checkpoint_service.create(session.id, idempotency_key="step-1")
    assert again.id == first.id
    assert len((await checkpoint_service.list(session.id)).checkpoints) == 2


async def test_failed_snapshot_marks_the_checkpoint_failed_and_the_session_usable(
    localplane_app: Litestar,
    meta_sessions,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
) -> None:
    session = await session_service.create(user_id)

    def fails(request: httpx.Request) -> bool:
        return request.method == "POST" and request.url.path.endswith("/snapshot")

    async with failing_neon(localplane_app, fails, status=400) as broken:
        service = CheckpointService(meta_sessions, broken)
        with pytest.raises(ControlPlaneFailed):
            await service.create(session.id, label="doomed")
    tree = await checkpoint_service.list(session.id)
    assert [c.status for c in tree.checkpoints] == [CheckpointStatus.READY, CheckpointStatus.FAILED]
    assert tree.head_id == session.head_checkpoint_id
    after = await session_service.get(session.id)
    assert after.status == SessionStatus.READY
    assert after.error
    fine = await checkpoint_service.create(session.id)
    assert fine.parent_id == session.head_checkpoint_id
    assert (await session_service.get(session.id)).error is None


async def test_deleted_session_refuses_checkpoints(
    session_service: SessionService, checkpoint_service: CheckpointService, user_id: uuid.UUID
) -> None:
    session = await session_service.create(user_id)
    await session_service.delete(session.id)
    with pytest.raises(Conflict):
        await checkpoint_service.create(session.id)


# --- delete ------------------------------------------------------------------------------------


async def test_delete_drops_the_snapshot_and_reparents_the_children(
    *,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
    meta_sessions,
    neon: NeonClient,
) -> None:
    session, uri = await session_with_items(session_service, user_id)
    project_id = await project_of(meta_sessions, session.id)
    root_id = session.head_checkpoint_id
    one = await checkpoint_service.create(session.id, label="one")
    two = await checkpoint_service.create(session.id, label="two")
    three = await checkpoint_service.create(session.id, label="three")
    async with meta_sessions() as db:
        snapshot_of_two = (await db.get(Checkpoint, two.id)).snapshot_id

    deleted = await checkpoint_service.delete(session.id, two.id)
    assert (deleted.id, deleted.status, deleted.parent_id) == (
        two.id,
        CheckpointStatus.DELETED,
        one.id,
    )
    assert snapshot_of_two not in {s.id for s in await neon.list_snapshots(project_id)}
    tree = await checkpoint_service.list(session.id)
    assert [c.id for c in tree.checkpoints] == [root_id, one.id, three.id]
    assert [c.id for c in tree.children(one.id)] == [three.id]
    assert (await checkpoint_service.get(session.id, three.id)).parent_id == one.id

    # A chain of deleted checkpoints: the child climbs to the nearest one still there.
    await checkpoint_service.delete(session.id, one.id)
    tree = await checkpoint_service.list(session.id)
    assert [(c.id, c.parent_id) for c in tree.checkpoints] == [(root_id, None), (three.id, root_id)]
    assert (await checkpoint_service.get(session.id, three.id)).parent_id == root_id

    # Gone is gone: deleting, reading or restoring it again finds nothing.
    for call in (
        checkpoint_service.delete(session.id, two.id),
        checkpoint_service.get(session.id, two.id),
        checkpoint_service.restore(session.id, two.id),
    ):
        with pytest.raises(CheckpointNotFound):
            await call
    assert await fetch(uri, ROWS) == [(1,)]  # the live database is untouched


async def test_the_head_checkpoint_cannot_be_deleted(
    session_service: SessionService, checkpoint_service: CheckpointService, user_id: uuid.UUID
) -> None:
    session, _ = await session_with_items(session_service, user_id)
    one = await checkpoint_service.create(session.id)
    two = await checkpoint_service.create(session.id)
    with pytest.raises(Conflict, match="head"):
        await checkpoint_service.delete(session.id, two.id)
    # After a restore the head is the restored one, and the former head may go.
    await checkpoint_service.restore(session.id, one.id)
    with pytest.raises(Conflict, match="head"):
        await checkpoint_service.delete(session.id, one.id)
    assert (await checkpoint_service.delete(session.id, two.id)).status == CheckpointStatus.DELETED
    assert (await checkpoint_service.get(session.id, one.id)).status == CheckpointStatus.READY


async def test_a_failed_snapshot_delete_keeps_the_checkpoint_for_a_retry(
    localplane_app: Litestar,
    meta_sessions,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
) -> None:
    session, _ = await session_with_items(session_service, user_id)
    one = await checkpoint_service.create(session.id)
    await checkpoint_service.create(session.id)

    def fails(request: httpx.Request) -> bool:
        return request.method == "DELETE" and "/snapshots/" in request.url.path

    async with failing_neon(localplane_app, fails, status=400) as broken:
        with pytest.raises(ControlPlaneFailed):
            await CheckpointService(meta_sessions, broken).delete(session.id, one.id)
    pending = await checkpoint_service.get(session.id, one.id)
    assert pending.status == CheckpointStatus.DELETING
    assert pending.error
    with pytest.raises(Conflict):  # a half-deleted checkpoint cannot be restored
        await checkpoint_service.restore(session.id, one.id)
    assert (await checkpoint_service.delete(session.id, one.id)).status == CheckpointStatus.DELETED


# --- restore bookkeeping ---------------------------------------------------------------------


async def replaced_rows(meta_sessions, session_id: uuid.UUID) -> list[Branch]:
    async with meta_sessions() as db:
        found = await db.scalars(
            sa.select(Branch)
            .where(Branch.session_id == session_id, Branch.kind == BranchKind.REPLACED)
            .order_by(Branch.created_at)
        )
        return list(found)


async def session_row(meta_sessions, session_id: uuid.UUID) -> AgentSession:
    async with meta_sessions() as db:
        row = await db.get(AgentSession, session_id)
        assert row is not None
        return row


async def test_restore_records_the_replaced_branch_and_clears_its_target(
    *,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
    meta_sessions,
    neon: NeonClient,
) -> None:
    session, uri = await session_with_items(session_service, user_id)
    project_id = await project_of(meta_sessions, session.id)
    main = await live_branch(meta_sessions, session.id)
    one = await checkpoint_service.create(session.id)

    await checkpoint_service.restore(session.id, one.id)
    first_restore = await live_branch(meta_sessions, session.id)
    assert (await session_row(meta_sessions, session.id)).restore_target_id is None
    (kept,) = await replaced_rows(meta_sessions, session.id)
    # The root and `one` were taken from `main`: kept for now.
    assert (kept.name, kept.branch_id, kept.status) == ("main (old)", main, BranchStatus.READY)

    await execute(uri, "INSERT INTO items VALUES (2)")
    two = await checkpoint_service.create(session.id)
    await checkpoint_service.restore(session.id, one.id)
    # Nothing retained came from the first restore's branch... except `two`.
    rows = await replaced_rows(meta_sessions, session.id)
    assert [(r.branch_id, r.status) for r in rows] == [
        (main, BranchStatus.READY),
        (first_restore, BranchStatus.READY),
    ]
    await checkpoint_service.restore(session.id, one.id)
    third = await replaced_rows(meta_sessions, session.id)
    assert third[-1].status == BranchStatus.DELETED  # nothing was taken from it

    # Once no retained checkpoint needs them, the cleanup job deletes the kept ones.
    head = await checkpoint_service.create(session.id)
    for checkpoint_id in (session.head_checkpoint_id, one.id, two.id):
        assert checkpoint_id is not None
        await checkpoint_service.delete(session.id, checkpoint_id)
    assert await checkpoint_service.cleanup_replaced() >= 2
    assert {r.status for r in await replaced_rows(meta_sessions, session.id)} == {
        BranchStatus.DELETED
    }
    names = {b.id async for b in neon.iter_branches(project_id)}
    assert main not in names
    assert first_restore not in names
    assert (await checkpoint_service.list(session.id)).head_id == head.id
    assert await fetch(uri, ROWS) == [(1,)]


async def test_a_failed_restore_clears_its_target(
    localplane_app: Litestar,
    meta_sessions,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
) -> None:
    session, _ = await session_with_items(session_service, user_id)
    one = await checkpoint_service.create(session.id)

    def fails(request: httpx.Request) -> bool:
        return request.url.path.endswith("/restore")

    async with failing_neon(localplane_app, fails, status=400) as broken:
        with pytest.raises(ControlPlaneFailed):
            await CheckpointService(meta_sessions, broken).restore(session.id, one.id)
    row = await session_row(meta_sessions, session.id)
    assert (row.status, row.restore_target_id) == (SessionStatus.READY, None)
    assert row.error
    assert await replaced_rows(meta_sessions, session.id) == []


async def test_a_replaced_branch_that_cannot_be_deleted_is_retried_by_cleanup(
    *,
    localplane_app: Litestar,
    meta_sessions,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
    neon: NeonClient,
) -> None:
    session, _ = await session_with_items(session_service, user_id)
    project_id = await project_of(meta_sessions, session.id)
    one = await checkpoint_service.create(session.id)
    await checkpoint_service.restore(session.id, one.id)  # `main` is kept (one came from it)

    def fails(request: httpx.Request) -> bool:
        return request.method == "DELETE" and "/branches/" in request.url.path

    async with failing_neon(localplane_app, fails, status=400) as broken:
        await CheckpointService(meta_sessions, broken).restore(session.id, one.id)
    failed = (await replaced_rows(meta_sessions, session.id))[-1]
    assert failed.status == BranchStatus.DELETING
    assert failed.error
    assert failed.branch_id in {b.id async for b in neon.iter_branches(project_id)}

    assert await checkpoint_service.cleanup_replaced() >= 1
    rows = await replaced_rows(meta_sessions, session.id)
    assert [r.status for r in rows] == [BranchStatus.READY, BranchStatus.DELETED]
    assert failed.branch_id not in {b.id async for b in neon.iter_branches(project_id)}
