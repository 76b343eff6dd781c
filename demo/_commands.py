"""The offline agent's command language: a few plain-words forms for the usual steps of
building an app's database, and raw SQL for everything else. Parsing is pure; each command
becomes SQL (with `$n` parameters for values) or an action ("undo", "help", ...)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

#: Shown on the page and by `help`: the whole language, one form per line.
COMMANDS_HELP: tuple[tuple[str, str], ...] = (
    ("create table todos with title text, done boolean", "a table (an id column is added)"),
    ("add column due date to todos", "a column"),
    ("insert into todos title=Buy milk, done=false", "a row (quote values with commas)"),
    ("update todos set done=true where id=1", "rows matching col=value [and ...]"),
    ("delete from todos where id=1", "rows matching col=value [and ...]"),
    ("show todos", "the first rows of a table"),
    ("tables", "the tables and their columns"),
    ("undo", "back to the checkpoint before the last one"),
    ("sql <any SQL>", "raw SQL, run as written (SQL keywords work without 'sql')"),
    ("help", "this list"),
)

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_ ]*(\(\s*\d+\s*(,\s*\d+\s*)?\))?(\[\])?$")
_SQL_KEYWORDS = {
    "alter",
    "begin",
    "comment",
    "create",
    "delete",
    "drop",
    "explain",
    "grant",
    "insert",
    "revoke",
    "select",
    "show",
    "table",
    "truncate",
    "update",
    "values",
    "with",
}
MAX_SHOWN_ROWS = 20


class CommandError(ValueError):
    """Input the language does not understand; the message says what would work."""


@dataclass(frozen=True, slots=True)
class Sql:
    """SQL to run through the `run_sql` tool; `summary` says in words what it does."""

    sql: str
    summary: str
    params: list[str | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Action:
    """A command that is not one SQL statement: "undo", "help", "tables"."""

    name: str


Command = Sql | Action


def quote_ident(name: str) -> str:
    """`name` as a quoted identifier, folded to lower case as PostgreSQL does unquoted ones."""
    return '"' + name.lower().replace('"', '""') + '"'


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """Splits at `separator` outside single or double quotes and parentheses."""
    parts: list[str] = []
    current: list[str] = []
    quote: str | None = None
    depth = 0
    for char in text:
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _value(text: str) -> str | None:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # noqa: PLR2004
        return text[1:-1]
    if text.lower() == "null":
        return None
    return text


def _assignments(text: str, what: str) -> list[tuple[str, str | None]]:
    pairs = []
    for part in split_top_level(text):
        name, sep, value = part.partition("=")
        if not sep or not re.fullmatch(_IDENT, name.strip()):
            raise CommandError(f"{what}: write column=value pairs, e.g. title=Buy milk")
        pairs.append((name.strip(), _value(value)))
    if not pairs:
        raise CommandError(f"{what}: name at least one column=value")
    return pairs


def _conditions(text: str) -> list[tuple[str, str | None]]:
    pairs = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        name, sep, value = part.partition("=")
        if not sep or not re.fullmatch(_IDENT, name.strip()):
            raise CommandError("where: write column=value [and column=value], e.g. id=1")
        pairs.append((name.strip(), _value(value)))
    return pairs


def _where(conditions: list[tuple[str, str | None]], first: int) -> tuple[str, list[str | None]]:
    clauses: list[str] = []
    params: list[str | None] = []
    for name, value in conditions:
        if value is None:
            clauses.append(f"{quote_ident(name)} IS NULL")
        else:
            params.append(value)
            clauses.append(f"{quote_ident(name)} = ${first + len(params) - 1}")
    return " AND ".join(clauses), params


def _column(text: str) -> tuple[str, str]:
    name, _, type_ = text.strip().partition(" ")
    type_ = type_.strip()
    if not re.fullmatch(_IDENT, name):
        raise CommandError(f"{name!r} is not a column name (letters, digits, _)")
    if not type_:
        raise CommandError(f"column {name}: give it a type, e.g. {name} text")
    if not _TYPE.match(type_):
        raise CommandError(f"column {name}: {type_!r} is not a type name, e.g. text, int")
    return name, type_


def _create_table(table: str, columns_text: str) -> Sql:
    columns = [_column(c) for c in split_top_level(columns_text)] if columns_text else []
    defs = [f"{quote_ident(n)} {t}" for n, t in columns]
    if all(n.lower() != "id" for n, _ in columns):
        defs.insert(0, '"id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY')
    names = ", ".join(n for n, _ in columns) or "only an id"
    return Sql(
        f"CREATE TABLE {quote_ident(table)} ({', '.join(defs)})",
        f"create table {table.lower()} ({names})",
    )


def _insert(table: str, values_text: str) -> Sql:
    pairs = _assignments(values_text, "insert")
    names = ", ".join(quote_ident(n) for n, _ in pairs)
    slots = ", ".join(f"${i}" for i in range(1, len(pairs) + 1))
    return Sql(
        f"INSERT INTO {quote_ident(table)} ({names}) VALUES ({slots})",
        f"insert a row into {table.lower()}",
        [v for _, v in pairs],
    )


def _update(table: str, set_text: str, where_text: str | None) -> Sql:
    pairs = _assignments(set_text, "update")
    sets = ", ".join(f"{quote_ident(n)} = ${i}" for i, (n, _) in enumerate(pairs, 1))
    params = [v for _, v in pairs]
    sql = f"UPDATE {quote_ident(table)} SET {sets}"
    if where_text:
        where, extra = _where(_conditions(where_text), len(params) + 1)
        sql += f" WHERE {where}"
        params += extra
    return Sql(sql, f"update {table.lower()}", params)


def _delete(table: str, where_text: str) -> Sql:
    where, params = _where(_conditions(where_text), 1)
    return Sql(
        f"DELETE FROM {quote_ident(table)} WHERE {where}", f"delete from {table.lower()}", params
    )


def _add_column(table: str, column_text: str) -> Sql:
    name, type_ = _column(column_text)
    return Sql(
        f"ALTER TABLE {quote_ident(table)} ADD COLUMN {quote_ident(name)} {type_}",
        f"add column {name.lower()} to {table.lower()}",
    )


_FORMS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], Command]], ...] = (
    (
        re.compile(rf"^create\s+table\s+({_IDENT})(?:\s+with\s+(.*))?$", re.IGNORECASE | re.DOTALL),
        lambda m: _create_table(m[1], (m[2] or "").strip()),
    ),
    (
        re.compile(
            rf"^add\s+column\s+({_IDENT}\s+.+?)\s+to\s+({_IDENT})$", re.IGNORECASE | re.DOTALL
        ),
        lambda m: _add_column(m[2], m[1]),
    ),
    (
        re.compile(
            rf"^insert\s+into\s+({_IDENT})\s*:?\s+({_IDENT}\s*=.*)$", re.IGNORECASE | re.DOTALL
        ),
        lambda m: _insert(m[1], m[2]),
    ),
    (
        re.compile(rf"^add\s+to\s+({_IDENT})\s*:?\s+({_IDENT}\s*=.*)$", re.IGNORECASE | re.DOTALL),
        lambda m: _insert(m[1], m[2]),
    ),
    (
        re.compile(
            rf"^update\s+({_IDENT})\s+set\s+(.+?)(?:\s+where\s+(.+))?$", re.IGNORECASE | re.DOTALL
        ),
        lambda m: _update(m[1], m[2], m[3]),
    ),
    (
        re.compile(rf"^delete\s+from\s+({_IDENT})\s+where\s+(.+)$", re.IGNORECASE | re.DOTALL),
        lambda m: _delete(m[1], m[2]),
    ),
    (
        re.compile(rf"^show\s+({_IDENT})$", re.IGNORECASE),
        lambda m: Sql(
            f"SELECT * FROM {quote_ident(m[1])} LIMIT {MAX_SHOWN_ROWS}",
            f"show {m[1].lower()}",
        ),
    ),
)


def parse(text: str) -> Command:
    """The command `text` says. Raises `CommandError` naming what would work."""
    text = text.strip()
    lowered = text.lower()
    if lowered in {"undo", "help", "tables", "?"}:
        return Action("help" if lowered == "?" else lowered)
    raw = re.match(r"^sql\s*:?\s+(.+)$", text, re.IGNORECASE | re.DOTALL)
    if raw:
        return Sql(raw[1].strip(), "run your SQL")
    for pattern, build in _FORMS:
        match = pattern.match(text.rstrip(";").rstrip())
        if match:
            return build(match)
    first = lowered.split(maxsplit=1)[0] if lowered else ""
    if first in _SQL_KEYWORDS:
        return Sql(text, "run your SQL")
    raise CommandError(
        "I understand a few commands (listed below the chat box), e.g. "
        "'create table todos with title text', or SQL such as 'select 1'"
    )
