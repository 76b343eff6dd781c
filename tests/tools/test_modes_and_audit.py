"""Token modes and the audit trail through the tools, in process: a read-only token is offered
the reading tools only (in every export and over MCP), its run_sql reads as read-only and cannot
write; a read-write token gets the writing tools; each tool call's requests carry the tool's
name and a call id (from the MCP request, or the caller's) into the session's events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from litestar import Litestar
from mcp import Client

from agentdb.sdk import AgentDB
from agentdb.tools import TOOLS, Toolbox, ToolError, build_mcp_server, scoped_toolbox
from agentdb.wire import TokenMode

from .conftest import Tenant, client_of
from .test_toolbox import NAMES, exported

READING = {
    "run_sql",
    "list_checkpoints",
    "diff_checkpoints",
    "get_session",
    "get_usage",
    "list_extensions",
    "list_roles",
}


async def issue(admin: AgentDB, tenant: Tenant, mode: str) -> str:
    token = await admin.create_session_token(tenant.session_id, mode=mode)
    assert token.mode == mode
    return token.token


def test_each_tool_names_the_least_mode_that_may_call_it():
    for tool in TOOLS:
        wanted = TokenMode.READ_ONLY if tool.name in READING else TokenMode.READ_WRITE
        assert tool.mode == wanted, tool.name
        if tool.read_only:
            assert tool.mode == TokenMode.READ_ONLY, tool.name
    # A full toolbox (user and admin tokens, the default) offers every tool as it is.
    assert set(Toolbox(object(), session_id=None).names) >= NAMES  # type: ignore[arg-type]


async def test_a_read_only_token_is_offered_reading_only_and_cannot_write(
    api_app: Litestar, admin: AgentDB, tenant: Tenant
):
    async with client_of(api_app, tenant.session_token) as owner:
        await owner.sql(tenant.session_id, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (1)")
        before = await owner.list_checkpoints(tenant.session_id)
    reader = await issue(admin, tenant, "read_only")
    async with client_of(api_app, reader) as client:
        box = await scoped_toolbox(client, reader)
        assert (box.session_id, box.mode) == (tenant.session_id, TokenMode.READ_ONLY)
        schemas = exported(box)  # OpenAI's and Anthropic's, checked to agree
        assert set(schemas) == READING
        description, schema = schemas["run_sql"]
        assert "read-only" in description
        assert "ONE statement" in description
        assert "create_checkpoint" not in description  # not offered: not suggested either
        assert "never changes anything" in schema["properties"]["sql"]["description"]

        async with Client(build_mcp_server(box)) as mcp:
            listed = {t.name: t for t in (await mcp.list_tools()).tools}
            assert set(listed) == READING
            hints = listed["run_sql"].annotations
            assert hints is not None
            assert (hints.read_only_hint, hints.destructive_hint) == (True, False)
            for tool in listed.values():
                assert tool.annotations is not None
                assert tool.annotations.read_only_hint is True, tool.name
            assert mcp.instructions is not None
            assert "read-only" in mcp.instructions

            read = await mcp.call_tool("run_sql", {"sql": "SELECT n FROM kept"})
            assert not read.is_error, read.content
            assert read.structured_content is not None
            assert read.structured_content["rows"] == [[1]]
            for statement in (
                "INSERT INTO kept VALUES (2)",
                "SET TRANSACTION READ WRITE; INSERT INTO kept VALUES (3)",
                "DROP TABLE kept",
            ):
                refused = await mcp.call_tool("run_sql", {"sql": statement})
                assert refused.is_error, statement
            withheld = await mcp.call_tool("create_checkpoint", {})
            assert withheld.is_error
            text = withheld.content[0].text  # type: ignore[union-attr]
            assert text.startswith("create_checkpoint: this connection's token is read_only")

        with pytest.raises(ToolError, match="is read_only and may not call it"):
            await box.call("restore_checkpoint", {"checkpoint_id": str(before.head_id)})
    async with client_of(api_app, tenant.session_token) as owner:
        after = await owner.sql(tenant.session_id, "SELECT n FROM kept ORDER BY n")
        assert after.rows == [[1]]
        assert await owner.list_checkpoints(tenant.session_id) == before


async def test_a_read_write_token_gets_the_writing_tools(
    api_app: Litestar, admin: AgentDB, tenant: Tenant
):
    writer = await issue(admin, tenant, "read_write")
    async with client_of(api_app, writer) as client:
        box = await scoped_toolbox(client, writer)
        assert (box.session_id, box.mode) == (tenant.session_id, TokenMode.READ_WRITE)
        assert set(exported(box)) == NAMES
        async with Client(build_mcp_server(box)) as mcp:
            listed = {t.name: t for t in (await mcp.list_tools()).tools}
            assert set(listed) == NAMES
            hints = listed["run_sql"].annotations
            assert hints is not None
            assert (hints.read_only_hint, hints.destructive_hint) == (False, True)
            wrote = await mcp.call_tool("run_sql", {"sql": "CREATE TABLE written (n int)"})
            assert not wrote.is_error, wrote.content


@asynccontextmanager
async def per_request(api_app: Litestar, token: str) -> AsyncIterator[Any]:
    """A toolbox source as `agentdb serve`'s /mcp builds one: a client per request, its
    toolbox scoped by the token."""

    @asynccontextmanager
    async def source(_: object) -> AsyncIterator[Toolbox]:
        async with client_of(api_app, token) as client:
            yield await scoped_toolbox(client, token)

    yield source


async def events_of(api_app: Litestar, tenant: Tenant) -> list[dict[str, Any]]:
    async with client_of(api_app, tenant.user_token) as owner:
        found = await owner.list_events(tenant.session_id, limit=500)
    return [e.model_dump(mode="json") for e in found]


async def test_mcp_tool_calls_are_recorded_with_the_tool_and_a_call_id(
    api_app: Litestar, tenant: Tenant
):
    async with (
        per_request(api_app, tenant.session_token) as source,
        Client(build_mcp_server(source)) as mcp,
    ):
        ran = await mcp.call_tool("run_sql", {"sql": "CREATE TABLE audited (n int)"})
        assert not ran.is_error, ran.content
        made = await mcp.call_tool("create_checkpoint", {"label": "audited", "code_ref": "v7"})
        assert not made.is_error, made.content
    events = await events_of(api_app, tenant)
    sql_run = [e for e in events if e["action"] == "sql.run"]
    created = [e for e in events if e["action"] == "checkpoint.create"]
    assert sql_run
    assert created
    assert {e["agent_context"]["tool"] for e in sql_run} == {"run_sql"}
    assert {e["agent_context"]["tool"] for e in created} == {"create_checkpoint"}
    call_ids = {e["agent_context"]["tool_call_id"] for e in sql_run + created}
    assert "" not in call_ids
    assert len(call_ids) == 2  # one per MCP request, the same on every event of a call


async def test_toolbox_calls_pass_the_callers_call_id_model_and_prompt(
    api_app: Litestar, tenant: Tenant
):
    prompt = "Füge eine Tabelle für Aufgaben hinzu 📝\r\nund speichere"
    async with client_of(api_app, tenant.session_token) as client:
        box = await scoped_toolbox(client, tenant.session_token)
        with client.agent_context(model="outer-model", prompt="the outer prompt"):
            await box.call(
                "run_sql",
                {"sql": "SELECT 1"},
                tool_call_id="toolu_01ABC",
                model="claude-sonnet-4",
                prompt=prompt,
            )
            await box.call("create_checkpoint", json.dumps({"label": "ctx"}))
        with pytest.raises(ToolError, match="tool_call_id: at most 200"):
            await box.call("get_session", tool_call_id="x" * 201)
    events = await events_of(api_app, tenant)
    (by_call,) = [e for e in events if e["agent_context"].get("tool_call_id") == "toolu_01ABC"]
    assert by_call["action"] == "sql.run"
    assert by_call["agent_context"] == {
        "tool": "run_sql",
        "tool_call_id": "toolu_01ABC",
        "model": "claude-sonnet-4",
        "prompt": prompt.replace("\r\n", "\n"),
    }
    checkpointed = [e for e in events if e["action"] == "checkpoint.create"]
    assert checkpointed
    # The block's values fill in what the call does not give.
    for event in checkpointed:
        assert event["agent_context"] == {
            "tool": "create_checkpoint",
            "model": "outer-model",
            "prompt": "the outer prompt",
        }
