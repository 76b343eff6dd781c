"""Supervision: a killed postmaster is noticed, named by the health probe, and restarted on the
same port with its data."""

import asyncio
import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from agentdb.pg import EmbeddedPostgres, PostgresSupervisor, probe_server


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "pg"


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.cluster_dir / "postmaster.pid").read_text().splitlines()[0])


async def test_a_killed_postmaster_is_restarted_with_its_data(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    info = await pg.start()
    try:
        assert await probe_server(info) is None
        assert await pg.is_alive()
        async with await psycopg.AsyncConnection.connect(info.dsn(), autocommit=True) as conn:
            await conn.execute("CREATE TABLE kept (n int)")
            await conn.execute("INSERT INTO kept VALUES (1)")
        supervisor = PostgresSupervisor(pg, interval_s=0.2, backoff_initial_s=0.1)
        async with supervisor.watch():
            os.kill(postmaster_pid(pg), signal.SIGKILL)
            deadline = time.monotonic() + 120
            while supervisor.health.restarts < 1 or not supervisor.health.ok:
                assert time.monotonic() < deadline, supervisor.health
                await asyncio.sleep(0.1)
        restarted = pg.server_info
        assert restarted is not None
        assert restarted.port == info.port  # every DSN handed out stays valid
        assert await probe_server(info) is None
        async with await psycopg.AsyncConnection.connect(info.dsn(), autocommit=True) as conn:
            cur = await conn.execute("SELECT n FROM kept")
            assert await cur.fetchall() == [(1,)]
    finally:
        await pg.stop()


async def test_the_probe_names_a_dead_server(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    info = await pg.start()
    try:
        os.kill(postmaster_pid(pg), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while await pg.is_alive():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        cause = await probe_server(info)
        assert cause is not None
        assert f"{info.host}:{info.port}" in cause
        assert info.password not in cause
        health = await PostgresSupervisor(pg, backoff_initial_s=0.1).check()
        assert health.ok
        assert health.restarts == 1
    finally:
        await pg.stop()
