"""What the database pane shows: the app's tables with their columns and first rows. The live
database is read through the SDK's SQL call (as the session's own role, like an agent); a
checkpoint's preview branch, which the SQL call cannot reach, over its connection string on
the server side, read-only. Connection strings never reach the page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psycopg
from pydantic import JsonValue

from agentdb.sdk import AgentDB

from ._commands import quote_ident

#: Rows shown per table.
SHOWN_ROWS = 50
_COLUMNS_SQL = """
SELECT c.table_schema, c.table_name, c.column_name, c.data_type
FROM information_schema.columns c
JOIN information_schema.tables t USING (table_schema, table_name)
WHERE t.table_type = 'BASE TABLE'
  AND c.table_schema <> 'information_schema' AND c.table_schema NOT LIKE 'pg\\_%'
ORDER BY c.table_schema, c.table_name, c.ordinal_position
"""


@dataclass(frozen=True, slots=True)
class Rows:
    columns: list[str]
    rows: list[list[JsonValue]]
    total: int


#: Runs one query and gives at most `limit` rows of it (and how many there were).
Query = Callable[[str, int], Awaitable[Rows]]


@dataclass(frozen=True, slots=True)
class TableView:
    schema: str
    name: str
    columns: list[tuple[str, str]]
    rows: list[list[JsonValue]]
    total: int

    @property
    def title(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def complete(self) -> bool:
        return len(self.rows) >= self.total


@dataclass(frozen=True, slots=True)
class RowChanges:
    """Rows only in the old state (`removed`) and only in the new one (`added`), over the
    columns both have."""

    columns: list[str]
    removed: list[list[JsonValue]]
    added: list[list[JsonValue]]


def row_changes(before: TableView, after: TableView) -> RowChanges | None:
    """The rows that differ, when both sides were read whole (else None: too many to show)."""
    if not (before.complete and after.complete):
        return None
    names = [n for n, _ in before.columns if n in {m for m, _ in after.columns}]

    def project(table: TableView) -> list[list[JsonValue]]:
        index = [[n for n, _ in table.columns].index(n) for n in names]
        return [[row[i] for i in index] for row in table.rows]

    old, new = project(before), project(after)
    removed = _minus(old, new)
    return RowChanges(names, removed, _minus(new, old))


def _minus(rows: list[list[JsonValue]], other: list[list[JsonValue]]) -> list[list[JsonValue]]:
    """`rows` without one occurrence of each row of `other` (a multiset difference)."""
    left = [repr(r) for r in other]
    out = []
    for row in rows:
        key = repr(row)
        if key in left:
            left.remove(key)
        else:
            out.append(row)
    return out


async def describe(query: Query) -> list[TableView]:
    """The app's tables, with columns and first rows, in name order."""
    listing = await query(_COLUMNS_SQL, 10_000)
    tables: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for schema, table, column, type_ in listing.rows:
        tables.setdefault((str(schema), str(table)), []).append((str(column), str(type_)))
    views = []
    for (schema, table), columns in tables.items():
        target = f"{quote_ident(schema)}.{quote_ident(table)}"
        data = await query(f"SELECT * FROM {target} ORDER BY 1", SHOWN_ROWS)
        views.append(TableView(schema, table, columns, data.rows, data.total))
    return views


def live_query(client: AgentDB, session_id: str) -> Query:
    """Queries on the session's live database, through agentdb's SQL call."""

    async def run(sql: str, limit: int) -> Rows:
        result = await client.sql(session_id, sql, max_rows=limit)
        return Rows([c.name for c in result.columns], list(result.rows), result.row_count)

    return run


async def describe_uri(uri: str) -> list[TableView]:
    """The tables of the database at `uri`, in a read-only transaction."""
    async with await psycopg.AsyncConnection.connect(uri, connect_timeout=10) as conn:
        await conn.set_read_only(True)

        async def run(sql: str, limit: int) -> Rows:
            async with conn.cursor() as cursor:
                await cursor.execute(sql.encode())
                rows = await cursor.fetchmany(limit)
                columns = [d.name for d in cursor.description or []]
                return Rows(columns, [[_json(v) for v in row] for row in rows], cursor.rowcount)

        return await describe(run)


def _json(value: object) -> JsonValue:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
