"""The embedded cluster's log carries no statement text, values or secrets: its settings, and
what an error of a client leaves in the log."""

import uuid

import psycopg
import pytest

from agentdb.pg import EmbeddedPostgres, ServerInfo
from agentdb.pg._embedded import LOG_SETTINGS, apply_log_settings, log_settings_differences


async def _settings(server: ServerInfo) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(LOG_SETTINGS),)
        )
        return {str(name): str(value) for name, value in await cur.fetchall()}


async def test_every_log_setting_is_in_force(server: ServerInfo) -> None:
    current = await _settings(server)
    assert set(current) == set(LOG_SETTINGS)
    assert log_settings_differences(current) == []
    assert current["log_min_error_statement"] == "panic"
    assert current["log_error_verbosity"] == "terse"
    assert current["log_statement"] == "none"
    # Applying them again (what attaching to a running cluster does) changes nothing.
    await apply_log_settings(server)
    assert await _settings(server) == current


def test_differences_name_what_is_missing() -> None:
    current = dict(LOG_SETTINGS) | {"log_statement": "all", "log_error_verbosity": "VERBOSE"}
    assert log_settings_differences(current) == ["log_error_verbosity", "log_statement"]
    assert log_settings_differences({}) == []  # settings a server version lacks are skipped


async def test_a_clients_failing_statement_leaves_no_text_in_the_log(
    shared_cluster: tuple[EmbeddedPostgres, ServerInfo],
) -> None:
    pg, server = shared_cluster
    secret = f"secret{uuid.uuid4().hex}"
    before = pg.log_file.stat().st_size
    async with await psycopg.AsyncConnection.connect(server.dsn(), autocommit=True) as conn:
        for failing in (
            f"SELECT '{secret}'::int",
            f"SELECT * FROM no_table_{secret}",
            f"DO $$ BEGIN RAISE WARNING '{secret}'; RAISE EXCEPTION '{secret}'; END $$",
        ):
            with pytest.raises(psycopg.Error):
                await conn.execute(failing)
        # A line after the errors: writes to the log are synchronous, so theirs came before.
        barrier = f"barrier{uuid.uuid4().hex}"
        await conn.execute(f"DO $$ BEGIN RAISE LOG '{barrier}'; END $$")
    with pg.log_file.open("rb") as log:
        log.seek(before)
        written = log.read().decode("utf-8", errors="replace")
    assert barrier in written
    assert secret not in written
