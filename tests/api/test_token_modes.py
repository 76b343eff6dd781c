"""Session tokens' access modes over the REST API on the real local plane: a `read_only`
token's SQL cannot write by any trick (nothing changes), and its routes stop at reading; the
default `read_write` token is today's agent; a `full` one may also drop checkpoints."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import Tenant, assert_problem, bearer, sql_runner

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def token(http: httpx.AsyncClient, tenant: Tenant, mode: str | None) -> dict[str, str]:
    body = {} if mode is None else {"mode": mode}
    issued = await http.post(
        f"/v1/sessions/{tenant.session_id}/tokens", json=body, headers=tenant.user_token
    )
    assert issued.status_code == 201, issued.text
    assert issued.json()["mode"] == (mode or "read_write")
    return bearer(issued.json()["token"])


async def run(
    http: httpx.AsyncClient, tenant: Tenant, headers: dict[str, str], statement: str
) -> httpx.Response:
    return await http.post(
        f"/v1/sessions/{tenant.session_id}/sql", json={"sql": statement}, headers=headers
    )


#: Each a way a read-only caller might try to write; every one must leave the data as it was.
TRICKS = [
    "insert into t values (100)",
    "set transaction read write; insert into t values (101)",
    "commit; insert into t values (102)",
    "rollback; set default_transaction_read_only = off; insert into t values (103)",
    "select writes()",
    "select writes_as_owner()",
    "do $$ begin insert into t values (104); end $$",
    "call commits()",
    "select nextval('s')",
    "create temp table scratch (n int)",
    "select set_config('transaction_read_only', 'off', false)",
    "update t set n = n + 1 returning n",
    "select * from t for update",
    "with gone as (delete from t returning n) select count(*) from gone",
    "create table more (n int)",
    "alter role current_user set default_transaction_read_only = off",
    "truncate t",
]
#: Statements that succeed alone but must leave the next call read-only all the same.
HARMLESS_ALONE = [
    "set transaction read write",
    "set default_transaction_read_only = off",
    "commit",
    "select pg_catalog.set_config('default_transaction_read_only', 'off', false)",
    # A lock is no write: it ends with the call's transaction, rolled back at once.
    "lock table t in access exclusive mode",
]


async def test_a_read_only_token_cannot_write_by_any_trick(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    owner = sql_runner(http, tenant.session_id, tenant.session_token)
    await owner(
        "create table t (n int); insert into t values (1), (2);"
        " create sequence s;"
        " create function writes() returns int language sql as"
        " $$ insert into t values (200) returning n $$;"
        " create function writes_as_owner() returns int language sql security definer as"
        " $$ insert into t values (201) returning n $$;"
        " create procedure commits() language plpgsql as"
        " $$ begin insert into t values (202); commit; insert into t values (203); end $$"
    )
    reader = await token(http, tenant, "read_only")
    role_settings = (
        "select setconfig from pg_db_role_setting where setrole = (select oid from pg_roles"
        " where rolname = current_user)"
    )
    settings = await owner(role_settings)
    before = await owner("select array_agg(n order by n) from t")
    sequence = await owner("select last_value, is_called from s")

    assert (await run(http, tenant, reader, "select count(*) from t")).json()["rows"] == [[2]]
    for trick in TRICKS:
        answer = await run(http, tenant, reader, trick)
        assert answer.status_code in {400, 403, 422}, (trick, answer.text)
        if ";" in trick and "$$" not in trick:
            assert "one statement per call" in answer.json()["detail"], answer.text
    for statement in HARMLESS_ALONE:
        alone = await run(http, tenant, reader, statement)
        assert alone.status_code in {200, 400, 422}, (statement, alone.text)
        refused = await run(http, tenant, reader, "insert into t values (300)")
        assert refused.status_code in {400, 422}, (statement, refused.text)
    assert await owner("select array_agg(n order by n) from t") == before
    assert await owner("select last_value, is_called from s") == sequence
    tables = await owner("select count(*) from pg_class where relname in ('more', 'scratch')")
    assert tables == [[0]]
    # The owner's role is unchanged too.
    assert await owner(role_settings) == settings


async def test_a_read_only_token_reads_but_changes_nothing_through_the_api(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    reader = await token(http, tenant, "read_only")
    sid = tenant.session_id
    assert (await http.get(f"/v1/sessions/{sid}", headers=reader)).status_code == 200
    assert (await http.get(f"/v1/sessions/{sid}/checkpoints", headers=reader)).status_code == 200
    root = tenant.session["head_checkpoint_id"]
    changes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", f"/v1/sessions/{sid}/checkpoints", {"label": "nope"}),
        ("POST", f"/v1/sessions/{sid}/checkpoints/{root}/restore", None),
        ("POST", f"/v1/sessions/{sid}/branches", {"name": "nope"}),
        ("POST", f"/v1/sessions/{sid}/auth", None),
        ("POST", f"/v1/sessions/{sid}/roles", {"name": "nope"}),
    ]
    for method, path, body in changes:
        answer = await http.request(method, path, json=body, headers=reader)
        problem = assert_problem(answer, 403)
        assert "read_only" in problem["detail"], problem
    listed = await http.get(f"/v1/sessions/{sid}/checkpoints", headers=tenant.user_token)
    assert [c["label"] for c in listed.json()["checkpoints"]] == ["root"]


async def test_read_write_is_todays_agent_and_full_may_also_drop_checkpoints(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    sid = tenant.session_id
    writer = await token(http, tenant, None)
    made = await http.post(f"/v1/sessions/{sid}/checkpoints", json={}, headers=writer)
    assert made.status_code == 201, made.text
    checkpoint = made.json()["id"]
    # The head cannot be dropped by anyone: take another one.
    later = await http.post(f"/v1/sessions/{sid}/checkpoints", json={}, headers=writer)
    assert later.status_code == 201, later.text
    refused = await http.delete(f"/v1/sessions/{sid}/checkpoints/{checkpoint}", headers=writer)
    assert_problem(refused, 403)
    full = await token(http, tenant, "full")
    dropped = await http.delete(f"/v1/sessions/{sid}/checkpoints/{checkpoint}", headers=full)
    assert dropped.status_code == 200, dropped.text
    # Even a full session token mints no tokens and does not delete its session.
    assert_problem(await http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=full), 403)
    assert_problem(await http.delete(f"/v1/sessions/{sid}", headers=full), 403)


async def test_modes_are_for_session_tokens_and_bad_ones_are_named(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    bad = await http.post(
        f"/v1/sessions/{tenant.session_id}/tokens",
        json={"mode": "write_everything"},
        headers=tenant.user_token,
    )
    assert_problem(bad, 400, "mode")
    user = await http.post(
        f"/v1/users/{tenant.user_id}/tokens", json={"mode": "read_only"}, headers=tenant.user_token
    )
    assert_problem(user, 400, "mode")


async def test_a_token_reads_its_own_mode(http: httpx.AsyncClient, tenant: Tenant) -> None:
    reader = await token(http, tenant, "read_only")
    own = await http.get("/v1/tokens/current", headers=reader)
    assert own.status_code == 200, own.text
    assert own.json()["mode"] == "read_only"
    assert own.json()["session_id"] == tenant.session_id
    assert "token" not in own.json()
    user = await http.get("/v1/tokens/current", headers=tenant.user_token)
    assert user.json()["mode"] == "full"
    assert_problem(await http.get("/v1/tokens/current"), 401)
