"""Isolation: a project's roles reach only that project's databases."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from agentdb.pg import ServerInfo

from .helpers import create_project, direct, fetch, physical


def _with_database(uri: str, dbname: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


async def test_project_role_cannot_reach_another_project(
    neon_http: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    a = await create_project(neon_http, name="a")
    b = await create_project(neon_http, name="b")
    uri_a = a["connection_uris"][0]["connection_uri"]
    uri_b = b["connection_uris"][0]["connection_uri"]
    _, db_b = await physical(uri_b)
    # Through the connection string, a database name is looked up on the endpoint's own branch:
    # another project's database is not there to name.
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        await psycopg.AsyncConnection.connect(_with_database(uri_a, db_b))
    # Straight to PostgreSQL, the role has no CONNECT on it, nor on the cluster's own databases.
    direct_a = await direct(uri_a, pg_server)
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        await psycopg.AsyncConnection.connect(make_conninfo(direct_a, dbname=db_b))
    for shared in ("postgres", "template1", "agentdb_localplane"):
        with pytest.raises(psycopg.OperationalError):
            await psycopg.AsyncConnection.connect(_with_database(uri_a, shared))
        with pytest.raises(psycopg.OperationalError):
            await psycopg.AsyncConnection.connect(make_conninfo(direct_a, dbname=shared))
    assert await fetch(uri_b, "SELECT 1") == [(1,)]


async def test_agent_role_cannot_open_its_database_to_others(neon_http: httpx.AsyncClient) -> None:
    a = await create_project(neon_http)
    uri = a["connection_uris"][0]["connection_uri"]
    _, db = await physical(uri)
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        # The database belongs to the superuser, so the GRANT grants nothing (PostgreSQL
        # only warns) and PUBLIC still cannot connect.
        await conn.execute(f'GRANT CONNECT ON DATABASE "{db}" TO PUBLIC')
        cur = await conn.execute("SELECT has_database_privilege('public', %s, 'CONNECT')", (db,))
        assert await cur.fetchone() == (False,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("CREATE ROLE sneaky LOGIN")
        rows = await conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        )
        assert await rows.fetchone() == (False, False, False)


async def test_roles_use_scram_and_databases_are_closed_to_public(
    neon_http: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    created = await create_project(neon_http)
    role, db = await physical(created["connection_uris"][0]["connection_uri"])
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as su:
        cur = await su.execute(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = %s", (role,)
        )
        assert await cur.fetchone() == (True,)
        cur = await su.execute(
            "SELECT datname FROM pg_database WHERE datname IN (%s, 'postgres', 'template1')"
            " AND has_database_privilege('public', oid, 'CONNECT')",
            (db,),
        )
        assert await cur.fetchall() == []
