"""Nothing leaks and nothing is retried forever: a replaced branch with child branches is
cleaned up once its children are done (agentdb's finished ones deleted first) or reported once
as blocked; a create a crash left and the reconciler undid takes no place in the user's quota."""

from __future__ import annotations

import collections
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from agentdb.neon import NeonClient
from agentdb.services import (
    BranchService,
    CheckpointService,
    LimitExceeded,
    Reconciler,
    Secrets,
    SessionLocks,
    SessionService,
    SessionView,
)
from agentdb.tiers import Tiers, load_tiers
from meta_schema import AgentSession, Branch, BranchKind, BranchStatus, Event, SessionStatus, User

from .conftest import API_KEY, FAST_RETRY

TIERS_TOML = """
default = "small"

[tiers.small]
max_sessions_per_user = 2
"""


class Requests:
    """Counts the requests a client sends, by method."""

    def __init__(self) -> None:
        self.sent: collections.Counter[str] = collections.Counter()

    async def __call__(self, request: httpx.Request) -> None:
        self.sent[request.method] += 1


@pytest_asyncio.fixture(loop_scope="session")
async def counted(localplane_app: Litestar) -> AsyncIterator[tuple[NeonClient, Requests]]:
    requests = Requests()
    async with NeonClient.for_app(
        localplane_app, api_key=API_KEY, retry=FAST_RETRY, event_hooks={"request": [requests]}
    ) as client:
        yield client, requests


def later(hours: float) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


async def replaced_row(
    meta_sessions: async_sessionmaker[AsyncSession], session_id: uuid.UUID
) -> Branch:
    async with meta_sessions() as db:
        (row,) = await db.scalars(
            sa.select(Branch).where(
                col(Branch.session_id) == session_id, col(Branch.kind) == BranchKind.REPLACED
            )
        )
        return row


async def project_of(meta_sessions: async_sessionmaker[AsyncSession], session_id: uuid.UUID) -> str:
    async with meta_sessions() as db:
        row = await db.get(AgentSession, session_id)
        assert row is not None
        assert row.project_id is not None
        return row.project_id


async def blocked_reports(
    meta_sessions: async_sessionmaker[AsyncSession], branch_row: uuid.UUID
) -> int:
    async with meta_sessions() as db:
        found = await db.scalar(
            sa.select(sa.func.count()).where(
                col(Event.action) == "branch.cleanup_blocked",
                col(Event.target_id) == str(branch_row),
            )
        )
        return found or 0


async def restored_away_from_main(
    session_service: SessionService, checkpoints: CheckpointService, session: SessionView
) -> None:
    """Restores once, then leaves no retained checkpoint taken from the replaced branch, so
    nothing but its children keeps it."""
    one = await checkpoints.create(session.id, label="one")
    await checkpoints.restore(session.id, one.id)
    await checkpoints.create(session.id, label="two")  # from the new live branch: the head
    assert session.head_checkpoint_id is not None
    for checkpoint_id in (session.head_checkpoint_id, one.id):
        await checkpoints.delete(session.id, checkpoint_id)


async def test_a_replaced_branch_whose_dev_branch_is_in_use_is_reported_once_then_deleted(
    *,
    meta_sessions: async_sessionmaker[AsyncSession],
    session_service: SessionService,
    box: Secrets,
    locks: SessionLocks,
    user_id: uuid.UUID,
    neon: NeonClient,
    counted: tuple[NeonClient, Requests],
) -> None:
    client, requests = counted
    checkpoints = CheckpointService(meta_sessions, client, locks=locks)
    branches = BranchService(meta_sessions, neon, box, locks=locks)
    session = await session_service.create(user_id, "parent of a dev branch")
    dev = await branches.create(session.id, ttl=timedelta(hours=1))  # a child of `main`
    await restored_away_from_main(session_service, checkpoints, session)
    assert await checkpoints.cleanup_replaced() == 0
    old = await replaced_row(meta_sessions, session.id)
    assert old.status == BranchStatus.READY
    assert old.error is not None
    assert old.error.startswith("cleanup blocked: the branch has child branches")
    assert str(dev.id) in old.error
    assert await blocked_reports(meta_sessions, old.id) == 1

    # The job runs again and again: nothing changed, so no call and no new report.
    requests.sent.clear()
    for _ in range(3):
        assert await checkpoints.cleanup_replaced() == 0
    assert sum(requests.sent.values()) == 0
    assert await blocked_reports(meta_sessions, old.id) == 1

    # The dev branch ends: the next run deletes the replaced branch.
    await branches.delete(session.id, dev.id)
    assert await checkpoints.cleanup_replaced() == 1
    old = await replaced_row(meta_sessions, session.id)
    assert (old.status, old.error) == (BranchStatus.DELETED, None)
    project_id = await project_of(meta_sessions, session.id)
    assert old.branch_id not in {b.id async for b in neon.iter_branches(project_id)}
    await session_service.delete(session.id)


async def test_an_expired_dev_branch_is_deleted_before_the_replaced_branch_it_hangs_from(
    *,
    meta_sessions: async_sessionmaker[AsyncSession],
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    box: Secrets,
    locks: SessionLocks,
    user_id: uuid.UUID,
    neon: NeonClient,
) -> None:
    branches = BranchService(meta_sessions, neon, box, locks=locks)
    session = await session_service.create(user_id, "expired child")
    dev = await branches.create(session.id, ttl=timedelta(hours=1))
    await restored_away_from_main(session_service, checkpoint_service, session)
    assert (await replaced_row(meta_sessions, session.id)).status == BranchStatus.READY

    # Two hours on, the dev branch has expired (the expiry job has not run yet).
    two_hours_on = CheckpointService(meta_sessions, neon, locks=locks, clock=lambda: later(2))
    assert await two_hours_on.cleanup_replaced() == 1
    old = await replaced_row(meta_sessions, session.id)
    assert old.status == BranchStatus.DELETED
    assert (await branches.get(session.id, dev.id)).status == BranchStatus.DELETED
    left = {b.id async for b in neon.iter_branches(await project_of(meta_sessions, session.id))}
    assert old.branch_id not in left
    await session_service.delete(session.id)


async def test_a_child_agentdb_does_not_know_blocks_once_and_is_looked_at_again_later(
    *,
    meta_sessions: async_sessionmaker[AsyncSession],
    session_service: SessionService,
    locks: SessionLocks,
    user_id: uuid.UUID,
    neon: NeonClient,
    counted: tuple[NeonClient, Requests],
) -> None:
    client, requests = counted
    now = [datetime.now(UTC)]
    checkpoints = CheckpointService(meta_sessions, client, locks=locks, clock=lambda: now[0])
    session = await session_service.create(user_id, "foreign child")
    project_id = await project_of(meta_sessions, session.id)
    live = await neon.find_branch(project_id, "main")
    assert live is not None
    foreign = await neon.create_branch(project_id, parent_id=live.id, name="someone's")
    await restored_away_from_main(session_service, checkpoints, session)
    assert await checkpoints.cleanup_replaced() == 0
    old = await replaced_row(meta_sessions, session.id)
    assert old.error is not None
    assert "not agentdb's" in old.error
    assert foreign.branch.id in old.error

    requests.sent.clear()
    assert await checkpoints.cleanup_replaced() == 0
    assert sum(requests.sent.values()) == 0
    # An hour on it is looked at again (one listing), still blocked, not reported again.
    now[0] += timedelta(hours=1, minutes=1)
    assert await checkpoints.cleanup_replaced() == 0
    assert requests.sent["DELETE"] == 0
    assert requests.sent["GET"] >= 1
    assert await blocked_reports(meta_sessions, old.id) == 1

    await neon.delete_branch(project_id, foreign.branch.id)
    now[0] += timedelta(hours=1, minutes=1)
    assert await checkpoints.cleanup_replaced() == 1
    assert (await replaced_row(meta_sessions, session.id)).status == BranchStatus.DELETED
    await session_service.delete(session.id)


# --- quotas ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_tiers(tmp_path_factory: pytest.TempPathFactory) -> Tiers:
    path: Path = tmp_path_factory.mktemp("tiers") / "tiers.toml"
    path.write_text(TIERS_TOML)
    return load_tiers(path)


async def test_creates_a_crash_left_stop_counting_once_the_reconciler_undid_them(
    *,
    meta_sessions: async_sessionmaker[AsyncSession],
    neon: NeonClient,
    box: Secrets,
    locks: SessionLocks,
    small_tiers: Tiers,
) -> None:
    sessions = SessionService(meta_sessions, neon, box, locks=locks, tiers=small_tiers)
    user = User(name="bo", email=f"bo-{uuid.uuid4()}@example.com", tier="small")
    user_id = user.id
    async with meta_sessions() as db:
        db.add(user)
        await db.flush()
        # Two creates a crash interrupted: intent rows, one with its project already made.
        crashed = [
            AgentSession(
                user_id=user_id,
                name=f"crashed {n}",
                status=SessionStatus.PROVISIONING,
                tier="small",
            )
            for n in range(2)
        ]
        db.add_all(crashed)
        crashed_ids = [c.id for c in crashed]
        await db.commit()
    # The first got as far as its project (the crash came before its id was recorded).
    made = await neon.create_project(name=f"agentdb-{crashed_ids[0]}")
    with pytest.raises(LimitExceeded):
        await sessions.create(user_id, "refused while the crashed creates are unsettled")

    report = await Reconciler(meta_sessions, neon, box, locks=locks, grace=timedelta(0)).run_once()
    assert report.sessions_failed >= 2
    async with meta_sessions() as db:
        states = [await db.get(AgentSession, c, populate_existing=True) for c in crashed_ids]
    assert {(s.status, s.project_id) for s in states if s is not None} == {
        (SessionStatus.FAILED, None)
    }
    assert await neon.find_project(made.project.name) is None
    # The failed sessions stay listed, but hold nothing and take no place.
    assert len(await sessions.list(user_id)) == 2
    first = await sessions.create(user_id, "one")
    second = await sessions.create(user_id, "two")
    with pytest.raises(LimitExceeded):
        await sessions.create(user_id, "three")
    for view in (first, second):
        await sessions.delete(view.id)


async def test_a_failed_create_still_holding_its_project_counts(
    *,
    meta_sessions: async_sessionmaker[AsyncSession],
    neon: NeonClient,
    box: Secrets,
    locks: SessionLocks,
    small_tiers: Tiers,
) -> None:
    sessions = SessionService(meta_sessions, neon, box, locks=locks, tiers=small_tiers)
    user = User(name="cy", email=f"cy-{uuid.uuid4()}@example.com", tier="small")
    user_id = user.id
    async with meta_sessions() as db:
        db.add(user)
        await db.flush()
        db.add(
            AgentSession(
                user_id=user_id,
                name="cleanup failed",
                status=SessionStatus.FAILED,
                tier="small",
                project_id="project-not-yet-deleted",
            )
        )
        await db.commit()
    first = await sessions.create(user_id, "one")
    with pytest.raises(LimitExceeded):
        await sessions.create(user_id, "two")
    await sessions.delete(first.id)
