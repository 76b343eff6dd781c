"""Whole user flows through the services against a local plane that answers like a busy Neon
(`423=0.3,429=0.1,500=0.05`): 423 and 429 are waited out, so a flow completes, or fails only
where the plane answered 500 to a mutation that may have run; and once the reconciler and the
cleanup job have run, no row is left half-way."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest_asyncio
import sqlalchemy as sa
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from agentdb.localplane import create_app, running
from agentdb.neon import NeonClient, NeonHTTPError, NeonTransportError, RetryPolicy
from agentdb.pg import ServerInfo
from agentdb.services import (
    BranchService,
    CheckpointService,
    ControlPlaneFailed,
    Reconciler,
    Secrets,
    SessionLocks,
    SessionService,
)
from agentdb.settings import Settings
from meta_schema import (
    AgentSession,
    Branch,
    BranchStatus,
    Checkpoint,
    CheckpointStatus,
    SessionStatus,
)

from .conftest import API_KEY, execute, fetch

FAULTS = "423=0.3,429=0.1,500=0.05"
FLOWS = 30
AT_ONCE = 6
#: Production's rule (wait out 423/429/503 until a deadline), with short waits.
QUICK_RETRY = RetryPolicy(
    attempts=200,
    timeout=60,
    wait_initial=0.005,
    wait_max=0.05,
    wait_jitter=0.01,
    retry_after_max=0.2,
)
#: Rows in these states are half-way through a workflow.
_TRANSITIONAL = {
    *(f"session:{s}" for s in ("provisioning", "checkpointing", "restoring", "deleting")),
    *(f"checkpoint:{s}" for s in (CheckpointStatus.PENDING, CheckpointStatus.DELETING)),
    *(f"branch:{s}" for s in (BranchStatus.PENDING, BranchStatus.DELETING)),
}


@pytest_asyncio.fixture(loop_scope="session")
async def faulty_plane(pg_server: ServerInfo, data_dir: Path) -> AsyncIterator[Litestar]:
    app = create_app(Settings(data_dir=data_dir, localplane_faults=FAULTS), server=pg_server)
    async with running(app):
        yield app


def _maybe_applied(error: BaseException) -> bool:
    """Whether a failure goes back to the plane answering a mutation with a 5xx (or losing the
    answer): the one failure a caller cannot rule out."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, NeonHTTPError | NeonTransportError) and cause.maybe_applied:
            return True
        cause = cause.__cause__
    return False


@dataclass
class Flows:
    """The services a user reaches, over one faulty plane, and what each flow came to."""

    sessions: SessionService
    checkpoints: CheckpointService
    branches: BranchService
    user_id: uuid.UUID
    created: list[uuid.UUID] = field(default_factory=list)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)

    async def run(self, n: int) -> None:
        try:
            await self._flow(n)
        except ControlPlaneFailed as error:
            if _maybe_applied(error):
                self.outcomes["failed on a 500 that may have applied"] += 1
            else:
                self.unexpected.append(f"flow {n}: {error}")
        else:
            self.outcomes["completed"] += 1

    async def _flow(self, n: int) -> None:
        view = await self.sessions.create(self.user_id, name=f"flow {n}")
        self.created.append(view.id)
        uri = await self.sessions.connection_uri(view.id)
        await execute(uri, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1)")
        one = await self.checkpoints.create(view.id, label="one")
        await execute(uri, "INSERT INTO t VALUES (2)")
        await self.checkpoints.restore(view.id, one.id)
        assert await fetch(uri, "SELECT n FROM t ORDER BY n") == [(1,)]
        dev = await self.branches.create(view.id)
        dev_uri = await self.branches.connection_uri(view.id, dev.id)
        assert await fetch(dev_uri, "SELECT n FROM t ORDER BY n") == [(1,)]
        preview = await self.branches.preview(view.id, one.id)
        preview_uri = await self.branches.connection_uri(view.id, preview.id)
        assert await fetch(preview_uri, "SELECT count(*) FROM t") == [(1,)]
        await self.sessions.delete(view.id)


async def test_flows_complete_under_injected_faults(
    faulty_plane: Litestar,
    meta_sessions: async_sessionmaker[AsyncSession],
    box: Secrets,
    user_id: uuid.UUID,
) -> None:
    statuses: collections.Counter[int] = collections.Counter()

    async def count(response: httpx.Response) -> None:
        statuses[response.status_code] += 1

    locks = SessionLocks(meta_sessions)
    async with NeonClient.for_app(
        faulty_plane, api_key=API_KEY, retry=QUICK_RETRY, event_hooks={"response": [count]}
    ) as neon:
        flows = Flows(
            SessionService(meta_sessions, neon, box, locks=locks),
            CheckpointService(meta_sessions, neon, locks=locks),
            BranchService(meta_sessions, neon, box, locks=locks),
            user_id,
        )
        for start in range(0, FLOWS, AT_ONCE):
            await asyncio.gather(*(flows.run(n) for n in range(start, start + AT_ONCE)))
        reconciler = Reconciler(meta_sessions, neon, box, locks=locks, grace=timedelta(0))
        report = await reconciler.run_once()
        await flows.checkpoints.cleanup_replaced()

    assert flows.unexpected == [], flows.outcomes
    assert sum(flows.outcomes.values()) == FLOWS
    # The faults really happened.
    assert statuses[423] > 0
    assert statuses[429] > 0
    assert statuses[500] > 0
    assert not report.errors
    states = await _states(meta_sessions, flows.created)
    assert not states & _TRANSITIONAL, states
    # Sessions that ended (deleted, or failed) own no project any more.
    for session_id, status in await _session_states(meta_sessions, flows.created):
        if status in {SessionStatus.DELETED, SessionStatus.FAILED}:
            assert await _project_named(faulty_plane, session_id) is None


async def _session_states(
    meta_sessions: async_sessionmaker[AsyncSession], created: list[uuid.UUID]
) -> list[tuple[uuid.UUID, SessionStatus]]:
    async with meta_sessions() as db:
        rows = await db.execute(
            sa.select(col(AgentSession.id), col(AgentSession.status)).where(
                col(AgentSession.id).in_(created)
            )
        )
        return [(session_id, status) for session_id, status in rows]


async def _states(
    meta_sessions: async_sessionmaker[AsyncSession], created: list[uuid.UUID]
) -> set[str]:
    """Every state a row of these sessions is in, as "<table>:<status>"."""
    found = {f"session:{status}" for _, status in await _session_states(meta_sessions, created)}
    async with meta_sessions() as db:
        for table, model in (("checkpoint", Checkpoint), ("branch", Branch)):
            statuses = await db.scalars(
                sa.select(col(model.status)).where(col(model.session_id).in_(created)).distinct()
            )
            found |= {f"{table}:{status}" for status in statuses}
    return found


async def _project_named(app: Litestar, session_id: uuid.UUID) -> str | None:
    async with NeonClient.for_app(app, api_key=API_KEY, retry=QUICK_RETRY) as neon:
        found = await neon.find_project(f"agentdb-{session_id}")
        return found.id if found else None
