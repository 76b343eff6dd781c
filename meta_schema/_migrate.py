"""Bringing a meta database up to date: alembic configured in code (no alembic.ini), run over
SQLAlchemy's async engine with psycopg, serialized across processes by an advisory lock."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from meta_schema._base import META_REGISTRY

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# Key of the transaction-level advisory lock held while migrating: the ASCII bytes of "agentdb".
MIGRATION_LOCK_KEY = int.from_bytes(b"agentdb")

_DRIVER = "postgresql+psycopg"


def metadata() -> sa.MetaData:
    """The meta database's tables, as alembic's autogenerate compares them."""
    return META_REGISTRY.metadata


def database_url(dsn: str) -> sa.URL:
    """A SQLAlchemy URL with the psycopg driver for a libpq DSN (URI or key=value string).

    A `postgresql+psycopg://` URL passes through unchanged. Unix-socket and multi-host
    addresses, which a URL's host part cannot hold, travel as query parameters, as does every
    other libpq parameter (sslmode, options...).
    """
    if dsn.startswith(f"{_DRIVER}://"):
        return sa.make_url(dsn)
    params = {key: str(value) for key, value in conninfo_to_dict(dsn).items() if value is not None}
    user = params.pop("user", None)
    password = params.pop("password", None)
    dbname = params.pop("dbname", None)
    host = params.get("host", "")
    port = params.get("port", "")
    if host and "/" not in host and "," not in host and "," not in port:
        del params["host"]
        params.pop("port", None)
        return sa.URL.create(
            _DRIVER,
            username=user,
            password=password,
            host=host,
            port=int(port) if port else None,
            database=dbname,
            query=params,
        )
    return sa.URL.create(_DRIVER, username=user, password=password, database=dbname, query=params)


def alembic_config(dsn: str) -> Config:
    """Alembic's configuration for the meta database at `dsn`, for `alembic.command` calls
    (e.g. `command.revision(alembic_config(dsn), autogenerate=True, rev_id="0002", ...)`)."""
    config = Config()
    config.set_main_option("script_location", _escape(str(MIGRATIONS_DIR)))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    # New revisions come out formatted as the rest of the code (ruff is a test dependency).
    config.set_section_option("post_write_hooks", "hooks", "ruff_format")
    config.set_section_option("post_write_hooks", "ruff_format.type", "module")
    config.set_section_option("post_write_hooks", "ruff_format.module", "ruff")
    config.set_section_option(
        "post_write_hooks", "ruff_format.options", "format REVISION_SCRIPT_FILENAME"
    )
    url = database_url(dsn).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", _escape(url))
    return config


async def upgrade(dsn: str) -> None:
    """Run every migration not yet applied (`alembic upgrade head`) on the meta database.

    Safe to call from several processes at once: each waits for a transaction-level advisory
    lock, so the first migrates and commits, and the others then find nothing left to do.
    """
    config = alembic_config(dsn)
    engine = create_async_engine(database_url(dsn), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            # Taken before alembic starts: alembic keeps its current context in a module
            # global, so two upgrades in one process must not interleave either.
            await connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
            # Alembic joins the transaction that holds the lock; committing releases it.
            await connection.run_sync(_upgrade_head, config)
            await connection.commit()
    finally:
        await engine.dispose()


def _upgrade_head(connection: sa.Connection, config: Config) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _escape(value: str) -> str:
    # Alembic's Config is a ConfigParser: a lone "%" (percent-encoded URLs have many) would be
    # read as interpolation.
    return value.replace("%", "%%")
