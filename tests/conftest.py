"""Session-wide fixtures: one embedded PostgreSQL and one in-process local control plane,
reached through httpx with every request and response checked against Neon's OpenAPI file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar

from agentdb.localplane import create_app
from agentdb.pg import ServerInfo, open_server
from agentdb.settings import Settings


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agentdb")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_server(data_dir: Path) -> AsyncIterator[ServerInfo]:
    # AGENTDB_DATABASE_URL, when set, runs the suite against that server instead.
    async with open_server(Settings(data_dir=data_dir)) as info:
        yield info


@pytest.fixture(scope="session")
def neon_spec() -> NeonSpec:
    return NeonSpec.load()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def localplane_app(pg_server: ServerInfo, data_dir: Path) -> AsyncIterator[Litestar]:
    app = create_app(Settings(data_dir=data_dir), server=pg_server)
    async with running(app):
        yield app


@asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[Litestar]:
    """Runs the app's lifespan in a task of its own: Litestar's lifespan holds an anyio cancel
    scope, which must be left by the task that entered it (fixture teardown runs in another)."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def life() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(life())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        await task  # raises the startup error
    try:
        yield app
    finally:
        stop.set()
        await task


def client_for(
    app: Litestar,
    spec: NeonSpec,
    token: str | None = "test-key",  # noqa: S107
) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://localplane/api/v2",
        headers=headers,
        timeout=60,
        **spec.validating_client_kwargs(),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def neon_http(
    localplane_app: Litestar, neon_spec: NeonSpec
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(localplane_app, neon_spec) as client:
        yield client
