"""Restarts of one cluster: data survives, crashes are recovered, ports are remembered."""

import asyncio
import os
import signal
import socket
from pathlib import Path

import psutil
import psycopg
import pytest

from agentdb.pg import EmbeddedPostgres, PostgresStartError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pg-lifecycle") / "pg"


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.cluster_dir / "postmaster.pid").read_text().splitlines()[0])


async def test_data_survives_stop_and_start(data_dir: Path):
    async with EmbeddedPostgres(data_dir) as info:
        first_port = info.port
        async with await psycopg.AsyncConnection.connect(info.dsn(), autocommit=True) as conn:
            await conn.execute("CREATE TABLE kept (note text)")
            await conn.execute("INSERT INTO kept VALUES ('before restart')")
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(info.dsn(), connect_timeout=2)

    async with EmbeddedPostgres(data_dir) as info:
        assert info.port == first_port  # remembered in state.json
        async with await psycopg.AsyncConnection.connect(info.dsn()) as conn:
            rows = await (await conn.execute("SELECT note FROM kept")).fetchall()
    assert rows == [("before restart",)]


async def test_remembered_port_taken_by_another_program_picks_a_new_one(data_dir: Path):
    async with EmbeddedPostgres(data_dir) as info:
        remembered = info.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        # Our own connections just closed leave TIME_WAIT entries on that port.
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", remembered))
        blocker.listen()
        async with EmbeddedPostgres(data_dir) as info:
            assert info.port != remembered
            new_port = info.port
            async with await psycopg.AsyncConnection.connect(info.dsn()) as conn:
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    async with EmbeddedPostgres(data_dir) as info:
        assert info.port == new_port  # the new port is the one remembered now


async def test_start_recovers_after_postmaster_is_killed(data_dir: Path):
    crashed = EmbeddedPostgres(data_dir)
    info = await crashed.start()
    old_pid = postmaster_pid(crashed)
    try:
        async with await psycopg.AsyncConnection.connect(info.dsn(), autocommit=True) as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS crash (note text)")
            await conn.execute("INSERT INTO crash VALUES ('committed before the crash')")
    finally:
        os.kill(old_pid, signal.SIGKILL)
    await asyncio.to_thread(psutil.wait_procs, [psutil.Process(old_pid)], 10)
    assert (crashed.cluster_dir / "postmaster.pid").exists()  # left behind by the crash

    recovered = EmbeddedPostgres(data_dir)
    info = await recovered.start()
    try:
        assert recovered.owns_server
        assert postmaster_pid(recovered) != old_pid
        async with await psycopg.AsyncConnection.connect(info.dsn()) as conn:
            rows = await (await conn.execute("SELECT note FROM crash")).fetchall()
        assert ("committed before the crash",) in rows
    finally:
        await recovered.stop()
    assert not (recovered.cluster_dir / "postmaster.pid").exists()


async def test_failed_start_reports_the_server_log(data_dir: Path):
    async with EmbeddedPostgres(data_dir):
        pass  # makes sure the cluster exists when this test runs alone
    conf = data_dir / "cluster" / "postgresql.conf"
    original = conf.read_text()
    conf.write_text(original + "\nshared_buffers = 'banana'\n")
    try:
        pg = EmbeddedPostgres(data_dir)
        with pytest.raises(PostgresStartError, match="contains errors") as caught:
            await pg.start()
        assert 'invalid value for parameter "shared_buffers": "banana"' in caught.value.log_tail
        assert str(pg.log_file) in str(caught.value)
        assert not pg.owns_server
    finally:
        conf.write_text(original)
    async with (
        EmbeddedPostgres(data_dir) as info,
        await psycopg.AsyncConnection.connect(info.dsn()) as conn,
    ):
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)  # fixed conf starts
