"""open_server: embedded by default, or an external server given by AGENTDB_DATABASE_URL."""

from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from agentdb.pg import NotSuperuserError, PostgresStartError, ServerInfo, open_server
from agentdb.settings import Settings


async def test_external_database_url_is_used_as_is(server: ServerInfo, tmp_path: Path):
    settings = Settings(data_dir=tmp_path, database_url=SecretStr(server.dsn()))
    async with open_server(settings) as external:
        assert not external.embedded
        assert (external.host, external.port, external.superuser) == (
            server.host,
            server.port,
            "postgres",
        )
        assert external.password == server.password
        assert external.bin_dir == server.bin_dir
        async with await psycopg.AsyncConnection.connect(external.dsn()) as conn:
            assert await (await conn.execute("SELECT current_user")).fetchone() == ("postgres",)
    assert not (tmp_path / "pg").exists()  # no embedded cluster was made
    async with await psycopg.AsyncConnection.connect(server.dsn()) as conn:
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)  # still running


async def test_external_role_without_superuser_is_refused(server: ServerInfo, tmp_path: Path):
    async with await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True) as conn:
        await conn.execute("CREATE ROLE plain_user LOGIN PASSWORD 'plain-password'")
    url = f"postgresql://plain_user:plain-password@127.0.0.1:{server.port}/postgres"
    settings = Settings(data_dir=tmp_path, database_url=SecretStr(url))
    with pytest.raises(NotSuperuserError, match="'plain_user', which is not a superuser"):
        async with open_server(settings):
            pass


async def test_external_errors_never_echo_the_password(server: ServerInfo, tmp_path: Path):
    secret = "hunter2-secret"
    bad_urls = [
        f"postgresql://postgres:{secret}@127.0.0.1:{server.port}/postgres",  # wrong password
        f"host=127.0.0.1 password={secret} nonsense",  # unparsable
    ]
    for url in bad_urls:
        settings = Settings(data_dir=tmp_path, database_url=SecretStr(url))
        with pytest.raises(PostgresStartError, match="AGENTDB_DATABASE_URL") as caught:
            async with open_server(settings):
                pass
        assert secret not in str(caught.value)
        assert caught.value.__cause__ is None


async def test_without_database_url_starts_embedded_in_data_dir(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, database_url=None, pg_port=None)
    async with open_server(settings) as info:
        assert info.embedded
        assert (tmp_path / "pg" / "cluster" / "PG_VERSION").read_text().strip() == "18"
        async with await psycopg.AsyncConnection.connect(info.dsn()) as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(info.dsn(), connect_timeout=2)
