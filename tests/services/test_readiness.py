"""Readiness (`/readyz`'s checks) against real parts: ready when the meta database, the local
plane and PostgreSQL answer; each failure named with its cause, within the timeout; probes close
together share one check."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

import meta_schema
from agentdb.neon import NeonClient, RetryPolicy
from agentdb.pg import ServerInfo
from agentdb.services import Readiness

Sessions = async_sessionmaker[AsyncSession]


async def answers() -> str | None:
    return None


async def test_ready_when_everything_answers(meta_sessions: Sessions, neon: NeonClient) -> None:
    report = await Readiness(meta_sessions, neon, answers).check()
    assert report.ready
    assert report.causes == {"meta_database": None, "control_plane": None, "postgres": None}


async def test_each_failure_is_named_with_its_cause(
    pg_server: ServerInfo, meta_sessions: Sessions
) -> None:
    # A meta database that does not exist, a control plane nobody listens for, and the
    # supervisor's word that PostgreSQL is down.
    missing = create_async_engine(
        meta_schema.database_url(pg_server.dsn(f"gone_{uuid.uuid4().hex[:8]}")), poolclass=NullPool
    )
    nowhere = NeonClient(
        "http://127.0.0.1:9/api/v2",
        api_key="k",
        retry=RetryPolicy(attempts=1, timeout=1, wait_initial=0, wait_max=0, wait_jitter=0),
    )

    async def down() -> str:
        return "PostgreSQL is not running (exit code -9)"

    try:
        report = await Readiness(async_sessionmaker(missing), nowhere, down, timeout=3).check()
    finally:
        await nowhere.aclose()
        await missing.dispose()
    assert not report.ready
    assert report.causes["meta_database"] is not None
    assert "does not exist" in report.causes["meta_database"]
    assert report.causes["control_plane"] is not None
    assert report.causes["postgres"] == "PostgreSQL is not running (exit code -9)"


async def test_a_check_that_hangs_fails_within_the_timeout(
    meta_sessions: Sessions, neon: NeonClient
) -> None:
    async def hangs() -> str | None:
        await asyncio.sleep(3600)
        return None

    report = await Readiness(meta_sessions, neon, hangs, timeout=0.2).check()
    assert report.causes["postgres"] == "no answer within 0.2 s"
    assert report.causes["meta_database"] is None


async def test_probes_close_together_share_one_check(
    meta_sessions: Sessions, neon: NeonClient
) -> None:
    calls: list[int] = []

    async def counted() -> str | None:
        calls.append(1)
        return None

    readiness = Readiness(meta_sessions, neon, counted, cache_for=60)
    first, second = await readiness.check(), await readiness.check()
    assert first is second
    assert len(calls) == 1
