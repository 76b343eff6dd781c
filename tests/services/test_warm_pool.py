"""The warm pool: ready projects made ahead, taken whole by a session create (its id, root
checkpoint and connection), refilled, replaced when their tier changes, cleaned up after a fill
that died, drained; and never mistaken for an orphan by the reconciler."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass, field
from functools import partial

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from agentdb.neon import NeonClient
from agentdb.services import (
    CheckpointService,
    Reconciler,
    Secrets,
    SessionLocks,
    SessionService,
    WarmPool,
    project_name,
    project_spec,
)
from agentdb.tiers import BUILTIN_TIERS, Tier, Tiers
from meta_schema import Checkpoint, Event, SessionStatus, WarmProject

from .conftest import execute, fetch


@dataclass
class Env:
    meta: async_sessionmaker[AsyncSession]
    neon: NeonClient
    box: Secrets
    locks: SessionLocks
    prefix: str = field(default_factory=lambda: f"warm-{secrets.token_hex(4)}-")

    def pool(
        self, *, size: int = 1, tiers: Tiers = BUILTIN_TIERS, kicks: list[str] | None = None
    ) -> WarmPool:
        return WarmPool(
            self.meta,
            self.neon,
            self.box,
            tiers=tiers,
            size=lambda tier: tiers.warm_pool_size(tier, size),
            spec=lambda tier: project_spec(tier, None),
            name=partial(project_name, prefix=self.prefix),
            refill_soon=None if kicks is None else partial(kicks.append, "refill"),
        )

    def sessions(self, pool: WarmPool, tiers: Tiers = BUILTIN_TIERS) -> SessionService:
        return SessionService(
            self.meta,
            self.neon,
            self.box,
            locks=self.locks,
            tiers=tiers,
            project_prefix=self.prefix,
            warm=pool,
        )

    async def projects(self) -> set[str]:
        return {p.name async for p in self.neon.iter_projects() if p.name.startswith(self.prefix)}

    def named(self, *ids: uuid.UUID) -> set[str]:
        return {f"{self.prefix}{i}" for i in ids}


@pytest.fixture
def env(
    meta_sessions: async_sessionmaker[AsyncSession],
    neon: NeonClient,
    box: Secrets,
    locks: SessionLocks,
) -> Env:
    return Env(meta_sessions, neon, box, locks)


async def warm_rows(meta: async_sessionmaker[AsyncSession]) -> list[WarmProject]:
    async with meta() as db:
        return list(await db.scalars(sa.select(WarmProject).order_by(col(WarmProject.created_at))))


async def drained(env: Env, pool: WarmPool) -> None:
    await pool.drain()
    assert await warm_rows(env.meta) == []


async def test_a_create_takes_a_ready_project_whole(env: Env, user_id: uuid.UUID) -> None:
    kicks: list[str] = []
    pool = env.pool(kicks=kicks)
    report = await pool.fill()
    assert (report.made, report.failed) == (1, 0)
    assert await pool.sizes() == {"free": 1}
    [warm] = await warm_rows(env.meta)
    sessions = env.sessions(pool)
    view = await sessions.create(user_id, name="quick")
    # The session is the pool's project, named after it already; nothing was made for it.
    assert view.id == warm.id
    assert view.status == SessionStatus.READY
    assert view.name == "quick"
    assert await env.projects() == env.named(warm.id)
    assert await pool.sizes() == {}
    assert kicks == ["refill"]
    # Its root checkpoint is the snapshot taken when the project was made.
    async with env.meta() as db:
        root = await db.get(Checkpoint, warm.root_checkpoint_id)
        assert root is not None
        assert (root.session_id, root.label) == (view.id, "root")
        assert root.snapshot_id == warm.snapshot_id
        assert view.head_checkpoint_id == root.id
        [created] = await db.scalars(sa.select(Event).where(col(Event.session_id) == view.id))
        assert created.details == {"phase": "succeeded", "status": "ready", "warm": "true"}
    # It works as a session made the slow way: SQL, and a restore to its root.
    await execute(await sessions.connection_uri(view.id), "create table notes (body text)")
    checkpoints = CheckpointService(env.meta, env.neon, locks=env.locks)
    await checkpoints.restore(view.id, root.id)
    rows = await fetch(await sessions.connection_uri(view.id), "select to_regclass('notes')")
    assert rows == [(None,)]
    # The next fill puts one back.
    assert (await pool.fill()).made == 1
    assert await pool.sizes() == {"free": 1}
    await sessions.delete(view.id)
    await drained(env, pool)
    assert await env.projects() == set()


async def test_concurrent_creates_never_share_a_project(env: Env, user_id: uuid.UUID) -> None:
    pool = env.pool(size=2)
    await pool.fill()
    warm_ids = {row.id for row in await warm_rows(env.meta)}
    sessions = env.sessions(pool)
    views = await asyncio.gather(*(sessions.create(user_id, name=f"s{i}") for i in range(3)))
    ids = {view.id for view in views}
    assert len(ids) == 3
    assert len(ids & warm_ids) == 2  # two took the pool's projects, the third made its own
    assert all(view.status == SessionStatus.READY for view in views)
    assert await env.projects() == env.named(*ids)
    for view in views:
        await sessions.delete(view.id)
    await drained(env, pool)


async def test_projects_made_for_a_tier_as_it_was_are_not_taken_and_are_replaced(
    env: Env, user_id: uuid.UUID
) -> None:
    before = env.pool()
    await before.fill()
    [stale] = await warm_rows(env.meta)
    # The free tier now gives a bigger compute: the project made before is not what it gives.
    free = BUILTIN_TIERS.find("free")
    assert free is not None
    changed = Tiers(
        default="free",
        tiers=(Tier(**{**free.model_dump(), "compute_max_cu": 2}), *BUILTIN_TIERS.tiers[1:]),
    )
    after = env.pool(tiers=changed)
    sessions = env.sessions(after, changed)
    view = await sessions.create(user_id)
    assert view.id != stale.id
    report = await after.fill()
    assert (report.made, report.discarded) == (1, 1)
    [fresh] = await warm_rows(env.meta)
    assert fresh.fingerprint == after.key(changed.tiers[0]).fingerprint != stale.fingerprint
    assert await env.projects() == env.named(view.id, fresh.id)
    await sessions.delete(view.id)
    await drained(env, after)


async def test_a_fill_that_died_is_cleaned_up_by_the_next(env: Env) -> None:
    pool = env.pool()
    # A fill wrote its row and made its project, then the process died (no project id kept).
    row = WarmProject(pool="free", fingerprint="x", org_id=None)
    async with env.meta(expire_on_commit=False) as db:
        db.add(row)
        await db.commit()
    await env.neon.create_project(name=project_name(row.id, env.prefix))
    report = await pool.fill()
    assert (report.made, report.discarded) == (1, 1)
    [made] = await warm_rows(env.meta)
    assert made.ready
    assert made.id != row.id
    assert await env.projects() == env.named(made.id)
    await drained(env, pool)
    assert await env.projects() == set()


async def test_the_reconciler_deletes_no_pool_project_but_one_the_pool_lost(env: Env) -> None:
    pool = env.pool(size=2)
    await pool.fill()
    kept, lost = await warm_rows(env.meta)
    reconciler = Reconciler(env.meta, env.neon, env.box, locks=env.locks, project_prefix=env.prefix)
    report = await reconciler.run_once()
    assert report.errors == ()
    assert await env.projects() == env.named(kept.id, lost.id)
    # A crash between the pool row's delete and its project's: the project is nobody's.
    async with env.meta() as db:
        await db.execute(sa.delete(WarmProject).where(col(WarmProject.id) == lost.id))
        await db.commit()
    await reconciler.run_once()
    assert await env.projects() == env.named(kept.id)
    await drained(env, pool)


async def test_a_user_in_another_organization_gets_a_project_of_their_own(env: Env) -> None:
    pool = env.pool()
    await pool.fill()
    [warm] = await warm_rows(env.meta)
    free = BUILTIN_TIERS.find("free")
    assert free is not None
    async with env.meta() as db:
        assert await pool.take(db, free, "org-elsewhere") is None
        assert await pool.take(db, free, None) is not None
        await db.rollback()  # not taken after all: the row is back
    assert [row.id for row in await warm_rows(env.meta)] == [warm.id]
    await drained(env, pool)
