"""The offline agent's command language: each form becomes the SQL it promises, values travel
as parameters, and input it does not understand is refused with a hint."""

from __future__ import annotations

import pytest

from demo import CommandError, parse
from demo._commands import Action, Sql, split_top_level


def test_create_table_adds_an_id_column() -> None:
    command = parse("create table Todos with title text, done boolean, price numeric(10, 2)")
    assert isinstance(command, Sql)
    assert command.sql == (
        'CREATE TABLE "todos" ("id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, '
        '"title" text, "done" boolean, "price" numeric(10, 2))'
    )
    assert command.params == []


def test_create_table_keeps_a_given_id() -> None:
    command = parse("create table tags with id text, name text")
    assert isinstance(command, Sql)
    assert command.sql == 'CREATE TABLE "tags" ("id" text, "name" text)'


def test_add_column() -> None:
    command = parse("add column due date to todos")
    assert command == Sql(
        'ALTER TABLE "todos" ADD COLUMN "due" date', "add column due to todos", []
    )


def test_insert_passes_values_as_parameters() -> None:
    command = parse("insert into todos title='Milk, eggs', done=false, note=null")
    assert isinstance(command, Sql)
    assert command.sql == 'INSERT INTO "todos" ("title", "done", "note") VALUES ($1, $2, $3)'
    assert command.params == ["Milk, eggs", "false", None]
    assert parse("add to todos: title=Bread") == Sql(
        'INSERT INTO "todos" ("title") VALUES ($1)', "insert a row into todos", ["Bread"]
    )


def test_update_and_delete_number_their_parameters() -> None:
    update = parse("update todos set done=true, title=Done where id=1 and note=null")
    assert isinstance(update, Sql)
    assert update.sql == (
        'UPDATE "todos" SET "done" = $1, "title" = $2 WHERE "id" = $3 AND "note" IS NULL'
    )
    assert update.params == ["true", "Done", "1"]
    delete = parse("delete from todos where id=2")
    assert delete == Sql('DELETE FROM "todos" WHERE "id" = $1', "delete from todos", ["2"])


def test_sql_runs_as_written() -> None:
    assert parse("sql: select 1; select 2") == Sql("select 1; select 2", "run your SQL")
    raw = parse("insert into todos (title) values ('x')")
    assert raw == Sql("insert into todos (title) values ('x')", "run your SQL")
    assert parse("SELECT * FROM todos") == Sql("SELECT * FROM todos", "run your SQL")


def test_actions() -> None:
    assert parse(" Undo ") == Action("undo")
    assert parse("?") == Action("help")
    assert parse("tables") == Action("tables")


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("make me a website", "I understand a few commands"),
        ("create table t with title", "give it a type"),
        ("create table t with title text; drop table x", "is not a type name"),
        ("add column due to todos", "I understand a few commands"),
        ("update todos set 1=2", "column=value"),
        ("delete from todos where id", "column=value"),
        ("", "I understand a few commands"),
    ],
)
def test_bad_input_is_refused_with_a_hint(text: str, hint: str) -> None:
    with pytest.raises(CommandError, match=hint):
        parse(text)


def test_split_respects_quotes_and_parentheses() -> None:
    assert split_top_level("a='x, y', b=numeric(1, 2), c") == ["a='x, y'", "b=numeric(1, 2)", "c"]
