"""BranchService on the embedded PostgreSQL and the in-process local plane: dev branches and
previews hold the right data, are independent of the live database, reset, delete and
expire, and bad input or a failing control plane leaves nothing behind."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentdb.neon import NeonClient
from agentdb.neon._client import LOCAL_APP_URL
from agentdb.services import (
    CheckpointNotFound,
    CheckpointService,
    Conflict,
    ControlPlaneFailed,
    InvalidInput,
    Secrets,
    SessionLocks,
    SessionNotFound,
    SessionService,
    SessionView,
)
from agentdb.services._errors import BranchNotFound
from agentdb.services.branches import BranchService, neon_branch_name
from meta_schema import AgentSession, Branch, BranchKind, BranchStatus, Event

from .conftest import API_KEY, FAST_RETRY, execute, failing_neon, fetch

ROWS = "SELECT n FROM items ORDER BY n"


@pytest.fixture
def branch_service(
    meta_sessions: async_sessionmaker[AsyncSession],
    neon: NeonClient,
    box: Secrets,
    locks: SessionLocks,
) -> BranchService:
    return BranchService(meta_sessions, neon, box, locks=locks)


async def session_with_items(
    session_service: SessionService, user_id: uuid.UUID
) -> tuple[SessionView, str]:
    session = await session_service.create(user_id)
    uri = await session_service.connection_uri(session.id)
    await execute(uri, "CREATE TABLE items (n int)", "INSERT INTO items VALUES (1)")
    return session, uri


async def session_row(meta_sessions, session_id: uuid.UUID) -> AgentSession:
    async with meta_sessions() as db:
        row = await db.get(AgentSession, session_id)
        assert row is not None
        return row


async def neon_branch_names(neon: NeonClient, meta_sessions, session_id: uuid.UUID) -> set[str]:
    project_id = (await session_row(meta_sessions, session_id)).project_id
    assert project_id is not None
    return {b.name async for b in neon.iter_branches(project_id)}


async def branch_rows(meta_sessions, session_id: uuid.UUID) -> list[Branch]:
    async with meta_sessions() as db:
        found = await db.scalars(sa.select(Branch).where(Branch.session_id == session_id))
        return list(found)


async def test_dev_branch_of_the_live_database_is_an_independent_copy(
    session_service: SessionService,
    branch_service: BranchService,
    user_id: uuid.UUID,
    meta_sessions,
    neon: NeonClient,
) -> None:
    session, live_uri = await session_with_items(session_service, user_id)
    before = datetime.now(UTC)
    dev = await branch_service.create(session.id)
    assert (dev.kind, dev.status, dev.name) == (BranchKind.DEV, BranchStatus.READY, "dev 1")
    assert dev.source_checkpoint_id is None
    assert dev.error is None
    assert dev.expires_at is not None
    assert before + timedelta(hours=24) <= dev.expires_at <= datetime.now(UTC) + timedelta(hours=24)
    uri = await branch_service.connection_uri(session.id, dev.id)
    assert uri != live_uri
    assert "postgresql://" not in dev.model_dump_json()
    assert await fetch(uri, ROWS) == [(1,)]

    await execute(uri, "INSERT INTO items VALUES (2)", "CREATE TABLE scratch (x int)")
    await execute(live_uri, "INSERT INTO items VALUES (3)")
    assert await fetch(uri, ROWS) == [(1,), (2,)]
    assert await fetch(live_uri, ROWS) == [(1,), (3,)]
    assert await fetch(live_uri, "SELECT to_regclass('scratch') IS NULL") == [(True,)]

    assert neon_branch_name(BranchKind.DEV, dev.id) in await neon_branch_names(
        neon, meta_sessions, session.id
    )
    # The secret is stored encrypted, never in clear.
    (row,) = await branch_rows(meta_sessions, session.id)
    assert row.encrypted_connection_secret is not None
    assert uri.encode() not in row.encrypted_connection_secret
    second = await branch_service.create(session.id, name="experiment")
    assert second.name == "experiment"
    assert [b.id for b in await branch_service.list(session.id)] == [dev.id, second.id]


async def test_dev_branch_of_a_checkpoint_holds_that_checkpoint(
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    branch_service: BranchService,
    user_id: uuid.UUID,
) -> None:
    session, live_uri = await session_with_items(session_service, user_id)
    one = await checkpoint_service.create(session.id, label="one row")
    await execute(live_uri, "INSERT INTO items VALUES (2)")

    dev = await branch_service.create(session.id, name="from one", checkpoint_id=one.id)
    assert dev.source_checkpoint_id == one.id
    uri = await branch_service.connection_uri(session.id, dev.id)
    assert await fetch(uri, ROWS) == [(1,)]
    await execute(uri, "INSERT INTO items VALUES (5)")
    assert await fetch(uri, ROWS) == [(1,), (5,)]
    assert await fetch(live_uri, ROWS) == [(1,), (2,)]
    assert (await session_service.get(session.id)).head_checkpoint_id == one.id


async def test_preview_shows_the_old_data_while_the_live_database_stays(
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    branch_service: BranchService,
    user_id: uuid.UUID,
    meta_sessions,
) -> None:
    session, live_uri = await session_with_items(session_service, user_id)
    one = await checkpoint_service.create(session.id, label="one row")
    await execute(live_uri, "INSERT INTO items VALUES (2)")
    two = await checkpoint_service.create(session.id)
    await execute(live_uri, "INSERT INTO items VALUES (3)")
    live_branch = (await session_row(meta_sessions, session.id)).live_branch_id

    preview = await branch_service.preview(session.id, one.id, ttl=timedelta(hours=1))
    assert (preview.kind, preview.status) == (BranchKind.PREVIEW, BranchStatus.READY)
    assert preview.name == "preview of one row"
    assert preview.source_checkpoint_id == one.id
    assert await fetch(await branch_service.connection_uri(session.id, preview.id), ROWS) == [(1,)]
    assert await fetch(live_uri, ROWS) == [(1,), (2,), (3,)]
    after = await session_row(meta_sessions, session.id)
    assert after.live_branch_id == live_branch
    assert after.head_checkpoint_id == two.id


async def test_reset_of_a_live_copy_takes_the_live_database_as_it_is_now(
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    branch_service: BranchService,
    user_id: uuid.UUID,
) -> None:
    session, live_uri = await session_with_items(session_service, user_id)
    one = await checkpoint_service.create(session.id)
    dev = await branch_service.create(session.id)
    uri = await branch_service.connection_uri(session.id, dev.id)
    await execute(uri, "INSERT INTO items VALUES (99)")
    await execute(live_uri, "INSERT INTO items VALUES (7)")

    reset = await branch_service.reset(session.id, dev.id)
    assert reset.status == BranchStatus.READY
    assert await fetch(uri, ROWS) == [(1,), (7,)]  # same connection URI, the live data

    # After a restore the live branch is another one; reset follows it.
    await checkpoint_service.restore(session.id, one.id)
    await execute(uri, "INSERT INTO items VALUES (100)")
    await branch_service.reset(session.id, dev.id)
    assert await fetch(uri, ROWS) == [(1,)]
    assert await branch_service.connection_uri(session.id, dev.id) == uri


async def test_reset_of_a_checkpoint_copy_goes_back_to_the_checkpoint(
    *,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    branch_service: BranchService,
    user_id: uuid.UUID,
    meta_sessions,
    neon: NeonClient,
) -> None:
    session, live_uri = await session_with_items(session_service, user_id)
    one = await checkpoint_service.create(session.id)
    await execute(live_uri, "INSERT INTO items VALUES (2)")
    dev = await branch_service.create(session.id, checkpoint_id=one.id)
    uri = await branch_service.connection_uri(session.id, dev.id)
    await execute(uri, "INSERT INTO items VALUES (42)", "CREATE TABLE junk (x int)")
    (before,) = [b for b in await branch_rows(meta_sessions, session.id) if b.id == dev.id]

    await branch_service.reset(session.id, dev.id)
    assert await fetch(uri, ROWS) == [(1,)]
    assert await fetch(uri, "SELECT to_regclass('junk') IS NULL") == [(True,)]
    assert await fetch(live_uri, ROWS) == [(1,), (2,)]

    rows = await branch_rows(meta_sessions, session.id)
    (after,) = [b for b in rows if b.id == dev.id]
    assert after.branch_id != before.branch_id  # Neon's restore made a new branch...
    (old,) = [b for b in rows if b.kind == BranchKind.REPLACED]
    assert (old.branch_id, old.status) == (before.branch_id, BranchStatus.DELETED)
    names = await neon_branch_names(neon, meta_sessions, session.id)
    assert neon_branch_name(BranchKind.DEV, dev.id) in names  # ...under the same name
    assert not any(name.endswith("(old)") for name in names if name.startswith("dev-"))


async def test_delete_removes_the_branch_and_deleting_twice_is_fine(
    session_service: SessionService,
    branch_service: BranchService,
    user_id: uuid.UUID,
    meta_sessions,
    neon: NeonClient,
) -> None:
    session, _ = await session_with_items(session_service, user_id)
    dev = await branch_service.create(session.id)
    kept = await branch_service.create(session.id)
    deleted = await branch_service.delete(session.id, dev.id)
    assert deleted.status == BranchStatus.DELETED
    assert (await branch_service.delete(session.id, dev.id)).status == BranchStatus.DELETED
    names = await neon_branch_names(neon, meta_sessions, session.id)
    assert neon_branch_name(BranchKind.DEV, dev.id) not in names
    assert neon_branch_name(BranchKind.DEV, kept.id) in names
    with pytest.raises(Conflict):
        await branch_service.connection_uri(session.id, dev.id)
    assert (await branch_service.get(session.id, dev.id)).status == BranchStatus.DELETED
    assert [b.id for b in await branch_service.list(session.id)] == [kept.id]
    everything = await branch_service.list(session.id, include_deleted=True)
    assert [b.id for b in everything] == [dev.id, kept.id]
    (row,) = [b for b in await branch_rows(meta_sessions, session.id) if b.id == dev.id]
    assert row.encrypted_connection_secret is None


async def test_expire_deletes_only_the_branches_past_their_expiry(
    *,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    branch_service: BranchService,
    user_id: uuid.UUID,
    meta_sessions,
    neon: NeonClient,
) -> None:
    session, _ = await session_with_items(session_service, user_id)
    one = await checkpoint_service.create(session.id)
    short = await branch_service.create(session.id, ttl=timedelta(hours=1))
    preview = await branch_service.preview(session.id, one.id, ttl=timedelta(minutes=30))
    long = await branch_service.create(session.id, ttl=timedelta(days=2))
    default = await branch_service.create(session.id)
    now = datetime.now(UTC)

    assert await branch_service.expire(now=now) == 0
    # expire() covers every session: other tests' branches may go too.
    assert await branch_service.expire(now=now + timedelta(hours=2)) >= 2
    status = {b.id: b.status for b in await branch_service.list(session.id, include_deleted=True)}
    assert status == {
        short.id: BranchStatus.DELETED,
        preview.id: BranchStatus.DELETED,
        long.id: BranchStatus.READY,
        default.id: BranchStatus.READY,
    }
    assert await branch_service.expire(now=now + timedelta(hours=25)) >= 1
    assert (await branch_service.get(session.id, default.id)).status == BranchStatus.DELETED
    names = await neon_branch_names(neon, meta_sessions, session.id)
    assert {n for n in names if n.startswith(("dev-", "preview-"))} == {
        neon_branch_name(BranchKind.DEV, long.id)
    }
    async with meta_sessions() as db:
        reasons = await db.scalars(
            sa.select(Event.details["reason"].astext).where(
                Event.target_id == str(short.id), Event.action == "branch.delete"
            )
        )
        assert set(reasons) == {"expired"}


async def test_bad_input_raises_and_leaves_no_rows_or_branches(
    *,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    branch_service: BranchService,
    user_id: uuid.UUID,
    meta_sessions,
    neon: NeonClient,
) -> None:
    session, _ = await session_with_items(session_service, user_id)
    other = await session_service.create(user_id)
    assert other.head_checkpoint_id is not None
    failed = await checkpoint_service.create(session.id)
    async with meta_sessions() as db:  # a checkpoint that is not ready
        await db.execute(
            sa.text("UPDATE checkpoints SET status = 'failed' WHERE id = :id"), {"id": failed.id}
        )
        await db.commit()

    for ttl in (timedelta(0), timedelta(seconds=-5), timedelta(days=31)):
        with pytest.raises(InvalidInput) as raised:
            await branch_service.create(session.id, ttl=ttl)
        assert raised.value.field == "ttl_seconds"
        with pytest.raises(InvalidInput):
            await branch_service.preview(session.id, other.head_checkpoint_id, ttl=ttl)
    for name in ("", "   ", "x" * 201):
        with pytest.raises(InvalidInput) as raised:
            await branch_service.create(session.id, name=name)
        assert raised.value.field == "name"
    for checkpoint_id in (uuid.uuid4(), other.head_checkpoint_id, failed.id):
        with pytest.raises(CheckpointNotFound):
            await branch_service.create(session.id, checkpoint_id=checkpoint_id)
        with pytest.raises(CheckpointNotFound):
            await branch_service.preview(session.id, checkpoint_id)
    with pytest.raises(SessionNotFound):
        await branch_service.create(uuid.uuid4())
    with pytest.raises(BranchNotFound):
        await branch_service.get(session.id, uuid.uuid4())

    assert await branch_rows(meta_sessions, session.id) == []
    names = await neon_branch_names(neon, meta_sessions, session.id)
    assert not any(n.startswith(("dev-", "preview-")) for n in names)


async def test_branches_of_another_session_are_not_found(
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    branch_service: BranchService,
    user_id: uuid.UUID,
) -> None:
    (a, _), (b, _) = [await session_with_items(session_service, user_id) for _ in range(2)]
    dev = await branch_service.create(a.id)
    for call in (
        branch_service.get(b.id, dev.id),
        branch_service.connection_uri(b.id, dev.id),
        branch_service.reset(b.id, dev.id),
        branch_service.delete(b.id, dev.id),
    ):
        with pytest.raises(BranchNotFound):
            await call
    assert await branch_service.list(b.id) == []
    # A restore's replaced branch is a branch row too, but never a dev branch.
    one = await checkpoint_service.create(a.id)
    await checkpoint_service.restore(a.id, one.id)
    assert [x.id for x in await branch_service.list(a.id)] == [dev.id]


async def test_same_idempotency_key_returns_the_same_branch(
    session_service: SessionService, branch_service: BranchService, user_id: uuid.UUID
) -> None:
    session, _ = await session_with_items(session_service, user_id)
    first = await branch_service.create(session.id, idempotency_key="try-1")
    again = await branch_service.create(session.id, idempotency_key="try-1")
    assert again.id == first.id
    assert len(await branch_service.list(session.id)) == 1


async def test_a_deleted_session_gets_no_branches_and_hands_out_no_uri(
    session_service: SessionService, branch_service: BranchService, user_id: uuid.UUID
) -> None:
    session = await session_service.create(user_id)
    dev = await branch_service.create(session.id)
    await session_service.delete(session.id)
    with pytest.raises(Conflict):
        await branch_service.create(session.id)
    with pytest.raises(Conflict):
        await branch_service.connection_uri(session.id, dev.id)
    # Its project is gone with every branch: deleting the row is still fine.
    assert (await branch_service.delete(session.id, dev.id)).status == BranchStatus.DELETED


async def test_reset_needs_its_checkpoint(
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    branch_service: BranchService,
    user_id: uuid.UUID,
) -> None:
    session, _ = await session_with_items(session_service, user_id)
    one = await checkpoint_service.create(session.id)
    await checkpoint_service.create(session.id)
    preview = await branch_service.preview(session.id, one.id)
    await checkpoint_service.delete(session.id, one.id)
    # The preview lives on (snapshots do not pin branches), but cannot go back to it.
    uri = await branch_service.connection_uri(session.id, preview.id)
    assert await fetch(uri, ROWS) == [(1,)]
    with pytest.raises(Conflict, match="no longer exists"):
        await branch_service.reset(session.id, preview.id)
    deleted = await branch_service.delete(session.id, preview.id)
    with pytest.raises(Conflict):
        await branch_service.reset(session.id, deleted.id)


async def test_a_failure_after_the_branch_was_made_leaves_no_branch(
    *,
    localplane_app: Litestar,
    session_service: SessionService,
    user_id: uuid.UUID,
    meta_sessions,
    box: Secrets,
    neon: NeonClient,
) -> None:
    session, _ = await session_with_items(session_service, user_id)

    def fails(request: httpx.Request) -> bool:
        return request.url.path.endswith("/connection_uri")

    async with failing_neon(localplane_app, fails) as broken:
        service = BranchService(meta_sessions, broken, box)
        with pytest.raises(ControlPlaneFailed):
            await service.create(session.id, name="doomed")
    (failed,) = await service.list(session.id)
    assert failed.status == BranchStatus.FAILED
    assert failed.error
    assert "injected failure" in failed.error
    (row,) = await branch_rows(meta_sessions, session.id)
    assert row.branch_id is None
    assert row.encrypted_connection_secret is None
    names = await neon_branch_names(neon, meta_sessions, session.id)
    assert not any(n.startswith("dev-") for n in names)
    # A failed branch can still be deleted (nothing to do on the control plane).
    assert (await service.delete(session.id, failed.id)).status == BranchStatus.DELETED


async def test_a_create_applied_but_unanswered_is_found_and_adopted(
    *,
    localplane_app: Litestar,
    session_service: SessionService,
    user_id: uuid.UUID,
    meta_sessions,
    box: Secrets,
    neon: NeonClient,
) -> None:
    """The control plane made the branch, then the answer was lost (a 5xx): the service finds
    it by name and uses it, rather than failing a create that worked."""
    session, _ = await session_with_items(session_service, user_id)
    plane = httpx.ASGITransport(app=localplane_app)
    deletes: list[str] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            deletes.append(request.url.path)
        answer = await plane.handle_async_request(request)
        if request.method == "POST" and request.url.path.endswith("/branches"):
            return httpx.Response(502, json={"code": "BAD_GATEWAY", "message": "lost answer"})
        return answer

    async with NeonClient(
        LOCAL_APP_URL,
        api_key=API_KEY,
        transport=httpx.MockTransport(handle),
        retry=FAST_RETRY,
        operation_poll_interval=0.02,
    ) as lossy:
        service = BranchService(meta_sessions, lossy, box)
        created = await service.create(session.id)
        uri = await service.connection_uri(session.id, created.id)
    (found,) = await service.list(session.id)
    assert (found.id, found.status) == (created.id, BranchStatus.READY)
    assert deletes == []
    names = await neon_branch_names(neon, meta_sessions, session.id)
    assert [n for n in names if n.startswith("dev-")] == [f"dev-{created.id}"]
    assert await fetch(uri, "SELECT count(*) FROM items") == [(1,)]
