"""Parsing a PostgREST request into SQL for the local Data API: `select`, filters, `order`,
`limit`/`offset`, `Prefer`, and the INSERT/UPDATE statements of writes. Identifiers are
`psycopg.sql.Identifier`s checked against the table's columns; every value becomes a bound
parameter appended to the caller's `args`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg import sql

_RESERVED = {"select", "order", "limit", "offset", "columns", "on_conflict"}
_COMPARISONS = {
    "eq": "=",
    "neq": "<>",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "like": "LIKE",
    "ilike": "ILIKE",
    "match": "~",
    "imatch": "~*",
}
_IS_VALUES = {"null": "NULL", "true": "TRUE", "false": "FALSE", "unknown": "UNKNOWN"}


class PostgrestError(Exception):
    """An error answered in PostgREST's shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "message": message, "details": details, "hint": hint}


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    columns: list[str]
    primary_key: list[str]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def column(self, name: str) -> str:
        if name not in self.columns:
            raise PostgrestError(
                400, "42703", f"column {self.name}.{name} does not exist", None, None
            )
        return name


@dataclass
class Prefer:
    representation: bool = False
    count: bool = False
    resolution: str | None = None

    @classmethod
    def parse(cls, header: str) -> Prefer:
        prefer = cls()
        for token in (t.strip() for t in header.split(",")):
            key, _, value = token.partition("=")
            if key == "return":
                prefer.representation = value == "representation"
            elif key == "count":
                prefer.count = value in {"exact", "planned", "estimated"}
            elif key == "resolution":
                prefer.resolution = value
        return prefer


# --- parsing --------------------------------------------------------------------------------


def _split(text: str, sep: str = ",") -> list[str]:
    """Splits on `sep` outside double quotes and parentheses."""
    parts, current, depth, quoted = [], "", 0, False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        if char == sep and not quoted and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _parse_error(what: str, text: str, details: str) -> PostgrestError:
    return PostgrestError(400, "PGRST100", f'"failed to parse {what} ({text})"', details, None)


def select_list(table: Table, select: str | None) -> sql.Composable:
    if select is None or select.strip() == "*":
        return sql.SQL(", ").join(sql.Identifier(c) for c in table.columns)
    items: list[sql.Composable] = []
    for raw in _split(select):
        item = raw.strip()
        if item == "*":
            items.extend(sql.Identifier(c) for c in table.columns)
            continue
        if "(" in item or "::" in item or "->" in item:
            raise _parse_error(
                "select",
                select,
                "embedded resources, casts and JSON paths are not available on the local Data API",
            )
        alias, _, column = item.rpartition(":")
        column = table.column(column.strip().strip('"'))
        target = sql.Identifier(column)
        items.append(
            sql.SQL("{} AS {}").format(target, sql.Identifier(alias.strip())) if alias else target
        )
    if not items:
        raise _parse_error("select", select, "no columns")
    return sql.SQL(", ").join(items)


def _condition(
    table: Table, column: str, expression: str, args: list[str], *, qualify: bool
) -> sql.Composable:
    name = table.column(column)
    ref = sql.Identifier(table.schema, table.name, name) if qualify else sql.Identifier(name)
    negate = expression.startswith("not.")
    body = expression.removeprefix("not.")
    op, dot, operand = body.partition(".")
    if not dot:
        raise _parse_error(
            "filter", expression, f'unexpected end of input expecting operator after "{op}"'
        )
    condition: sql.Composable
    if op in _COMPARISONS:
        if op in {"like", "ilike"}:
            operand = operand.replace("*", "%")
        target = sql.SQL("{}::text").format(ref) if op in {"like", "ilike"} else ref
        args.append(operand)
        condition = sql.SQL("{} {} %s").format(target, sql.SQL(_COMPARISONS[op]))
    elif op == "in":
        if not (operand.startswith("(") and operand.endswith(")")):
            raise _parse_error("filter", expression, "in. expects a list: in.(a,b,c)")
        inner = operand[1:-1]
        values = [_unquote(v) for v in _split(inner)] if inner else []
        args.extend(values)
        condition = (
            sql.SQL("{} IN ({})").format(ref, sql.SQL(", ").join(sql.SQL("%s") for _ in values))
            if values
            else sql.SQL("FALSE")
        )
    elif op == "is":
        if operand.lower() not in _IS_VALUES:
            raise _parse_error(
                "filter", expression, 'is. expects one of "null", "true", "false", "unknown"'
            )
        condition = sql.SQL("{} IS {}").format(ref, sql.SQL(_IS_VALUES[operand.lower()]))
    else:
        raise _parse_error(
            "filter",
            expression,
            f'unknown operator "{op}"; expecting one of ' + ", ".join([*_COMPARISONS, "in", "is"]),
        )
    return sql.SQL("NOT ({})").format(condition) if negate else condition


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':  # noqa: PLR2004
        return value[1:-1].replace('\\"', '"')
    return value


def filters(
    table: Table, query: list[tuple[str, str]], args: list[str], *, qualify: bool
) -> sql.Composable:
    """The filters as one condition; their values are appended to `args`."""
    for key, value in query:
        if key in {"or", "and"} or key.endswith((".or", ".and")):
            raise _parse_error(
                "logic tree", value, "or/and trees are not available on the local Data API"
            )
    conditions = [
        _condition(table, key, value, args, qualify=qualify)
        for key, value in query
        if key not in _RESERVED
    ]
    return sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("TRUE")


_ORDER_ITEM = re.compile(r"^([^.]+)(\.(asc|desc))?(\.(nullsfirst|nullslast))?$")


def order_by(table: Table, order: str | None) -> sql.Composable:
    if not order:
        return sql.SQL("")
    items: list[sql.Composable] = []
    for raw in _split(order):
        match = _ORDER_ITEM.match(raw.strip())
        if match is None:
            raise _parse_error(
                "order", order, "expecting column[.asc|.desc][.nullsfirst|.nullslast]"
            )
        column, _, direction, _, nulls = match.groups()
        items.append(
            sql.SQL("{} {} {}").format(
                sql.Identifier(table.column(column.strip('"'))),
                sql.SQL("DESC" if direction == "desc" else "ASC"),
                sql.SQL("NULLS FIRST" if nulls == "nullsfirst" else "NULLS LAST")
                if nulls
                else sql.SQL(""),
            )
        )
    return sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(items))


def non_negative(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise PostgrestError(
            400, "PGRST100", f'"failed to parse {name} ({raw})"', "expecting a non-negative integer"
        )
    return int(raw)


def json_body(body: bytes) -> object:
    try:
        return json.loads(body or b"null")
    except json.JSONDecodeError as exc:
        raise PostgrestError(400, "PGRST102", "Empty or invalid json", exc.msg) from None


def insert_statement(
    table: Table, params: Mapping[str, str], payload: object, prefer: Prefer, args: list[str]
) -> sql.Composable | None:
    items = payload if isinstance(payload, list) else [payload]
    rows = [r for r in items if isinstance(r, dict)]
    if len(rows) != len(items):
        raise PostgrestError(400, "PGRST102", "All object keys must match", "expecting objects")
    if "columns" in params:
        names = [c.strip().strip('"') for c in params["columns"].split(",") if c.strip()]
    else:
        names = list(dict.fromkeys(key for r in rows for key in r))
    if not rows or not names:
        return None
    for name in names:
        if name not in table.columns:
            raise PostgrestError(
                400,
                "PGRST204",
                f"Could not find the '{name}' column of '{table.schema}.{table.name}' "
                "in the schema cache",
            )
    columns = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    conflict: sql.Composable = sql.SQL("")
    if prefer.resolution in {"merge-duplicates", "ignore-duplicates"}:
        keys = (
            [table.column(c.strip()) for c in params["on_conflict"].split(",")]
            if params.get("on_conflict")
            else table.primary_key
        )
        if not keys:
            raise PostgrestError(
                400, "PGRST100", "an upsert needs on_conflict or a primary key", None
            )
        action = (
            sql.SQL("DO NOTHING")
            if prefer.resolution == "ignore-duplicates"
            else sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n))
                    for n in names
                )
            )
        )
        conflict = sql.SQL(" ON CONFLICT ({}) {}").format(
            sql.SQL(", ").join(sql.Identifier(k) for k in keys), action
        )
    statement = sql.SQL(
        "INSERT INTO {} ({}) SELECT {} FROM json_populate_recordset(NULL::{}, %s::json){}"
        " RETURNING {}.*"
    ).format(table.ident, columns, columns, table.ident, conflict, table.ident)
    args.append(json.dumps(rows))
    return statement


def update_statement(
    table: Table, query: list[tuple[str, str]], payload: object, args: list[str]
) -> sql.Composable | None:
    if not isinstance(payload, dict):
        raise PostgrestError(400, "PGRST102", "Empty or invalid json", "expecting an object")
    if not payload:
        return None
    args.append(json.dumps(payload))  # its placeholder comes before the filters'
    names = [table.column(n) for n in payload]
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = pgrst_body.{}").format(sql.Identifier(n), sql.Identifier(n)) for n in names
    )
    return sql.SQL(
        "UPDATE {} SET {} FROM (SELECT * FROM json_populate_record(NULL::{}, %s::json))"
        " pgrst_body WHERE {} RETURNING {}.*"
    ).format(
        table.ident,
        assignments,
        table.ident,
        filters(table, query, args, qualify=True),
        table.ident,
    )
