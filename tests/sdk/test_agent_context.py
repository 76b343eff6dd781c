"""`AgentDB.agent_context` without a server: the `X-Agent-*` headers each request carries,
percent-encoded, blocks that nest and end, each client and each task with its own context, and
values the server would refuse refused at once. (`test_sdk.py` follows them into the audit
log of a real server, both modes.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote

import httpx
import pytest

from agentdb.sdk import AgentContext, AgentDB
from agentdb.wire import AGENT_CONTEXT_HEADERS

HEADERS = list(AGENT_CONTEXT_HEADERS.values())


@contextmanager
def recording() -> Iterator[tuple[list[dict[str, str]], httpx.MockTransport]]:
    """A transport answering every request with a token view, keeping each request's
    `X-Agent-*` headers, decoded."""
    seen: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append({h: unquote(request.headers[h]) for h in HEADERS if h in request.headers})
        return httpx.Response(200, json={"tokens": []})

    yield seen, httpx.MockTransport(answer)


async def test_blocks_send_their_context_nest_and_end():
    with recording() as (seen, transport):
        default = AgentContext(model="gpt-5")
        async with AgentDB.connect(
            "http://agentdb", "adb_sess_x", transport=transport, agent_context=default
        ) as db:
            await db.list_session_tokens("s")
            with db.agent_context(tool="run_sql", tool_call_id="call_1", prompt="héllo wörld"):
                await db.list_session_tokens("s")
                with db.agent_context(tool_call_id="call_2", model="claude-sonnet-4") as inner:
                    assert inner == AgentContext(
                        "run_sql", "call_2", "claude-sonnet-4", "héllo wörld"
                    )
                    await db.list_session_tokens("s")
                await db.list_session_tokens("s")
            await db.list_session_tokens("s")
    tool, call, model, prompt = HEADERS
    assert seen == [
        {model: "gpt-5"},
        {tool: "run_sql", call: "call_1", model: "gpt-5", prompt: "héllo wörld"},
        {tool: "run_sql", call: "call_2", model: "claude-sonnet-4", prompt: "héllo wörld"},
        {tool: "run_sql", call: "call_1", model: "gpt-5", prompt: "héllo wörld"},
        {model: "gpt-5"},
    ]


def test_headers_are_percent_encoded_and_the_prompt_an_excerpt():
    context = AgentContext(tool="run_sql", prompt="Ünïcode, 📝 and\r\nlines\x07 " + "y" * 600)
    headers = context.headers()
    assert all(value.isascii() for value in headers.values())
    assert headers["X-Agent-Tool"] == "run_sql"
    prompt = unquote(headers["X-Agent-Prompt"])
    assert prompt.startswith("Ünïcode, 📝 and\nlines  y")
    assert len(prompt) == 500
    assert AgentContext(model="  ").headers() == {}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tool": "t" * 201}, "tool: at most 200"),
        ({"tool_call_id": "c" * 201}, "tool_call_id: at most 200"),
        ({"model": "a\x07b"}, "model: must not hold control characters"),
    ],
)
def test_values_the_server_would_refuse_are_refused_here(fields: dict[str, str], message: str):
    db = AgentDB.connect("http://agentdb", "adb_sess_x")
    with pytest.raises(ValueError, match=message), db.agent_context(**fields):
        pass
    AgentContext(prompt="p" * 5000)  # a prompt is cut, never refused


async def test_each_client_and_each_task_has_its_own_context():
    with recording() as (seen, transport):
        async with (
            AgentDB.connect("http://agentdb", "adb_sess_a", transport=transport) as first,
            AgentDB.connect("http://agentdb", "adb_sess_b", transport=transport) as second,
        ):

            async def call(tool: str) -> None:
                with first.agent_context(tool=tool):
                    await asyncio.sleep(0)
                    await first.list_session_tokens("s")

            with first.agent_context(tool="outer"):
                await second.list_session_tokens("s")  # another client: nothing
                await asyncio.gather(call("a"), call("b"))
                await first.list_session_tokens("s")
    tool = HEADERS[0]
    assert seen[0] == {}
    assert sorted(s[tool] for s in seen[1:3]) == ["a", "b"]
    assert seen[3] == {tool: "outer"}
