"""Session-wide fixtures: one embedded PostgreSQL and one in-process local control plane,
reached through httpx with every request and response checked against Neon's OpenAPI file."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar
from support import client_for

from agentdb.localplane import LocalPlane, create_app, running
from agentdb.pg import ServerInfo, open_server
from agentdb.settings import Settings

# Runtimes started by tests (and `agentdb serve` started by them) keep no warm pool: each
# would make projects in the background that outlive the test's meta database. The pool has
# tests of its own (tests/services/test_warm_pool.py, tests/api/test_warm_pool.py).
os.environ.setdefault("AGENTDB_WARM_POOL_SIZE", "0")


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


@pytest.fixture
def plane(localplane_app: Litestar) -> LocalPlane:
    """The in-process plane, for waiting on its background work (`await plane.drain()`)."""
    found: LocalPlane = localplane_app.state.plane
    return found


@pytest_asyncio.fixture(loop_scope="session")
async def neon_http(
    localplane_app: Litestar, neon_spec: NeonSpec
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(localplane_app, neon_spec) as client:
        yield client
