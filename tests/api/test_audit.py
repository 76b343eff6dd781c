"""The audit trail answers "which prompt did this": every event records the token (id and
name) and what the agent said it was doing (tool, tool call id, model, a prompt excerpt); SQL
run through agentdb is an event of its own (text cut to a configured length, its hash, command
and row count, never the parameters); checkpoints carry a `code_ref` that a restore answers."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from .conftest import Tenant, assert_problem, bearer, runtime_with

pytestmark = pytest.mark.asyncio(loop_scope="session")

runtime = runtime_with("audit", audit_sql_max_chars=40)


def agent(tool: str, call: str, prompt: str = "add a todo table") -> dict[str, str]:
    return {
        "X-Agent-Tool": tool,
        "X-Agent-Tool-Call-Id": call,
        "X-Agent-Model": "claude-sonnet-4",
        "X-Agent-Prompt": quote(prompt),
    }


async def events(http: httpx.AsyncClient, tenant: Tenant) -> list[dict[str, Any]]:
    found = await http.get(
        f"/v1/sessions/{tenant.session_id}/events",
        params={"limit": 500},
        headers=tenant.user_token,
    )
    assert found.status_code == 200, found.text
    listed: list[dict[str, Any]] = found.json()["events"]
    return listed


async def named_token(http: httpx.AsyncClient, tenant: Tenant, name: str) -> tuple[str, dict]:
    issued = await http.post(
        f"/v1/sessions/{tenant.session_id}/tokens", json={"name": name}, headers=tenant.user_token
    )
    assert issued.status_code == 201, issued.text
    return issued.json()["id"], bearer(issued.json()["token"])


async def test_events_carry_the_token_and_the_agents_tool_call_and_prompt(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    token_id, headers = await named_token(http, tenant, "coding agent")
    long_prompt = "Ünïcode prompt: " + "build me a shop " * 100
    made = await http.post(
        f"/v1/sessions/{tenant.session_id}/checkpoints",
        json={"label": "schema", "code_ref": "git:4f2a9c1"},
        headers=headers | agent("create_checkpoint", "toolu_01", long_prompt),
    )
    assert made.status_code == 201, made.text
    assert made.json()["code_ref"] == "git:4f2a9c1"
    created = [e for e in await events(http, tenant) if e["action"] == "checkpoint.create"]
    assert created
    for found in created:
        assert found["actor"] == token_id
        assert found["token_name"] == "coding agent"
        context = found["agent_context"]
        assert context["tool"] == "create_checkpoint"
        assert context["tool_call_id"] == "toolu_01"
        assert context["model"] == "claude-sonnet-4"
        assert context["prompt"] == long_prompt[:500]


async def test_sql_is_an_event_with_its_hash_and_never_its_parameters(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    _, headers = await named_token(http, tenant, "sql agent")
    statement = "create table secrets_kept (id int primary key, secret text)"
    assert (
        await http.post(
            f"/v1/sessions/{tenant.session_id}/sql",
            json={"sql": statement},
            headers=headers | agent("run_sql", "call-1"),
        )
    ).status_code == 200
    insert = "insert into secrets_kept values ($1, $2)"
    assert (
        await http.post(
            f"/v1/sessions/{tenant.session_id}/sql",
            json={"sql": insert, "params": [1, "hunter2-very-secret"]},
            headers=headers | agent("run_sql", "call-2"),
        )
    ).status_code == 200
    failed = await http.post(
        f"/v1/sessions/{tenant.session_id}/sql",
        json={"sql": "select * from nowhere"},
        headers=headers | agent("run_sql", "call-3"),
    )
    assert failed.status_code in {400, 422}
    runs = [e for e in await events(http, tenant) if e["action"] == "sql.run"]
    by_call = {e["agent_context"]["tool_call_id"]: e for e in runs}
    first = by_call["call-1"]["details"]
    assert first["statement"] == statement[:40]
    assert first["statement_truncated"] is True
    assert first["sha256"] == hashlib.sha256(statement.encode()).hexdigest()
    assert first["command"] == "CREATE TABLE"
    assert first["phase"] == "succeeded"
    second = by_call["call-2"]
    assert second["details"]["command"] == "INSERT 0 1"
    assert second["details"]["row_count"] == 1
    assert second["token_name"] == "sql agent"
    assert "hunter2" not in json.dumps(runs)
    third = by_call["call-3"]["details"]
    assert third["phase"] == "failed"
    assert third["sqlstate"] == "42P01"


async def test_a_restore_answers_the_code_ref_of_the_checkpoint_it_put_back(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    sid = tenant.session_id
    first = await http.post(
        f"/v1/sessions/{sid}/checkpoints", json={"code_ref": "v1"}, headers=tenant.session_token
    )
    await http.post(
        f"/v1/sessions/{sid}/checkpoints", json={"code_ref": "v2"}, headers=tenant.session_token
    )
    back = await http.post(
        f"/v1/sessions/{sid}/checkpoints/{first.json()['id']}/restore",
        headers=tenant.session_token,
    )
    assert back.status_code == 200, back.text
    assert back.json()["restored_code_ref"] == "v1"
    tree = await http.get(f"/v1/sessions/{sid}/checkpoints", headers=tenant.session_token)
    assert [c["code_ref"] for c in tree.json()["checkpoints"]] == [None, "v1", "v2"]


async def test_bad_agent_context_and_code_ref_are_named(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    sid = tenant.session_id
    too_long = await http.post(
        f"/v1/sessions/{sid}/sql",
        json={"sql": "select 1"},
        headers=tenant.session_token | {"X-Agent-Tool": "x" * 201},
    )
    assert_problem(too_long, 400, "X-Agent-Tool")
    control = await http.post(
        f"/v1/sessions/{sid}/sql",
        json={"sql": "select 1"},
        headers=tenant.session_token | {"X-Agent-Model": quote("a\x07b")},
    )
    assert_problem(control, 400, "X-Agent-Model")
    ref = await http.post(
        f"/v1/sessions/{sid}/checkpoints",
        json={"code_ref": "r" * 201},
        headers=tenant.session_token,
    )
    assert_problem(ref, 400, "code_ref")


async def test_a_prompt_is_cleaned_not_refused(http: httpx.AsyncClient, tenant: Tenant) -> None:
    answer = await http.post(
        f"/v1/sessions/{tenant.session_id}/sql",
        json={"sql": "select 1"},
        headers=tenant.session_token
        | {"X-Agent-Tool-Call-Id": "crlf", "X-Agent-Prompt": quote("line one\r\nline\ttwo\x07!")},
    )
    assert answer.status_code == 200, answer.text
    found = [
        e for e in await events(http, tenant) if e["agent_context"].get("tool_call_id") == "crlf"
    ]
    assert found[0]["agent_context"]["prompt"] == "line one\nline two !"
