"""Services over real collaborators: a fresh meta database per test module on the session's
embedded PostgreSQL, and a Neon client of the in-process local plane (spec-checked)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar
from psycopg import sql
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

import meta_schema
from agentdb.neon import NeonClient, RetryPolicy
from agentdb.neon._client import LOCAL_APP_URL
from agentdb.pg import ServerInfo
from agentdb.services import CheckpointService, Secrets, SessionLocks, SessionService

API_KEY = "services-test-key"
FAST_RETRY = RetryPolicy(
    attempts=40, timeout=60, wait_initial=0.001, wait_max=0.01, wait_jitter=0.002
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def meta_dsn(pg_server: ServerInfo) -> AsyncIterator[str]:
    name = f"services_meta_{secrets.token_hex(6)}"
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        # Like agentdb's own meta database: closed to every role but the superuser.
        await conn.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
        )
    dsn = pg_server.dsn(name)
    await meta_schema.upgrade(dsn)
    yield dsn
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def meta_engine(meta_dsn: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(meta_schema.database_url(meta_dsn), poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
def meta_sessions(meta_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(meta_engine)


def spec_hooks(spec: NeonSpec) -> dict[str, list[Callable[..., Any]]]:
    return {"request": [spec.request_hook()], "response": [spec.response_hook()]}


@pytest_asyncio.fixture(loop_scope="session")
async def neon(localplane_app: Litestar, neon_spec: NeonSpec) -> AsyncIterator[NeonClient]:
    async with NeonClient.for_app(
        localplane_app, api_key=API_KEY, retry=FAST_RETRY, event_hooks=spec_hooks(neon_spec)
    ) as client:
        yield client


def failing_neon(
    app: Litestar, fails: Callable[[httpx.Request], bool], status: int = 500
) -> NeonClient:
    """A client of the local plane whose requests matching `fails` get `status` instead."""
    plane = httpx.ASGITransport(app=app)

    async def handle(request: httpx.Request) -> httpx.Response:
        if fails(request):
            return httpx.Response(
                status, json={"code": "INTERNAL_ERROR", "message": "injected failure"}
            )
        return await plane.handle_async_request(request)

    return NeonClient(
        LOCAL_APP_URL,
        api_key=API_KEY,
        transport=httpx.MockTransport(handle),
        retry=FAST_RETRY,
        operation_poll_interval=0.02,
    )


@pytest.fixture(scope="module")
def box() -> Secrets:
    return Secrets(Secrets.generate_key())


@pytest.fixture
def locks(meta_sessions: async_sessionmaker[AsyncSession]) -> SessionLocks:
    return SessionLocks(meta_sessions)


@pytest.fixture
def session_service(
    meta_sessions: async_sessionmaker[AsyncSession],
    neon: NeonClient,
    box: Secrets,
    locks: SessionLocks,
) -> SessionService:
    return SessionService(meta_sessions, neon, box, locks=locks)


@pytest.fixture
def checkpoint_service(
    meta_sessions: async_sessionmaker[AsyncSession], neon: NeonClient, locks: SessionLocks
) -> CheckpointService:
    return CheckpointService(meta_sessions, neon, locks=locks)


@pytest_asyncio.fixture(loop_scope="session")
async def user_id(meta_sessions: async_sessionmaker[AsyncSession]) -> uuid.UUID:
    user = meta_schema.User(name="ada", email=f"ada-{uuid.uuid4()}@example.com", tier="free")
    created = user.id
    async with meta_sessions() as db:
        db.add(user)
        await db.commit()
    return created


async def execute(uri: str, *statements: str) -> None:
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        for statement in statements:
            await conn.execute(statement)  # type: ignore[arg-type]


async def fetch(uri: str, query: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(uri) as conn:
        cursor = await conn.execute(query)  # type: ignore[arg-type]
        return await cursor.fetchall()
