"""Tenant governance in the shared cluster: per-role limits the tenant cannot undo, the reaper
that cancels and ends tenant backends past their limits, and connections reserved for agentdb."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from psycopg import errors, sql

from agentdb.localplane import LocalPlane
from agentdb.localplane._governance import Limits, reap
from agentdb.pg import ServerInfo

from .helpers import create_project, physical

_DEFAULTS = Limits()


async def _tenant(neon_http: httpx.AsyncClient) -> tuple[str, str]:
    """A new project's connection URI and its login role."""
    created = await create_project(neon_http)
    uri: str = created["connection_uris"][0]["connection_uri"]
    role, _ = await physical(uri)
    return uri, role


async def _role_state(server: ServerInfo, role: str) -> tuple[int, set[str]]:
    async with await psycopg.AsyncConnection.connect(server.conninfo(), autocommit=True) as su:
        cur = await su.execute(
            "SELECT r.rolconnlimit, coalesce(s.setconfig, '{}') FROM pg_roles r"
            " LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0"
            " WHERE r.rolname = %s",
            (role,),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), set(row[1])


def _expected_settings(limits: Limits) -> set[str]:
    return {f"{k}={v}" for k, v in limits.role_settings().items()}


async def test_a_project_role_gets_its_limits_as_role_settings(
    neon_http: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    _uri, role = await _tenant(neon_http)
    connlimit, settings = await _role_state(pg_server, role)
    assert connlimit == _DEFAULTS.role_connections == 20
    assert _expected_settings(_DEFAULTS) <= settings
    assert "temp_file_limit=1024MB" in settings
    assert "idle_in_transaction_session_timeout=60000ms" in settings
    assert "client_connection_check_interval=500ms" in settings


async def test_the_tenant_cannot_raise_or_reset_its_temp_file_limit(
    neon_http: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    uri, role = await _tenant(neon_http)
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        cur = await conn.execute("SHOW temp_file_limit")
        assert await cur.fetchone() == ("1GB",)
        for statement in (
            "ALTER ROLE current_user SET temp_file_limit = '100GB'",
            "ALTER ROLE current_user RESET temp_file_limit",
            "SET temp_file_limit = '100GB'",
            "ALTER ROLE current_user CONNECTION LIMIT 1000",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                await conn.execute(statement)
        # RESET ALL by a non-superuser leaves the superuser-only settings in place.
        await conn.execute("ALTER ROLE current_user RESET ALL")
    _connlimit, settings = await _role_state(pg_server, role)
    assert "temp_file_limit=1024MB" in settings


async def test_existing_roles_are_governed_again_at_plane_start(
    neon_http: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    _uri, role = await _tenant(neon_http)
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as su:
        # A role made before governance existed.
        await su.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 100").format(sql.Identifier(role)))
        await su.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(sql.Identifier(role)))
    async with LocalPlane.open(pg_server, meter_interval_s=3600) as restarted:
        connlimit, settings = await _role_state(pg_server, role)
        assert connlimit == 20
        assert _expected_settings(_DEFAULTS) <= settings
        # Idempotent: a second pass finds nothing to change.
        assert role not in await restarted._engine.govern_roles()


async def _until(check: Any, what: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def _tenant_sleep(uri: str, outcomes: dict[str, str]) -> None:
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        # The tenant lifts its own timeout: only the reaper stops it.
        await conn.execute("SET statement_timeout = 0")
        try:
            await conn.execute("SELECT pg_sleep(120)")
            outcomes["sleep"] = "finished"
        except errors.QueryCanceled:
            outcomes["sleep"] = "cancelled"


async def _tenant_stubborn_loop(uri: str, outcomes: dict[str, str]) -> None:
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute("SET statement_timeout = 0")
        try:
            await conn.execute(
                "DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(0.2); "
                "EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$"
            )
            outcomes["loop"] = "finished"
        except psycopg.OperationalError:
            outcomes["loop"] = "terminated"


async def test_the_reaper_cancels_long_tenant_statements_and_ends_idle_transactions(
    neon_http: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    uri, _role = await _tenant(neon_http)
    limits = Limits(statement_max_s=2, idle_in_transaction_s=2)
    outcomes: dict[str, str] = {}
    idle_pid: list[int] = []
    idle_reaped = asyncio.Event()

    async def tenant_idle_in_transaction() -> None:
        conn = await psycopg.AsyncConnection.connect(uri)
        try:
            await conn.execute("SET idle_in_transaction_session_timeout = 0")
            await conn.execute("SELECT 1")  # a transaction is open now, and left idle
            idle_pid.append(conn.info.backend_pid)
            await idle_reaped.wait()
            try:
                await conn.execute("SELECT 1")
                outcomes["idle_tx"] = "alive"
            except psycopg.OperationalError:
                outcomes["idle_tx"] = "terminated"
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def superuser_sleep() -> None:
        async with await psycopg.AsyncConnection.connect(
            pg_server.conninfo(), autocommit=True
        ) as su:
            await su.execute("SELECT pg_sleep(4)")
            outcomes["superuser"] = "finished"

    tasks = [
        asyncio.create_task(_tenant_sleep(uri, outcomes)),
        asyncio.create_task(_tenant_stubborn_loop(uri, outcomes)),
        asyncio.create_task(tenant_idle_in_transaction()),
        asyncio.create_task(superuser_sleep()),
    ]
    hits: list[tuple[int, str]] = []

    async def reaped_all() -> bool:
        async with await psycopg.AsyncConnection.connect(
            pg_server.conninfo(), autocommit=True
        ) as su:
            hits.extend(await reap(su, limits))
        if idle_pid and (idle_pid[0], "terminate") in hits:
            idle_reaped.set()
        return all(t.done() for t in tasks)

    await _until(reaped_all, f"the reaper did not stop every tenant backend: {outcomes}", 120)
    await asyncio.gather(*tasks)
    assert outcomes == {
        "sleep": "cancelled",
        "loop": "terminated",
        "idle_tx": "terminated",
        "superuser": "finished",
    }


async def test_a_connection_flood_stops_at_the_role_limit_and_agentdb_still_connects(
    neon_http: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    uri, _role = await _tenant(neon_http)
    flood: list[psycopg.AsyncConnection[Any]] = []
    try:
        flood.extend(
            [
                await psycopg.AsyncConnection.connect(uri, autocommit=True)
                for _ in range(_DEFAULTS.role_connections)
            ]
        )
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            await psycopg.AsyncConnection.connect(uri, autocommit=True)
        async with await psycopg.AsyncConnection.connect(
            pg_server.conninfo(), autocommit=True
        ) as su:
            cur = await su.execute("SHOW superuser_reserved_connections")
            row = await cur.fetchone()
            if pg_server.embedded:
                assert row == ("100",)
    finally:
        for conn in flood:
            await conn.close()


async def test_a_backend_past_its_memory_bound_is_ended_and_the_tenant_connects_again(
    neon_http: httpx.AsyncClient, plane: LocalPlane
) -> None:
    uri, _ = await _tenant(neon_http)
    before = plane.backend_memory_max_mb
    plane.backend_memory_max_mb = 64
    try:
        async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
            # Any role may raise its own work_mem; this sort would then hold ~500 MB.
            await conn.execute("SET work_mem = '2GB'")
            with pytest.raises(psycopg.OperationalError):
                await conn.execute(
                    "SELECT count(*) FROM (SELECT md5(g::text) AS m"
                    " FROM generate_series(1, 5000000) AS g ORDER BY 1) AS s"
                )
    finally:
        plane.backend_memory_max_mb = before
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM generate_series(1, 1000)")
        assert await cur.fetchone() == (1000,)


def _priority(pid: int) -> tuple[int, str]:
    """(nice value, the scheduling autogroup's line: '' where the kernel has none)."""
    try:
        with open(f"/proc/{pid}/autogroup") as group:  # noqa: PTH123 - a procfs knob
            autogroup = group.read().strip()
    except FileNotFoundError:
        autogroup = ""
    return psutil.Process(pid).nice(), autogroup


async def test_a_busy_tenant_backend_yields_the_cpu_to_the_plane(
    neon_http: httpx.AsyncClient, plane: LocalPlane, pg_server: ServerInfo
) -> None:
    uri, _ = await _tenant(neon_http)
    async with (
        await psycopg.AsyncConnection.connect(uri, autocommit=True) as tenant,
        await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as own,
    ):
        tenant_pid, own_pid = tenant.info.backend_pid, own.info.backend_pid
        statements = [
            asyncio.create_task(tenant.execute("SELECT pg_sleep(4)")),
            asyncio.create_task(own.execute("SELECT pg_sleep(4)")),
        ]

        async def lowered() -> bool:
            return _priority(tenant_pid)[0] == 19

        # Lowered when first seen, to the lowest once the statement has run a while.
        await _until(lowered, "the busy tenant backend kept its CPU priority", deadline_s=30)
        nice, autogroup = _priority(tenant_pid)
        # PostgreSQL gives every backend its own session, so its scheduling group is its own
        # and must be lowered too, or the nice value weighs against nothing.
        assert autogroup == "" or autogroup.endswith("nice 19"), autogroup
        # The plane's (superuser) backends keep theirs: they are served first.
        nice, autogroup = _priority(own_pid)
        assert nice == 0
        assert autogroup == "" or autogroup.endswith("nice 0"), autogroup
        await asyncio.gather(*statements)
