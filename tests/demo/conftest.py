"""The demo over real parts: the session's embedded PostgreSQL, a fresh meta database per test
module, the shared local plane, and the REST API app in-process; `demo` is the demo with the
offline agent, `served_url` the API with the demo beside it over real HTTP, as `agentdb serve`
serves them. `demo_sign_in` signs in."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio
import uvicorn
from demo_sign_in import ADMIN_TOKEN
from litestar import Litestar
from psycopg import sql
from pydantic import SecretStr

from agentdb.api import create_app
from agentdb.neon import NeonClient, RetryPolicy
from agentdb.pg import ServerInfo
from agentdb.runtime import Runtime, open_runtime
from agentdb.settings import Settings
from demo import Demo, OfflineAgent, create_demo_app, open_demo, with_demo

FAST_RETRY = RetryPolicy(
    attempts=40, timeout=60, wait_initial=0.001, wait_max=0.01, wait_jitter=0.002
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def runtime(
    pg_server: ServerInfo, localplane_app: Litestar, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Runtime]:
    tag = secrets.token_hex(4)
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("demo"),
        admin_token=SecretStr(ADMIN_TOKEN),
        meta_database=f"demo_meta_{tag}",
        project_prefix=f"demo-{tag}-",
        sql_statement_timeout_s=5,
    )
    async with (
        NeonClient.for_app(localplane_app, api_key="demo-tests", retry=FAST_RETRY) as neon,
        open_runtime(settings, server=pg_server, neon=neon) as running,
    ):
        yield running
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(settings.meta_database))
        )


@pytest.fixture(scope="module")
def api_app(runtime: Runtime) -> Litestar:
    return create_app(runtime)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def demo(runtime: Runtime, api_app: Litestar) -> AsyncIterator[Demo]:
    # The offline agent, whatever API keys the environment has.
    async with open_demo(runtime, api_app, agent=OfflineAgent()) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served_url(api_app: Litestar, demo: Demo) -> AsyncIterator[str]:
    """The API with the demo beside it, over real HTTP on a free port."""
    app = with_demo(api_app, create_demo_app(demo))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
