"""Fresh databases on the session's embedded PostgreSQL for the meta schema's tests: an empty
one per migration test, and one upgraded database per test module."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import pytest_asyncio
from psycopg import sql
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

import meta_schema
from agentdb.pg import ServerInfo


@asynccontextmanager
async def fresh_database(server: ServerInfo) -> AsyncIterator[str]:
    """A new, empty database (dropped afterwards); yields its DSN."""
    name = f"meta_test_{secrets.token_hex(6)}"
    async with await psycopg.AsyncConnection.connect(server.conninfo(), autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.dsn(name)
    finally:
        async with await psycopg.AsyncConnection.connect(
            server.conninfo(), autocommit=True
        ) as conn:
            await conn.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest_asyncio.fixture(loop_scope="session")
async def empty_dsn(pg_server: ServerInfo) -> AsyncIterator[str]:
    async with fresh_database(pg_server) as dsn:
        yield dsn


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def meta_dsn(pg_server: ServerInfo) -> AsyncIterator[str]:
    """A database upgraded to head, shared by one test module."""
    async with fresh_database(pg_server) as dsn:
        await meta_schema.upgrade(dsn)
        yield dsn


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(meta_dsn: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(meta_schema.database_url(meta_dsn), poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def db(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session whose work is rolled back after the test, so tests never see each other."""
    async with AsyncSession(engine, expire_on_commit=False) as session:
        yield session
        await session.rollback()
