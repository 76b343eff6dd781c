"""Every flow completes against a local plane that answers like a busy Neon:
`AGENTDB_LOCALPLANE_FAULTS=423=0.3,429=0.1,500=0.05`.

423 and 429 are retried by the client. An injected 500 on a mutation leaves the caller unsure
whether it ran (on Neon it may have), so the flows here do what a real caller must: look
before doing it again (`maybe_applied`, `find_project`, `find_snapshot`, ...).
"""

from __future__ import annotations

import collections
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import psycopg
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar

from agentdb.localplane import create_app, running
from agentdb.neon import NeonClient, NeonNotFound, NeonServerError, NeonTransportError
from agentdb.pg import ServerInfo
from agentdb.settings import Settings

from .conftest import API_KEY, FAST_RETRY, spec_hooks

T = TypeVar("T")
FAULTS = "423=0.3,429=0.1,500=0.05"
ROUNDS = 3
TRIES = 20


@pytest_asyncio.fixture(loop_scope="session")
async def faulty_app(pg_server: ServerInfo, data_dir: Path) -> AsyncIterator[Litestar]:
    app = create_app(Settings(data_dir=data_dir, localplane_faults=FAULTS), server=pg_server)
    async with running(app):
        yield app


async def _unsure(call: Callable[[], Awaitable[T]], look: Callable[[], Awaitable[T | None]]) -> T:
    """Runs a mutation; when it fails in a way that may have applied it, looks for its effect
    (and waits for the operations it started) before trying again."""
    for _ in range(TRIES):
        try:
            return await call()
        except (NeonServerError, NeonTransportError) as error:
            if not error.maybe_applied:
                raise
            found = await look()
            if found is not None:
                return found
    raise AssertionError(f"no success in {TRIES} tries")


async def _remove(
    call: Callable[[], Awaitable[object]], exists: Callable[[], Awaitable[bool]]
) -> None:
    """Deletes something; 404 on a later try means an earlier one did it."""
    for _ in range(TRIES):
        try:
            await call()
        except NeonNotFound:
            return
        except (NeonServerError, NeonTransportError) as error:
            if not error.maybe_applied:
                raise
            if not await exists():
                return
        else:
            return
    raise AssertionError(f"not deleted in {TRIES} tries")


async def _rows(uri: str, *statements: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        cur = None
        for statement in statements:
            cur = await conn.execute(statement)
        return await cur.fetchall() if cur is not None and cur.description else []


async def _create_project(neon: NeonClient, name: str) -> tuple[str, str]:
    """(project id, default branch id), creating the project unless a lost try already did."""

    async def create() -> tuple[str, str]:
        created = await neon.create_project(name=name)
        return created.project.id, created.branch.id

    async def look() -> tuple[str, str] | None:
        project = await neon.find_project(name)
        if project is None:
            return None
        await neon.wait_for_project_operations(project.id)
        branches = [b async for b in neon.iter_branches(project.id)]
        return project.id, next(b.id for b in branches if b.default)

    return await _unsure(create, look)


async def _snapshot(neon: NeonClient, project_id: str, branch_id: str, name: str) -> str:
    async def take() -> str:
        return (await neon.create_snapshot(project_id, branch_id, name=name)).snapshot.id

    async def look() -> str | None:
        found = await neon.find_snapshot(project_id, name)
        if found is None:
            return None
        await neon.wait_for_project_operations(project_id)
        return found.id

    return await _unsure(take, look)


async def _roll_back(neon: NeonClient, project_id: str, snapshot_id: str, live_id: str) -> str:
    """The new live branch id after restoring `snapshot_id` onto `live_id`."""

    async def restore() -> str:
        restored = await neon.restore_snapshot(
            project_id, snapshot_id, target_branch_id=live_id, finalize_restore=True
        )
        return restored.branch.id

    async def look() -> str | None:
        async for branch in neon.iter_branches(project_id):
            if branch.restored_from == snapshot_id and branch.restored_as == live_id:
                await neon.wait_for_project_operations(project_id)
                return branch.id
        return None

    return await _unsure(restore, look)


async def _branch(neon: NeonClient, project_id: str, parent_id: str, name: str) -> str:
    async def create() -> str:
        return (await neon.create_branch(project_id, parent_id=parent_id, name=name)).branch.id

    async def look() -> str | None:
        found = await neon.find_branch(project_id, name)
        if found is None:
            return None
        await neon.wait_for_project_operations(project_id)
        return found.id

    return await _unsure(create, look)


async def _checkpoint_round(neon: NeonClient) -> None:
    name = f"faults-{uuid.uuid4().hex[:8]}"
    project_id, main_id = await _create_project(neon, name)
    uri = await neon.connection_uri(project_id, database_name="neondb", role_name="neondb_owner")
    await _rows(
        uri.get_secret_value(), "CREATE TABLE steps (n int)", "INSERT INTO steps VALUES (1)"
    )
    snapshot_id = await _snapshot(neon, project_id, main_id, "one")
    await _rows(uri.get_secret_value(), "INSERT INTO steps VALUES (2)")

    live_id = await _roll_back(neon, project_id, snapshot_id, main_id)
    assert await _rows(uri.get_secret_value(), "SELECT n FROM steps ORDER BY n") == [(1,)]

    dev_id = await _branch(neon, project_id, live_id, "dev")

    async def dev_exists() -> bool:
        return await neon.find_branch(project_id, "dev") is not None

    await _remove(lambda: neon.delete_branch(project_id, dev_id), dev_exists)

    async def project_exists() -> bool:
        return await neon.find_project(name) is not None

    await _remove(lambda: neon.delete_project(project_id), project_exists)
    assert await neon.find_project(name) is None


async def test_every_flow_completes_under_injected_faults(
    faulty_app: Litestar, neon_spec: NeonSpec
) -> None:
    statuses: collections.Counter[int] = collections.Counter()

    async def count(response: httpx.Response) -> None:
        statuses[response.status_code] += 1

    hooks = spec_hooks(neon_spec)
    hooks["response"].append(count)
    async with NeonClient.for_app(
        faulty_app, api_key=API_KEY, retry=FAST_RETRY, event_hooks=hooks
    ) as neon:
        for _ in range(ROUNDS):
            await _checkpoint_round(neon)
    # The faults really happened, and were ridden out.
    assert statuses[423] > 0
    assert statuses[429] > 0
    assert set(statuses) <= {200, 201, 202, 204, 404, 423, 429, 500}


class LosingAnswers(httpx.AsyncBaseTransport):
    """Hands each request to the app, but loses the answer of the first request matching each
    rule, as a timeout after sending would: the mutation ran and the caller cannot know."""

    def __init__(self, inner: httpx.AsyncBaseTransport, rules: list[tuple[str, str]]) -> None:
        self.inner = inner
        self.rules = [(method, re.compile(pattern)) for method, pattern in rules]
        self.lost: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        for rule in self.rules:
            method, pattern = rule
            if request.method == method and pattern.search(request.url.path):
                self.rules.remove(rule)
                await response.aread()
                self.lost.append(f"{method} {request.url.path}")
                raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


async def test_mutations_whose_answer_was_lost_are_not_done_twice(
    localplane_app: Litestar, neon_spec: NeonSpec
) -> None:
    transport = LosingAnswers(
        httpx.ASGITransport(app=localplane_app),
        [
            ("POST", r"/projects$"),
            ("POST", r"/snapshot$"),
            ("POST", r"/restore$"),
            ("POST", r"/branches$"),
            ("DELETE", r"/branches/"),
            ("DELETE", r"/projects/[^/]+$"),
        ],
    )
    async with NeonClient(
        "http://localplane/api/v2",
        api_key=API_KEY,
        transport=transport,
        operation_poll_interval=0.02,
        retry=FAST_RETRY,
        event_hooks=spec_hooks(neon_spec),
    ) as neon:
        await _checkpoint_round(neon)
    assert not transport.rules, f"some answers were never lost: {transport.rules}"
    assert len(transport.lost) == 6
