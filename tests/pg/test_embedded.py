"""Security, auth and error behaviour of the embedded cluster."""

import asyncio
import os
import socket
import stat
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from agentdb.pg import DataDirError, EmbeddedPostgres, PortInUseError, ServerInfo


async def fetch_one(conninfo: str, query: str) -> tuple[object, ...]:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        row = await (await conn.execute(query)).fetchone()
    assert row is not None
    return row


async def test_superuser_connects_over_tcp_with_password(server: ServerInfo):
    row = await fetch_one(
        server.dsn(),
        "SELECT current_user, inet_server_addr()::text, current_setting('is_superuser'),"
        " current_setting('server_version_num')::int",
    )
    assert row[:3] == ("postgres", "127.0.0.1/32", "on")
    assert row[3] // 10000 == 18
    assert await fetch_one(server.conninfo(), "SELECT 1") == (1,)


async def test_server_listens_on_loopback_only_with_scram_rules(server: ServerInfo):
    settings = await fetch_one(
        server.dsn(),
        "SELECT current_setting('listen_addresses'), current_setting('unix_socket_directories'),"
        " current_setting('wal_level'), current_setting('max_connections'),"
        " current_setting('superuser_reserved_connections')",
    )
    # 300 slots for tenants, 100 only agentdb's superuser connections may take.
    assert settings == ("127.0.0.1", "", "minimal", "400", "100")
    async with await psycopg.AsyncConnection.connect(server.dsn()) as conn:
        rules = await (
            await conn.execute("SELECT type, address, auth_method, error FROM pg_hba_file_rules")
        ).fetchall()
    assert rules == [
        ("host", "127.0.0.1", "scram-sha-256", None),
        ("host", "::1", "scram-sha-256", None),
    ]


async def test_role_password_is_scram_and_wrong_password_fails(server: ServerInfo):
    async with await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True) as conn:
        await conn.execute("CREATE ROLE scram_app LOGIN PASSWORD 'right-password'")
        row = await (
            await conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_app'")
        ).fetchone()
    assert row is not None
    assert str(row[0]).startswith("SCRAM-SHA-256$")

    def as_app(password: str) -> str:
        return make_conninfo(
            host=server.host, port=server.port, user="scram_app", dbname="postgres",
            password=password,
        )  # fmt: skip

    assert await fetch_one(as_app("right-password"), "SELECT current_user") == ("scram_app",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(as_app("wrong-password"))


async def test_connect_without_password_fails(server: ServerInfo, tmp_path: Path):
    conninfo = make_conninfo(
        host=server.host,
        port=server.port,
        user=server.superuser,
        dbname="postgres",
        passfile=str(tmp_path / "no-pgpass"),
    )
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        await psycopg.AsyncConnection.connect(conninfo)


def test_password_file_is_private_and_cluster_dir_belongs_to_server_account(
    shared_cluster: tuple[EmbeddedPostgres, ServerInfo],
):
    pg, info = shared_cluster
    password_file = pg.data_dir / "superuser.password"
    assert password_file.read_text().strip() == info.password
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password_file.stat().st_uid == os.geteuid()
    cluster = pg.cluster_dir.stat()
    assert stat.S_IMODE(cluster.st_mode) == 0o700
    if os.geteuid() == 0:
        assert cluster.st_uid != 0  # postgres refuses to run as root
    assert not list(pg.data_dir.glob(".initdb-pw-*"))


async def test_pgvector_extension_is_available(server: ServerInfo):
    async with await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True) as conn:
        await conn.execute("CREATE DATABASE vector_check")
    try:
        async with await psycopg.AsyncConnection.connect(
            server.dsn("vector_check"), autocommit=True
        ) as conn:
            await conn.execute("CREATE EXTENSION vector")
            row = await (
                await conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector")
            ).fetchone()
        assert row == (1.0,)
    finally:
        async with await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier("vector_check")))


async def test_second_object_attaches_and_its_stop_leaves_server_up(
    shared_cluster: tuple[EmbeddedPostgres, ServerInfo],
):
    owner, info = shared_cluster
    second = EmbeddedPostgres(owner.data_dir)
    attached = await second.start()
    assert attached == info
    assert owner.owns_server
    assert not second.owns_server
    await second.stop()
    assert await fetch_one(info.dsn(), "SELECT 1") == (1,)


async def test_configured_port_in_use_raises(tmp_path: Path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        pg = EmbeddedPostgres(tmp_path / "pg", port=port)
        with pytest.raises(PortInUseError, match=rf"port {port} .*AGENTDB_PG_PORT") as caught:
            await pg.start()
    assert caught.value.port == port
    assert not pg.owns_server
    # Failing on the port comes before initdb, so nothing was created.
    assert not (tmp_path / "pg" / "cluster").exists()


async def test_data_dir_that_is_a_file_raises(tmp_path: Path):
    data_dir = tmp_path / "pg"
    data_dir.write_text("not a directory")
    with pytest.raises(DataDirError, match="is a file, not a directory"):
        await EmbeddedPostgres(data_dir).start()
    with pytest.raises(DataDirError, match="is a file, not a directory"):
        await EmbeddedPostgres(data_dir / "below").start()


async def test_cluster_dir_with_foreign_contents_raises(tmp_path: Path):
    cluster = tmp_path / "pg" / "cluster"
    cluster.mkdir(parents=True)
    (cluster / "notes.txt").write_text("mine")
    with pytest.raises(DataDirError, match="not empty and not a PostgreSQL cluster"):
        await EmbeddedPostgres(tmp_path / "pg").start()
    assert (cluster / "notes.txt").read_text() == "mine"


async def test_concurrent_starts_share_one_server(tmp_path: Path):
    first, second = EmbeddedPostgres(tmp_path / "pg"), EmbeddedPostgres(tmp_path / "pg")
    infos = await asyncio.gather(first.start(), second.start())
    try:
        assert infos[0] == infos[1]
        assert sorted([first.owns_server, second.owns_server]) == [False, True]
        assert await fetch_one(infos[0].dsn(), "SELECT 1") == (1,)
    finally:
        await first.stop()
        await second.stop()
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(infos[0].dsn(), connect_timeout=2)
