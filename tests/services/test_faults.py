"""Whole user flows through the services against a local plane that answers like a busy Neon
(`423=0.3,429=0.1,500=0.05`): 423 and 429 are waited out, so a flow completes, or fails only
where the plane answered 500 to a mutation that may have run; and once the reconciler and the
cleanup job have run, no row is left half-way."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
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
_TRANSITIONAL_SESSION = {
    SessionStatus.PROVISIONING,
    SessionStatus.CHECKPOINTING,
    SessionStatus.RESTORING,
    SessionStatus.DELETING,
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
        faulty_plane,
        api_key=API_KEY,
        retry=QUICK_RETRY,
        event_hooks={"response": [count]},
    ) as neon:
        sessions = SessionService(meta_sessions, neon, box, locks=locks)
        checkpoints = CheckpointService(meta_sessions, neon, locks=locks)
        branches = BranchService(meta_sessions, neon, box, locks=locks)
        created: list[uuid.UUID] = []
        outcomes: collections.Counter[str] = collections.Counter()

        async def flow(n: int) -> None:
            view = await sessions.create(user_id, name=f"flow {n}")
            created.append(view.id)
            uri = await sessions.connection_uri(view.id)
            await execute(uri, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1)")
            one = await checkpoints.create(view.id, label="one")
            await execute(uri, "INSERT INTO t VALUES (2)")
            await checkpoints.restore(view.id, one.id)
            assert await fetch(uri, "SELECT n FROM t ORDER BY n") == [(1,)]
            dev = await branches.create(view.id)
            dev_uri = await branches.connection_uri(view.id, dev.id)
            assert await fetch(dev_uri, "SELECT n FROM t ORDER BY n") == [(1,)]
            preview = await branches.preview(view.id, one.id)
            preview_uri = await branches.connection_uri(view.id, preview.id)
            assert await fetch(preview_uri, "SELECT count(*) FROM t") == [(1,)]
            await sessions.delete(view.id)

        async def tracked(n: int) -> None:
            try:
                await flow(n)
            except ControlPlaneFailed as error:
                # The only acceptable failure: a mutation answered 500 that may have run.
                assert _maybe_applied(error), f"flow {n} failed: {error}"
                outcomes["failed on a 500 that may have applied"] += 1
            else:
                outcomes["completed"] += 1

        for start in range(0, FLOWS, AT_ONCE):
            await asyncio.gather(*(tracked(n) for n in range(start, start + AT_ONCE)))

        reconciler = Reconciler(meta_sessions, neon, box, locks=locks, grace=timedelta(0))
        report = await reconciler.run_once()
        await checkpoints.cleanup_replaced()
        await branches.expire()

    print(f"outcomes: {dict(outcomes)}; statuses: {dict(statuses)}; reconcile: {report}")
    assert outcomes["completed"] + outcomes["failed on a 500 that may have applied"] == FLOWS
    # The faults really happened.
    assert statuses[423] > 0 and statuses[429] > 0 and statuses[500] > 0
    assert not report.errors
    async with meta_sessions() as db:
        session_states = {
            row.id: row.status
            for row in await db.scalars(
                sa.select(AgentSession).where(col(AgentSession.id).in_(created))
            )
        }
        checkpoint_states = list(
            await db.scalars(
                sa.select(col(Checkpoint.status)).where(col(Checkpoint.session_id).in_(created))
            )
        )
        branch_states = list(
            await db.scalars(
                sa.select(col(Branch.status)).where(col(Branch.session_id).in_(created))
            )
        )
    assert not set(session_states.values()) & _TRANSITIONAL_SESSION, session_states
    assert CheckpointStatus.PENDING not in checkpoint_states
    assert CheckpointStatus.DELETING not in checkpoint_states
    assert BranchStatus.PENDING not in branch_states
    assert BranchStatus.DELETING not in branch_states
    # Nothing left on the plane for sessions that ended: deleted or failed sessions own no
    # project any more.
    for session_id, status in session_states.items():
        if status in {SessionStatus.DELETED, SessionStatus.FAILED}:
            assert await _project_named(faulty_plane, session_id) is None


async def _project_named(app: Litestar, session_id: uuid.UUID) -> str | None:
    async with NeonClient.for_app(app, api_key=API_KEY, retry=QUICK_RETRY) as neon:
        found = await neon.find_project(f"agentdb-{session_id}")
        return found.id if found else None
