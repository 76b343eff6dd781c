"""Pick the PostgreSQL server from settings: external (AGENTDB_DATABASE_URL) or embedded."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from agentdb.pg._binaries import DEFAULT_VERSION, install_dir
from agentdb.pg._embedded import LOG_SETTINGS, EmbeddedPostgres, log_settings_differences
from agentdb.pg._errors import NotSuperuserError, PostgresStartError
from agentdb.pg._server_info import ServerInfo

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from agentdb.settings import Settings

_log = structlog.get_logger(__name__)


@asynccontextmanager
async def open_server(settings: Settings) -> AsyncIterator[ServerInfo]:
    """The server agentdb uses, for as long as the block runs.

    With `database_url` set it is that server (left running, of course); otherwise the embedded
    cluster in `<data_dir>/pg`, stopped on exit if this call started it.
    """
    if settings.database_url is not None:
        yield await connect_external(settings.database_url.get_secret_value())
        return
    async with EmbeddedPostgres(settings.data_dir / "pg", port=settings.pg_port) as info:
        yield info


async def connect_external(dsn: str) -> ServerInfo:
    """Check that `dsn` reaches a server as a superuser and describe it as a `ServerInfo`."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # The parser's message quotes the string, which may hold the password.
        raise PostgresStartError(
            "AGENTDB_DATABASE_URL is not a valid PostgreSQL connection string: "
            "use postgresql://user:password@host:port/dbname"
        ) from None
    try:
        async with await psycopg.AsyncConnection.connect(
            dsn, connect_timeout=10, autocommit=True
        ) as conn:
            cursor = await conn.execute(
                "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"
            )
            row = await cursor.fetchone()
            cursor = await conn.execute(
                "SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY(%s)",
                (list(LOG_SETTINGS),),
            )
            log_differences = log_settings_differences(
                {str(name): str(value) for name, value in await cursor.fetchall()}
            )
            info = conn.info
            host, port, user = info.host, info.port, info.user
            password, server_version = info.password or "", info.server_version
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise PostgresStartError(
            f"cannot connect to AGENTDB_DATABASE_URL ({reason}): check the URL and that the "
            "server is running"
        ) from None
    if row is None or not row[0]:
        raise NotSuperuserError(
            f"AGENTDB_DATABASE_URL connects as {user!r}, which is not a superuser: "
            "use a superuser role (the local control plane creates roles and databases)"
        )
    major = server_version // 10000
    if major > DEFAULT_VERSION:
        # pg_dump refuses to dump a server newer than itself.
        _log.warning("pg_external_newer_than_tools", server=major, tools=DEFAULT_VERSION)
    if log_differences:
        # agentdb does not reconfigure a server it was only given; its operator should.
        _log.warning(
            "pg_external_log_settings",
            advice="set these on the server so its log carries no tenant statement text or values",
            settings={name: LOG_SETTINGS[name] for name in log_differences},
        )
    _log.info("pg_external", host=host, port=port, user=user, server_version=major)
    return ServerInfo(
        host=host,
        port=port,
        superuser=user,
        password=password,
        bin_dir=install_dir(DEFAULT_VERSION) / "bin",
        embedded=False,
    )
