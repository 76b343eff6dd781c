"""The MCP server over its real transports, driven by the `mcp` SDK's own clients: `agentdb
mcp` as a subprocess over stdio (against a served `agentdb serve`, and embedded), and
streamable HTTP at `/mcp` of `agentdb serve`. An agent lists the tools, runs SQL, checkpoints,
writes more, restores and sees the rows change; its session token reaches no other session."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from support import AGENTDB, API_LINE, agentdb, assert_one_line_error, clean_env, serving

ADMIN_TOKEN = "adb_admin_mcp-transports-token-0123456789"
TOOL_NAMES = {
    "run_sql",
    "create_checkpoint",
    "list_checkpoints",
    "restore_checkpoint",
    "preview_checkpoint",
    "diff_checkpoints",
    "create_branch",
    "reset_branch",
    "delete_branch",
    "get_session",
    "get_usage",
    "list_extensions",
    "create_role",
    "list_roles",
    "enable_auth",
    "enable_data_api",
}

PLATFORM_TOOL_NAMES = {"create_session", "list_sessions"}


@dataclass(frozen=True)
class Agent:
    session_id: str
    session_token: str
    user_token: str


@dataclass(frozen=True)
class Served:
    url: str
    alice: Agent
    bob: Agent


def _agent(http: httpx.Client, name: str) -> Agent:
    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = http.post(path, json=body)
        assert response.status_code == 201, response.text
        answer: dict[str, Any] = response.json()
        return answer

    user = post("/v1/users", {"email": f"{name}-{uuid.uuid4().hex[:8]}@example.com"})
    session = post("/v1/sessions", {"user_id": user["id"], "name": name})
    return Agent(
        session["id"],
        post(f"/v1/sessions/{session['id']}/tokens", {})["token"],
        post(f"/v1/users/{user['id']}/tokens", {})["token"],
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("mcp-serve") / "data"
    with serving(clean_env(AGENTDB_ADMIN_TOKEN=ADMIN_TOKEN), data_dir, ("serve",), API_LINE) as url:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=url, headers=admin, timeout=60) as http:
            yield Served(url, _agent(http, "alice"), _agent(http, "bob"))


@asynccontextmanager
async def over_stdio(env: dict[str, str], errlog: Path, *args: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=str(AGENTDB), args=["mcp", *args], env=env)
    with errlog.open("w+") as log:
        async with Client(stdio_client(params, errlog=log), read_timeout_seconds=120) as client:
            yield client
        log.seek(0)
        stderr = log.read()
    assert "Traceback" not in stderr, stderr


@asynccontextmanager
async def over_http(url: str, token: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        yield client


async def call(mcp: Client, name: str, **arguments: Any) -> Any:
    result = await mcp.call_tool(name, arguments)
    assert not result.is_error, result.content
    return result.structured_content


async def failure(mcp: Client, name: str, **arguments: Any) -> str:
    result = await mcp.call_tool(name, arguments)
    assert result.is_error, result
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


async def checkpoint_write_restore(mcp: Client, agent: Agent, other: Agent) -> None:
    """The loop an agent runs, and the wall around its session."""
    tools = (await mcp.list_tools()).tools
    assert {t.name for t in tools} == TOOL_NAMES
    for tool in tools:  # a session token: the session is implied, never asked for
        assert "session_id" not in tool.input_schema["properties"], tool.name

    await call(mcp, "run_sql", sql="CREATE TABLE todo (n int, title text)")
    await call(mcp, "run_sql", sql="INSERT INTO todo VALUES ($1, $2)", params=[1, "write tests"])
    checkpoint = await call(mcp, "create_checkpoint", label="one todo", message="seeded")
    await call(mcp, "run_sql", sql="INSERT INTO todo VALUES (2, 'ship'), (3, 'celebrate')")
    count = await call(mcp, "run_sql", sql="SELECT count(*) FROM todo")
    assert count["rows"] == [[3]]

    restored = await call(mcp, "restore_checkpoint", checkpoint_id=checkpoint["id"])
    assert restored["head_checkpoint_id"] == checkpoint["id"]
    rows = await call(mcp, "run_sql", sql="SELECT n, title FROM todo ORDER BY n")
    assert rows["rows"] == [[1, "write tests"]]
    session = await call(mcp, "get_session")
    assert session["id"] == agent.session_id
    assert "connection_uri" not in json.dumps(session)

    refused = await failure(mcp, "get_session", session_id=other.session_id)
    assert f"works on session {agent.session_id} only" in refused
    bad = await failure(mcp, "run_sql", sql="SELECT * FROM nowhere")
    assert bad.startswith('42P01: relation "nowhere" does not exist')


async def test_agentdb_mcp_over_stdio_with_a_session_token(served: Served, tmp_path: Path):
    env = clean_env(AGENTDB_URL=served.url, AGENTDB_TOKEN=served.alice.session_token)
    async with over_stdio(env, tmp_path / "mcp.stderr") as mcp:
        await checkpoint_write_restore(mcp, served.alice, served.bob)


async def test_streamable_http_on_agentdb_serve_with_a_session_token(served: Served):
    async with over_http(served.url, served.bob.session_token) as mcp:
        await checkpoint_write_restore(mcp, served.bob, served.alice)


async def test_http_tools_act_with_each_requests_own_token(served: Served):
    # A user token: every tool takes a session_id, and only the user's own sessions answer.
    async with over_http(served.url, served.alice.user_token) as mcp:
        tools = {t.name: t.input_schema for t in (await mcp.list_tools()).tools}
        assert tools["get_session"]["required"] == ["session_id"]
        own = await call(mcp, "get_session", session_id=served.alice.session_id)
        assert own["id"] == served.alice.session_id
        assert "connection_uri" not in json.dumps(own)
        foreign = await failure(mcp, "get_session", session_id=served.bob.session_id)
        assert foreign == f"no session {served.bob.session_id}"  # as for an unknown id
        # A user token lists only its own sessions.
        listed = {s["id"] for s in (await call(mcp, "list_sessions"))["sessions"]}
        assert served.alice.session_id in listed
        assert served.bob.session_id not in listed

    # No token, or a wrong one: the API's own 401, before any MCP is spoken.
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        for headers in ({}, {"Authorization": "Bearer adb_sess_not-a-real-token"}):
            response = await http.post("/mcp", json=request, headers=headers)
            assert response.status_code == 401, response.text
            assert response.headers["content-type"].startswith("application/problem+json")


async def test_agentdb_mcp_embedded_opens_sessions_and_takes_their_ids(tmp_path: Path):
    env = clean_env()
    async with over_stdio(env, tmp_path / "mcp.stderr", "--data-dir", str(tmp_path / "d")) as mcp:
        tools = {t.name: t.input_schema for t in (await mcp.list_tools()).tools}
        assert set(tools) == TOOL_NAMES | PLATFORM_TOOL_NAMES
        for name, schema in tools.items():
            if name in PLATFORM_TOOL_NAMES:
                assert "session_id" not in schema["properties"], name
            else:
                assert schema["required"][0] == "session_id", name
        missing = str(uuid.uuid4())
        assert await failure(mcp, "get_session", session_id=missing) == f"no session {missing}"
        assert (await failure(mcp, "get_session")).startswith("session_id: required")
        # The admin token opens a session (for agentdb's local user) and works on it.
        named = await mcp.call_tool("create_session", {"name": "from mcp"})
        assert not named.is_error, named.content
        opened: Any = named.structured_content
        assert (opened["name"], opened["status"]) == ("from mcp", "ready")
        listed = await call(mcp, "list_sessions")
        assert [s["id"] for s in listed["sessions"]] == [opened["id"]]
        rows = await call(mcp, "run_sql", session_id=opened["id"], sql="SELECT 1 AS one")
        assert rows["rows"] == [[1]]
        again = await call(mcp, "create_session")
        assert len((await call(mcp, "list_sessions"))["sessions"]) == 2
        assert again["id"] != opened["id"]
        assert (await failure(mcp, "list_sessions", status="nope")).startswith("status:")


def test_agentdb_mcp_refuses_to_start_without_a_working_token(served: Served):
    revoked = agentdb("mcp", env=clean_env(AGENTDB_URL=served.url, AGENTDB_TOKEN="adb_sess_nope"))
    assert "the token is not valid" in assert_one_line_error(revoked)
    no_token = agentdb("mcp", "--url", served.url, env=clean_env())
    assert "AGENTDB_TOKEN" in assert_one_line_error(no_token)
    unreachable = agentdb(
        "mcp", "--url", "http://127.0.0.1:9", "--token", "adb_sess_x", env=clean_env()
    )
    assert "cannot reach agentdb at http://127.0.0.1:9" in assert_one_line_error(unreachable)


async def test_http_offers_each_token_its_modes_tools_and_records_each_call(served: Served):
    """Over /mcp, the server learns each token's mode (`GET /v1/tokens/current`): a read-only
    token is offered the reading tools and cannot write; a read-write token's calls are events
    carrying the tool, the MCP request's id and the model the MCP client sent as a header."""
    sid, owner = served.alice.session_id, {"Authorization": f"Bearer {served.alice.user_token}"}
    async with httpx.AsyncClient(base_url=served.url, headers=owner, timeout=60) as http:
        issued = {
            mode: (await http.post(f"/v1/sessions/{sid}/tokens", json=body)).json()
            for mode, body in (
                ("read_only", {"mode": "read_only"}),
                ("read_write", {"name": "mcp-http-audit"}),
            )
        }
    assert issued["read_only"]["mode"] == "read_only"

    async with over_http(served.url, issued["read_only"]["token"]) as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        assert "run_sql" in tools
        assert not {"create_checkpoint", "restore_checkpoint", "create_branch"} & set(tools)
        hints = tools["run_sql"].annotations
        assert hints is not None
        assert (hints.read_only_hint, hints.destructive_hint) == (True, False)
        assert "read-only" in (tools["run_sql"].description or "")
        assert "read-only" in await failure(mcp, "run_sql", sql="CREATE TABLE nope (n int)")
        gone = await call(mcp, "run_sql", sql="SELECT to_regclass('nope') IS NULL AS gone")
        assert gone["rows"] == [[True]]

    model = {"X-Agent-Model": "claude-opus-4", "X-Agent-Prompt": "m%C3%A1s%20tablas"}
    headers = {"Authorization": f"Bearer {issued['read_write']['token']}", **model}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as client,
        Client(streamable_http_client(f"{served.url}/mcp", http_client=client)) as mcp,
    ):
        await call(mcp, "run_sql", sql="CREATE TABLE audited_over_http (n int)")
        await call(mcp, "create_checkpoint", label="audited", code_ref="git:feed1")
    async with httpx.AsyncClient(base_url=served.url, headers=owner, timeout=60) as http:
        found = await http.get(f"/v1/sessions/{sid}/events", params={"limit": 500})
    mine = [e for e in found.json()["events"] if e["token_name"] == "mcp-http-audit"]
    tools_used = {e["agent_context"]["tool"] for e in mine}
    assert tools_used == {"run_sql", "create_checkpoint"}
    assert all(e["agent_context"]["tool_call_id"] for e in mine)
    assert len({e["agent_context"]["tool_call_id"] for e in mine}) == 2
    assert {e["agent_context"]["model"] for e in mine} == {"claude-opus-4"}
    assert {e["agent_context"]["prompt"] for e in mine} == {"más tablas"}
