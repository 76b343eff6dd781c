"""Alembic's environment for the meta database: SQLAlchemy's async engine over psycopg, or the
connection a caller hands over in `config.attributes["connection"]` (as `upgrade` does)."""

from __future__ import annotations

import asyncio
from typing import Literal

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

from meta_schema import database_url, metadata
from meta_schema._base import EnumText


def render_item(kind: str, item: object, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render the model layer's column types as the plain types they store, so revisions
    never import the models (whose enums and types will move on)."""
    del autogen_context
    if kind != "type":
        return False
    if isinstance(item, EnumText | AutoString):
        return "sa.Text()"
    if isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata(),
        render_item=render_item,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_with_engine(url: str) -> None:
    engine = create_async_engine(database_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


def main() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(
            url=url,
            target_metadata=metadata(),
            render_item=render_item,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    if url is None:
        raise RuntimeError("no meta database: set sqlalchemy.url or attributes['connection']")
    asyncio.run(run_migrations_with_engine(url))


main()
