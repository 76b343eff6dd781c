"""The migrations build exactly the schema the models describe, and `upgrade` can be run at
every start, by several processes at once."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import meta_schema
from meta_schema._base import EnumText
from meta_schema._migrate import MIGRATION_LOCK_KEY

WAIT_SECONDS = 60.0

SCHEMA = """
SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
       || ' ' || coalesce(column_default, '')
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'constraint ' || conrelid::regclass || '.' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
ORDER BY 1
"""


async def fetch_all(dsn: str, query: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await (await conn.execute(query)).fetchall()


async def schema_of(dsn: str) -> list[str]:
    return [str(row[0]) for row in await fetch_all(dsn, SCHEMA)]


async def versions_of(dsn: str) -> list[str]:
    return [str(row[0]) for row in await fetch_all(dsn, "SELECT version_num FROM alembic_version")]


def head_revision() -> str:
    head = ScriptDirectory.from_config(
        meta_schema.alembic_config("postgresql:///x")
    ).get_current_head()
    assert head is not None
    return head


async def upgrades_racing(dsn: str, *upgrades: Awaitable[object]) -> list[object]:
    """Start the upgrades while holding the migration lock, wait until every one of them is
    queued on it, then let them all go at once."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as holder:
        await holder.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
        tasks = [asyncio.ensure_future(upgrade) for upgrade in upgrades]
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            row = await (
                await holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND database = (SELECT oid FROM pg_database"
                    "                 WHERE datname = current_database())"
                )
            ).fetchone()
            assert row is not None
            if row[0] == len(tasks):
                break
            assert not any(task.done() for task in tasks), [t.result() for t in tasks if t.done()]
            assert time.monotonic() < deadline, "the upgrades never queued on the migration lock"
            await asyncio.sleep(0.05)
        await holder.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])
    return await asyncio.gather(*tasks)


async def test_upgrade_creates_every_table(empty_dsn: str):
    await meta_schema.upgrade(empty_dsn)

    tables = await fetch_all(
        empty_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    assert {row[0] for row in tables} == {*meta_schema.metadata().tables, "alembic_version"}
    assert {*meta_schema.metadata().tables} == {
        "users",
        "api_tokens",
        "agent_sessions",
        "checkpoints",
        "branches",
        "events",
        "usage_samples",
        "fleet_migrations",
        "fleet_migration_results",
        "idempotency_records",
        "session_addons",
        "tier_changes",
        "warm_projects",
        "job_runs",
    }
    assert await versions_of(empty_dsn) == [head_revision()]


async def test_upgrade_again_changes_nothing(empty_dsn: str):
    await meta_schema.upgrade(empty_dsn)
    before = await schema_of(empty_dsn)

    await meta_schema.upgrade(empty_dsn)

    assert await schema_of(empty_dsn) == before
    assert await versions_of(empty_dsn) == [head_revision()]


async def test_two_processes_upgrading_at_once_both_succeed(empty_dsn: str):
    code = "import asyncio, os, meta_schema; asyncio.run(meta_schema.upgrade(os.environ['DSN']))"
    env = {
        **os.environ,
        "DSN": empty_dsn,
        "PYTHONPATH": str(Path(meta_schema.__file__).parents[1]),
    }

    async def run_upgrade_process() -> tuple[int | None, bytes]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), WAIT_SECONDS)
        return process.returncode, output

    results = await upgrades_racing(empty_dsn, run_upgrade_process(), run_upgrade_process())

    assert results == [(0, b""), (0, b"")]
    assert await versions_of(empty_dsn) == [head_revision()]


async def test_concurrent_upgrades_in_one_process_both_succeed(empty_dsn: str):
    await upgrades_racing(empty_dsn, meta_schema.upgrade(empty_dsn), meta_schema.upgrade(empty_dsn))

    assert await versions_of(empty_dsn) == [head_revision()]
    assert len(await schema_of(empty_dsn)) > len(meta_schema.metadata().tables)


async def test_downgrade_to_base_drops_everything_and_upgrade_works_again(empty_dsn: str):
    await meta_schema.upgrade(empty_dsn)
    upgraded = await schema_of(empty_dsn)

    # Through env.py's own async engine, which runs its loop in this worker thread.
    await asyncio.to_thread(command.downgrade, meta_schema.alembic_config(empty_dsn), "base")

    relations = await fetch_all(
        empty_dsn, "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
    )
    assert {row[0] for row in relations} == {"alembic_version", "alembic_version_pkc"}
    assert await versions_of(empty_dsn) == []
    assert [line for line in await schema_of(empty_dsn) if "alembic_version" not in line] == []

    await meta_schema.upgrade(empty_dsn)
    assert await schema_of(empty_dsn) == upgraded


async def test_models_and_migrations_describe_the_same_schema(empty_dsn: str):
    await meta_schema.upgrade(empty_dsn)
    engine = create_async_engine(meta_schema.database_url(empty_dsn), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}),
                    meta_schema.metadata(),
                )
            )
    finally:
        await engine.dispose()
    assert differences == []


async def test_check_constraints_match_the_models_and_their_enums(empty_dsn: str):
    # Autogenerate does not compare CHECK constraints: compare their names, and the values of
    # every enum column's CHECK with the Python enum.
    await meta_schema.upgrade(empty_dsn)
    rows = await fetch_all(
        empty_dsn,
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE contype = 'c' AND connamespace = 'public'::regnamespace",
    )
    in_database = {str(name): str(definition) for name, definition in rows}
    in_models = {
        str(constraint.name)
        for table in meta_schema.metadata().tables.values()
        for constraint in table.constraints
        if isinstance(constraint, sa.CheckConstraint)
    }
    assert set(in_database) == in_models

    enum_columns = [
        (table.name, column.name, column.type.enum)
        for table in meta_schema.metadata().tables.values()
        for column in table.columns
        if isinstance(column.type, EnumText)
    ]
    assert len(enum_columns) == 12
    for table, column, enum in enum_columns:
        definition = in_database[f"ck_{table}_{column}"]
        assert re.findall(r"'([^']*)'::text", definition) == [member.value for member in enum]


async def test_offline_mode_writes_the_sql(empty_dsn: str):
    config = meta_schema.alembic_config(empty_dsn)
    config.output_buffer = io.StringIO()

    await asyncio.to_thread(command.upgrade, config, "head", sql=True)

    script = config.output_buffer.getvalue()
    assert "CREATE TABLE agent_sessions" in script
    assert "CREATE TRIGGER events_append_only" in script
    assert await fetch_all(empty_dsn, "SELECT to_regclass('alembic_version')") == [(None,)]


async def test_new_revision_against_an_up_to_date_database_is_empty_and_formatted(
    empty_dsn: str, tmp_path: Path
):
    await meta_schema.upgrade(empty_dsn)
    scripts = tmp_path / "migrations"
    shutil.copytree(Path(meta_schema.__file__).with_name("migrations"), scripts)
    config = meta_schema.alembic_config(empty_dsn)
    config.set_main_option("script_location", str(scripts))

    await asyncio.to_thread(
        command.revision, config, message="nothing new", autogenerate=True, rev_id="9999"
    )

    script = (scripts / "versions" / "9999_nothing_new.py").read_text()
    head = ScriptDirectory.from_config(meta_schema.alembic_config(empty_dsn)).get_current_head()
    assert f"down_revision: str | None = '{head}'" not in script  # ruff format ran
    assert f'down_revision: str | None = "{head}"' in script
    assert script.count("    pass\n") == 2, script
    compile(script, "9999_nothing_new.py", "exec")
