"""Fleet migrations through the SDK against a served `agentdb serve` (its event stream over real
HTTP), and embedded (`AgentDB.local`, whose waits poll) for the halt and resume: a canary that
finishes, `wait_for_migration`'s terminal view with the progress on the way, a rollback, a
failure that halts and a resume that rolls on past it, and refused input. Each test targets
its own user's sessions, so tests sharing a server do not reach each other's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from support import API_LINE, clean_env, serving

from agentdb.sdk import (
    AgentDB,
    ConflictError,
    InvalidRequestError,
    Migration,
    MigrationRollout,
    MigrationTarget,
    NotFoundError,
)
from agentdb.settings import Settings

ADMIN_TOKEN = "adb_admin_sdk-migrations-token-0123456789"
#: A wait in these tests is seconds; this only keeps a hung one from eating the suite's budget.
WAIT = 120.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("sdk-migrations") / "data"
    with serving(clean_env(AGENTDB_ADMIN_TOKEN=ADMIN_TOKEN), data_dir, ("serve",), API_LINE) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def remote(served: str) -> AsyncIterator[AgentDB]:
    async with AgentDB.connect(served, ADMIN_TOKEN) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["remote", "embedded"])
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AgentDB]:
    """Both modes, for the test that resumes: embedded, waits poll (an event stream through
    httpx's ASGITransport would arrive whole at its end)."""
    if request.param == "embedded":
        client = AgentDB.local(settings=Settings(data_dir=tmp_path_factory.mktemp("sdk-mig-emb")))
    else:
        client = AgentDB.connect(request.getfixturevalue("served"), ADMIN_TOKEN)
    async with client:
        yield client


async def sessions_of_a_new_user(db: AgentDB, count: int) -> tuple[str, list[str]]:
    """A user with `count` sessions, each with a `todo` table."""
    user = await db.create_user(f"{uuid.uuid4().hex[:10]}@example.com")
    sids = []
    for _ in range(count):
        session = await db.create_session(user_id=user.id)
        await db.sql(session.id, "create table todo (id int primary key, title text)")
        sids.append(str(session.id))
    return str(user.id), sids


def name() -> str:
    return f"m_{uuid.uuid4().hex[:12]}"


async def columns(db: AgentDB, sid: str) -> list[str]:
    result = await db.sql(
        sid,
        "select column_name from information_schema.columns"
        " where table_name = 'todo' order by ordinal_position",
    )
    return [str(row[0]) for row in result.rows]


async def test_a_canary_then_the_rest_finishes_and_rolls_back(remote: AgentDB):
    user_id, sids = await sessions_of_a_new_user(remote, 3)
    seen: list[Migration] = []
    created = await remote.create_migration(
        name(),
        "alter table todo add column done bool not null default false",
        down="alter table todo drop column done",
        target=MigrationTarget(user_ids=[uuid.UUID(user_id)]),
        rollout=MigrationRollout(canary=1, concurrency=2),
    )
    assert created.status in {"pending", "canary", "rolling"}  # answered before it ends
    assert created.has_down
    finished = await remote.wait_for_migration(created.id, timeout=WAIT, on_progress=seen.append)

    assert (finished.status, finished.total) == ("finished", 3)
    assert finished.counts.applied == 3
    assert finished.counts.failed == finished.counts.pending == 0
    assert seen[-1] == finished  # the terminal view was reported too, once
    assert len(seen) == len({v.model_dump_json() for v in seen})
    for sid in sids:
        assert await columns(remote, sid) == ["id", "title", "done"]
    results = await remote.list_migration_sessions(created.id)
    assert sorted(str(r.session_id) for r in results) == sorted(sids)
    assert [str(r.session_id) for r in results] == sorted(str(r.session_id) for r in results)
    assert sum(r.canary for r in results) == 1
    assert all(r.status == "applied" and r.checkpoint_id is not None for r in results)
    page = await remote.list_migration_sessions(created.id, limit=1)
    rest = await remote.list_migration_sessions(created.id, after=page[0].session_id)
    assert [r.session_id for r in page + rest] == [r.session_id for r in results]
    assert created.id in [m.id for m in await remote.list_migrations()]
    assert (await remote.get_migration(created.id)).status == "finished"

    rolled_back = await remote.rollback_migration(created.id, wait=True, timeout=WAIT)
    assert rolled_back.status == "rolled_back"
    assert rolled_back.counts.rolled_back == 3
    for sid in sids:
        assert await columns(remote, sid) == ["id", "title"]


async def test_a_failure_halts_and_a_resume_with_continue_rolls_on(db: AgentDB):
    user_id, sids = await sessions_of_a_new_user(db, 3)
    # One session already has the column: `up` fails there, and only there.
    odd = sids[0]
    await db.sql(odd, "alter table todo add column note text")
    halted = await db.create_migration(
        name(),
        "alter table todo add column note text",
        target={"user_ids": [user_id]},
        rollout={"concurrency": 1},
        wait=True,
        timeout=WAIT,
    )
    assert halted.status == "halted"
    assert halted.counts.failed == 1
    assert halted.error
    (failed,) = await db.list_migration_sessions(halted.id, status="failed")
    assert str(failed.session_id) == odd
    assert failed.error
    assert "note" in failed.error

    # Without `continue`, the failed session is tried again, fails again, and halts it again.
    again = await db.resume_migration(halted.id, wait=True, timeout=WAIT)
    assert (again.status, again.counts.failed) == ("halted", 1)

    resumed = await db.resume_migration(halted.id, continue_=True)
    assert resumed.status != "halted"  # moved on before the answer
    done = await db.wait_for_migration(halted.id, timeout=WAIT)
    assert done.status == "finished"
    assert (done.counts.applied, done.counts.failed) == (2, 1)
    assert done.total == 3


async def test_bad_migrations_are_refused(remote: AgentDB):
    user_id, _ = await sessions_of_a_new_user(remote, 1)
    target = MigrationTarget(user_ids=[uuid.UUID(user_id)])
    with pytest.raises(InvalidRequestError) as bad:
        await remote.create_migration("has spaces", "select 1", target=target)
    assert bad.value.fields == ["name"]
    with pytest.raises(InvalidRequestError) as bad_canary:
        await remote.create_migration(name(), "select 1", target=target, rollout={"canary": "150%"})
    assert bad_canary.value.fields == ["rollout.canary"]
    taken = name()
    await remote.create_migration(taken, "select 1", target=target, wait=True, timeout=WAIT)
    with pytest.raises(ConflictError):
        await remote.create_migration(taken, "select 1", target=target)
    with pytest.raises(NotFoundError):
        await remote.wait_for_migration(uuid.uuid4(), timeout=WAIT)
