"""Checkpoint diffs: describing a database (on a scratch database of the embedded PostgreSQL),
comparing two descriptions, and `CheckpointService.diff` between checkpoints and against the
live database, with each checkpoint read once through a temporary branch."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
import pytest_asyncio
import sqlalchemy as sa
from litestar import Litestar
from psycopg import sql
from sqlmodel import col

from agentdb.neon import NeonClient
from agentdb.pg import ServerInfo
from agentdb.services import (
    CheckpointNotFound,
    CheckpointService,
    Conflict,
    ControlPlaneFailed,
    SessionService,
)
from agentdb.services import diff as diff_module
from agentdb.services.diff import (
    ColumnDescription,
    DatabaseDescription,
    TableDescription,
    compare,
    describe_database,
    reading_error,
)
from agentdb.wire import ColumnShape, DiffView, TableDiff
from meta_schema import AgentSession, Checkpoint, Event

from .conftest import execute, failing_neon

SCHEMA = [
    "CREATE TYPE mood AS ENUM ('happy', 'sad')",
    "CREATE DOMAIN positive AS int CHECK (VALUE > 0)",
    "CREATE SCHEMA shop",
    (
        "CREATE TABLE people (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " name text NOT NULL DEFAULT 'anon', feeling mood, age positive)"
    ),
    "CREATE INDEX people_name ON people (name)",
    (
        "CREATE TABLE shop.orders (id bigserial PRIMARY KEY, person int REFERENCES people (id),"
        " total numeric(10, 2) CHECK (total >= 0))"
    ),
    "CREATE VIEW names AS SELECT name FROM people",
    "CREATE FUNCTION double(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2'",
    "INSERT INTO people (name, feeling, age) VALUES ('ada', 'happy', 36), ('alan', 'sad', 41)",
    "INSERT INTO shop.orders (person, total) VALUES (1, 9.5)",
]


@pytest_asyncio.fixture(loop_scope="session")
async def scratch(pg_server: ServerInfo) -> AsyncIterator[str]:
    """A fresh database with the SCHEMA above; its DSN."""
    name = f"diff_{secrets.token_hex(6)}"
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = pg_server.dsn(name)
    await execute(dsn, *SCHEMA)
    yield dsn
    async with await psycopg.AsyncConnection.connect(pg_server.conninfo(), autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


async def describe(dsn: str) -> DatabaseDescription:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await describe_database(conn)


# --- describing ------------------------------------------------------------------------------


async def test_describe_reads_tables_columns_indexes_constraints_and_objects(
    scratch: str,
) -> None:
    found = await describe(scratch)
    assert set(found.tables) == {"public.people", "shop.orders"}
    people = found.tables["public.people"]
    assert [(c.name, c.type, c.nullable, c.default) for c in people.columns] == [
        ("id", "integer", False, "generated always as identity"),
        ("name", "text", False, "'anon'::text"),
        ("feeling", "mood", True, None),
        ("age", "positive", True, None),
    ]
    assert set(people.indexes) == {"people_pkey", "people_name"}
    assert "(name)" in people.indexes["people_name"]
    assert people.constraints == {"people_pkey": "PRIMARY KEY (id)"}
    assert (people.rows, people.rows_exact) == (2, True)
    assert people.content_hash
    orders = found.tables["shop.orders"]
    assert orders.columns[2].type == "numeric(10,2)"
    assert orders.columns[0].default == "nextval('shop.orders_id_seq'::regclass)"
    assert {d.split(" ")[0] for d in orders.constraints.values()} == {"PRIMARY", "FOREIGN", "CHECK"}
    assert orders.rows == 1
    assert set(found.views) == {"public.names"}
    assert found.types == {
        "public.mood": "enum ('happy', 'sad')",
        "public.positive": "domain integer CHECK ((VALUE > 0))",
    }
    assert set(found.functions) == {"public.double(x integer)"}
    # Stored as JSON and read back (what a checkpoint's summary cache does), it is the same.
    assert DatabaseDescription.from_summary(found.model_dump(mode="json")) == found
    assert DatabaseDescription.from_summary({"version": 0}) is None


async def test_the_schema_hash_ignores_rows_but_not_schema(scratch: str) -> None:
    before = await describe(scratch)
    await execute(scratch, "INSERT INTO people (name) VALUES ('grace')")
    more_rows = await describe(scratch)
    assert more_rows.tables["public.people"].rows == 3
    assert more_rows.schema_hash() == before.schema_hash()
    await execute(scratch, "ALTER TABLE people ADD COLUMN email text")
    assert (await describe(scratch)).schema_hash() != before.schema_hash()


async def test_large_tables_are_estimated_not_counted(
    scratch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await execute(
        scratch, "INSERT INTO people (name) SELECT 'n' || g FROM generate_series(1, 500) g"
    )
    await execute(scratch, "ANALYZE people")
    monkeypatch.setattr(diff_module, "EXACT_MAX_BYTES", 0)
    people = (await describe(scratch)).tables["public.people"]
    assert (people.rows, people.rows_exact, people.content_hash) == (502, False, None)


def test_reading_errors_never_carry_a_connection_string() -> None:
    leaky = psycopg.ProgrammingError('missing "=" after "postgresql://u:hunter2@h/db"')
    assert "hunter2" not in reading_error(leaky)
    assert reading_error(leaky).startswith("ProgrammingError")
    plain = psycopg.OperationalError("connection refused")
    assert reading_error(plain) == "OperationalError: connection refused"


# --- comparing -------------------------------------------------------------------------------


def table(*columns: str, rows: int = 0, content: str = "x", exact: bool = True) -> TableDescription:
    return TableDescription(
        columns=[ColumnDescription(name=c, type="integer", nullable=True) for c in columns],
        rows=rows,
        rows_exact=exact,
        content_hash=content if exact else None,
    )


def diff_of(before: DatabaseDescription, after: DatabaseDescription) -> DiffView:
    return compare(
        before,
        after,
        session_id=uuid.uuid4(),
        from_checkpoint_id=uuid.uuid4(),
        to_checkpoint_id=None,
    )


def by_name(found: DiffView) -> dict[str, TableDiff]:
    return {t.name: t for t in found.tables}


def test_compare_names_added_removed_changed_and_unchanged_tables() -> None:
    before = DatabaseDescription(
        tables={
            "public.kept": table("a", rows=3),
            "public.gone": table("a"),
            "public.grown": table("a", "b", rows=1),
            "public.edited": table("a", rows=2, content="old"),
            "public.big": table("a", rows=10_000, exact=False),
        },
        views={"public.v": "SELECT 1", "public.w": "SELECT 2"},
    )
    after = DatabaseDescription(
        tables={
            "public.kept": table("a", rows=3),
            "public.new": table("x", "y", rows=4),
            "public.grown": TableDescription(
                columns=[
                    ColumnDescription(name="a", type="bigint", nullable=False),
                    ColumnDescription(name="c", type="integer", nullable=True),
                ],
                indexes={"grown_a": "CREATE INDEX grown_a ON public.grown USING btree (a)"},
                rows=5,
                rows_exact=True,
                content_hash="y",
            ),
            "public.edited": table("a", rows=2, content="new"),
            "public.big": table("a", rows=10_000, exact=False),
        },
        views={"public.v": "SELECT 3", "public.x": "SELECT 4"},
        types={"public.mood": "enum ('a')"},
    )
    found = diff_of(before, after)
    tables = by_name(found)
    assert [t.name for t in found.tables] == sorted(tables)
    assert tables["public.kept"].change == "unchanged"
    assert tables["public.kept"].data_changed is False
    assert tables["public.big"].change == "unchanged"
    assert tables["public.big"].data_changed is None
    assert tables["public.new"].model_dump(include={"change", "rows_from", "rows_to"}) == {
        "change": "added",
        "rows_from": None,
        "rows_to": 4,
    }
    assert tables["public.new"].columns_added == ["x", "y"]
    assert tables["public.gone"].change == "removed"
    assert tables["public.gone"].columns_removed == ["a"]
    grown = tables["public.grown"]
    assert grown.change == "changed"
    assert (grown.columns_added, grown.columns_removed) == (["c"], ["b"])
    assert [c.name for c in grown.columns_changed] == ["a"]
    assert grown.columns_changed[0].before == ColumnShape(type="integer", nullable=True)
    assert grown.columns_changed[0].after == ColumnShape(type="bigint", nullable=False)
    assert grown.indexes_added == ["grown_a"]
    assert (grown.rows_from, grown.rows_to) == (1, 5)
    edited = tables["public.edited"]
    assert (edited.change, edited.data_changed, edited.columns_added) == ("changed", True, [])
    assert [(o.kind, o.name, o.change) for o in found.objects] == [
        ("view", "public.v", "changed"),
        ("view", "public.w", "removed"),
        ("view", "public.x", "added"),
        ("type", "public.mood", "added"),
    ]
    assert found.summary.model_dump() == {
        "tables_added": 1,
        "tables_removed": 1,
        "tables_changed": 2,
        "tables_unchanged": 2,
        "objects_changed": 4,
        "identical": False,
    }
    assert found.from_schema_hash != found.to_schema_hash


def test_compare_of_equal_descriptions_is_identical() -> None:
    same = DatabaseDescription(tables={"public.t": table("a", rows=1)}, views={"public.v": "x"})
    found = diff_of(same, same)
    assert found.summary.identical
    assert found.objects == []
    assert [t.change for t in found.tables] == ["unchanged"]


# --- CheckpointService.diff ------------------------------------------------------------------


async def temporary_branches(neon: NeonClient, meta_sessions, session_id: uuid.UUID) -> list[str]:
    async with meta_sessions() as db:
        row = await db.get(AgentSession, session_id)
        assert row is not None
        assert row.project_id is not None
    return [b.name async for b in neon.iter_branches(row.project_id) if b.name.startswith("diff-")]


async def test_diff_between_checkpoints_and_against_the_live_database(
    *,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
    meta_sessions,
    neon: NeonClient,
    localplane_app: Litestar,
) -> None:
    session = await session_service.create(user_id)
    uri = await session_service.connection_uri(session.id)
    await execute(
        uri,
        "CREATE TABLE items (n int)",
        "INSERT INTO items VALUES (1)",
        "CREATE TABLE gone (x int)",
        "CREATE TABLE stable (x int)",
        "INSERT INTO stable VALUES (1), (2)",
    )
    first = await checkpoint_service.create(session.id, label="first")
    await execute(
        uri,
        "DROP TABLE gone",
        "CREATE TABLE fresh (id int PRIMARY KEY)",
        "ALTER TABLE items ADD COLUMN note text",
        "INSERT INTO items VALUES (2, 'b'), (3, 'c')",
    )
    second = await checkpoint_service.create(session.id, label="second")
    await execute(uri, "INSERT INTO fresh VALUES (1)", "DELETE FROM items WHERE n = 3")

    found = await checkpoint_service.diff(session.id, first.id, second.id)
    assert (found.from_checkpoint_id, found.to_checkpoint_id) == (first.id, second.id)
    tables = by_name(found)
    assert {name: t.change for name, t in tables.items()} == {
        "public.fresh": "added",
        "public.gone": "removed",
        "public.items": "changed",
        "public.stable": "unchanged",
    }
    items = tables["public.items"]
    assert items.columns_added == ["note"]
    assert (items.rows_from, items.rows_to, items.rows_exact) == (1, 3, True)
    assert (tables["public.stable"].rows_from, tables["public.stable"].rows_to) == (2, 2)
    assert tables["public.fresh"].constraints_added == ["fresh_pkey"]
    assert found.summary.tables_added == found.summary.tables_removed == 1
    assert found.summary.tables_unchanged == 1
    assert await temporary_branches(neon, meta_sessions, session.id) == []

    head = await checkpoint_service.diff(session.id, second.id)
    assert head.to_checkpoint_id is None
    tables = by_name(head)
    assert (tables["public.items"].rows_from, tables["public.items"].rows_to) == (3, 2)
    assert (tables["public.fresh"].rows_from, tables["public.fresh"].rows_to) == (0, 1)
    assert tables["public.items"].columns_added == []
    assert head.from_schema_hash == head.to_schema_hash

    # Both checkpoints are described once and cached: no temporary branch is needed again,
    # even with a control plane that refuses every restore.
    async with meta_sessions() as db:
        cached = await db.scalars(
            sa.select(Checkpoint).where(col(Checkpoint.id).in_([first.id, second.id]))
        )
        assert all(c.summary and c.schema_hash for c in cached)
        described = await db.scalar(
            sa.select(sa.func.count())
            .select_from(Event)
            .where(Event.session_id == session.id, Event.action == "checkpoint.describe")
        )
        assert described == 2

    def restores(request: httpx.Request) -> bool:
        return request.url.path.endswith("/restore")

    async with failing_neon(localplane_app, restores, status=400) as broken:
        again = await CheckpointService(meta_sessions, broken).diff(session.id, first.id, second.id)
    assert again == found


async def test_a_failed_diff_leaves_no_temporary_branch_and_caches_nothing(
    *,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    user_id: uuid.UUID,
    meta_sessions,
    neon: NeonClient,
    localplane_app: Litestar,
) -> None:
    session = await session_service.create(user_id)
    one = await checkpoint_service.create(session.id)

    def fails(request: httpx.Request) -> bool:
        return request.url.path.endswith("/connection_uri")

    async with failing_neon(localplane_app, fails, status=400) as broken:
        with pytest.raises(ControlPlaneFailed):
            await CheckpointService(meta_sessions, broken).diff(session.id, one.id)
    assert await temporary_branches(neon, meta_sessions, session.id) == []
    async with meta_sessions() as db:
        row = await db.get(Checkpoint, one.id)
        assert row is not None
        assert row.summary is None
    # The same diff works once the control plane does.
    assert (await checkpoint_service.diff(session.id, one.id)).summary.identical


async def test_diff_of_a_deleted_checkpoint_is_refused(
    session_service: SessionService, checkpoint_service: CheckpointService, user_id: uuid.UUID
) -> None:
    session = await session_service.create(user_id)
    one = await checkpoint_service.create(session.id)
    two = await checkpoint_service.create(session.id)
    await checkpoint_service.delete(session.id, one.id)
    with pytest.raises(CheckpointNotFound):
        await checkpoint_service.diff(session.id, one.id)
    with pytest.raises(CheckpointNotFound):
        await checkpoint_service.diff(session.id, two.id, uuid.uuid4())
    await session_service.delete(session.id)
    with pytest.raises(Conflict):
        await checkpoint_service.diff(session.id, two.id)
