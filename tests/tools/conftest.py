"""The tools over real parts, in process: the session's embedded PostgreSQL, a fresh meta
database per test module, the shared local plane, and the REST API app reached by SDK clients
through httpx's ASGI transport (as `agentdb serve`'s `/mcp` reaches it)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
import pytest_asyncio
from litestar import Litestar
from psycopg import sql
from pydantic import SecretStr

from agentdb.api import create_app
from agentdb.neon import NeonClient, RetryPolicy
from agentdb.pg import ServerInfo
from agentdb.runtime import Runtime, open_runtime
from agentdb.sdk import AgentDB
from agentdb.settings import Settings

ADMIN_TOKEN = "adb_admin_tools_" + "x" * 40
FAST_RETRY = RetryPolicy(
    attempts=40, timeout=60, wait_initial=0.001, wait_max=0.01, wait_jitter=0.002
)
INTERNAL_URL = "http://agentdb"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def runtime(
    pg_server: ServerInfo, localplane_app: Litestar, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Runtime]:
    tag = secrets.token_hex(4)
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("tools"),
        admin_token=SecretStr(ADMIN_TOKEN),
        meta_database=f"tools_meta_{tag}",
        project_prefix=f"tools-{tag}-",
        sql_statement_timeout_s=5,
    )
    async with (
        NeonClient.for_app(localplane_app, api_key="tools-tests", retry=FAST_RETRY) as neon,
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


def client_of(api_app: Litestar, token: str) -> AgentDB:
    """An SDK client of the in-process API app, acting with `token`."""
    return AgentDB.connect(INTERNAL_URL, token, transport=httpx.ASGITransport(app=api_app))


@pytest_asyncio.fixture(loop_scope="session")
async def admin(api_app: Litestar) -> AsyncIterator[AgentDB]:
    async with client_of(api_app, ADMIN_TOKEN) as client:
        yield client


@dataclass
class Tenant:
    """A user with a user token, one ready session and a session token (the agent's)."""

    user_id: uuid.UUID
    user_token: str
    session_id: uuid.UUID
    session_token: str


async def make_tenant(admin: AgentDB, name: str = "agent") -> Tenant:
    user = await admin.create_user(f"{name}-{uuid.uuid4().hex[:8]}@example.com")
    user_token = (await admin.create_user_token(user.id)).token
    session = await admin.create_session(user_id=user.id, name=name)
    session_token = (await admin.create_session_token(session.id)).token
    return Tenant(user.id, user_token, session.id, session_token)


@pytest_asyncio.fixture(loop_scope="session")
async def tenant(admin: AgentDB) -> Tenant:
    return await make_tenant(admin)
