import asyncio
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from agentdb.pg import PostgresError, ServerInfo

TRICKY_PASSWORD = "p@ss:w/rd?#% é"


def make_info(bin_dir: Path, password: str = TRICKY_PASSWORD) -> ServerInfo:
    return ServerInfo(
        host="127.0.0.1",
        port=5432,
        superuser="postgres",
        password=password,
        bin_dir=bin_dir,
        embedded=True,
    )


def test_repr_hides_password(server: ServerInfo):
    assert server.password
    assert server.password not in repr(server)
    assert server.password not in str(server)
    assert "127.0.0.1" in repr(server)


def test_dsn_percent_encodes_password_and_dbname(tmp_path: Path):
    info = make_info(tmp_path)
    dsn = info.dsn("my db")
    assert TRICKY_PASSWORD not in dsn
    parsed = conninfo_to_dict(dsn)
    assert parsed["password"] == TRICKY_PASSWORD
    assert parsed["dbname"] == "my db"
    assert parsed["host"] == "127.0.0.1"
    assert parsed["port"] == "5432"


def test_dsn_brackets_ipv6_and_encodes_socket_dirs(tmp_path: Path):
    ipv6 = ServerInfo(
        host="::1", port=5433, superuser="u", password="", bin_dir=tmp_path, embedded=False
    )
    assert ipv6.dsn() == "postgresql://u@[::1]:5433/postgres"
    socket = ServerInfo(
        host="/run/postgresql",
        port=5432,
        superuser="u",
        password="x",
        bin_dir=tmp_path,
        embedded=False,
    )
    assert conninfo_to_dict(socket.dsn())["host"] == "/run/postgresql"


def test_conninfo_round_trips(tmp_path: Path):
    parsed = conninfo_to_dict(make_info(tmp_path).conninfo("app"))
    assert parsed == {
        "host": "127.0.0.1",
        "port": "5432",
        "user": "postgres",
        "password": TRICKY_PASSWORD,
        "dbname": "app",
    }


def test_binary_finds_client_tools_and_rejects_unknown(server: ServerInfo):
    for name in ("pg_dump", "pg_restore", "psql"):
        assert server.binary(name).is_file()
    with pytest.raises(PostgresError, match="no_such_tool is missing"):
        server.binary("no_such_tool")


async def test_client_tools_connect_with_subprocess_env(server: ServerInfo):
    env = server.subprocess_env()
    assert env["PGHOST"] == "127.0.0.1"
    assert env["PGPORT"] == str(server.port)
    assert env["PGUSER"] == "postgres"
    assert env["PGPASSWORD"] == server.password
    process = await asyncio.create_subprocess_exec(
        str(server.binary("psql")),
        "-XAtc",
        "SELECT current_user || ' ' || version()",
        "postgres",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().startswith("postgres PostgreSQL 18")
