"""The real-model agents' tool loops, with the model's side scripted in the shapes of the
official SDKs' objects (no network here) and everything else real: the tools run through a
Toolbox bound to the chat's session, over the in-process API, and a turn that changed the
database is checkpointed with the person's message as its label."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, Self

import pytest
from litestar import Litestar

from agentdb.runtime import Runtime
from demo import (
    AnthropicAgent,
    Demo,
    OfflineAgent,
    OpenAIAgent,
    SessionCapReached,
    choose_agent,
    open_demo,
)
from demo._chat import CHAT_IDLE

# --- Anthropic's Messages API, streamed -----------------------------------------------------


def text_block(text: str) -> SimpleNamespace:
    return SimpleNamespace(type="text", text=text)


def tool_use(call_id: str, name: str, arguments: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(type="tool_use", id=call_id, name=name, input=arguments)


class AnthropicStream:
    def __init__(self, content: list[SimpleNamespace]) -> None:
        self.content = content

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    @property
    async def text_stream(self) -> AsyncIterator[str]:
        for block in self.content:
            if block.type == "text":
                for word in block.text.split(" "):
                    yield word + " "

    async def get_final_message(self) -> SimpleNamespace:
        return SimpleNamespace(content=self.content)


class ScriptedAnthropic:
    """`client.messages.stream(...)`, answering from a script; keeps what it was sent."""

    def __init__(self, *replies: list[SimpleNamespace]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.messages = self

    def stream(self, **request: Any) -> AnthropicStream:
        self.requests.append(json.loads(json.dumps(request, default=vars)))
        return AnthropicStream(self.replies.pop(0))


# --- OpenAI's Chat Completions, streamed ----------------------------------------------------


def chunk(content: str | None = None, calls: list[SimpleNamespace] | None = None) -> Any:
    delta = SimpleNamespace(content=content, tool_calls=calls)
    return SimpleNamespace(choices=[SimpleNamespace(delta=delta)])


def call_part(index: int, call_id: str | None, name: str | None, args: str) -> SimpleNamespace:
    return SimpleNamespace(
        index=index, id=call_id, function=SimpleNamespace(name=name, arguments=args)
    )


class ScriptedOpenAI:
    """`client.chat.completions.create(stream=True, ...)`, answering from a script."""

    def __init__(self, *replies: list[Any]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.chat = SimpleNamespace(completions=self)

    async def create(self, **request: Any) -> AsyncIterator[Any]:
        self.requests.append(json.loads(json.dumps(request)))
        chunks = self.replies.pop(0)

        async def stream() -> AsyncIterator[Any]:
            for item in chunks:
                yield item

        return stream()


async def run_turn(demo: Demo, message: str) -> tuple[str, list[str]]:
    """One turn in a new chat: the streamed HTML, and the labels of the checkpoints after it."""
    chat = await demo.new_chat()
    turn = demo.send(chat, message)
    html = "".join([h async for _, event, h in turn.stream() if event == "delta"])
    tree = await demo.client.list_checkpoints(chat.session_id)
    return html, [c.label or "" for c in tree.checkpoints]


async def test_claude_drives_the_tools_and_the_turn_is_checkpointed(
    runtime: Runtime, api_app: Litestar
) -> None:
    model = ScriptedAnthropic(
        [
            text_block("Creating it."),
            tool_use("t1", "run_sql", {"sql": "create table notes (body text)"}),
        ],
        [text_block("Done: a notes table.")],
    )
    agent = AnthropicAgent("no-key-needed", "claude-test", client=model)
    async with open_demo(runtime, api_app, agent=agent) as demo:
        html, labels = await run_turn(demo, "I need a notes table")
    assert labels == ["root", "I need a notes table"]
    assert "Creating " in html
    assert "Done: " in html
    assert "CREATE TABLE" in html
    first, second = model.requests
    names = {tool["name"] for tool in first["tools"]}
    assert {"run_sql", "restore_checkpoint", "diff_checkpoints"} <= names
    # The toolbox is bound to the chat's session: the model never sees a session id.
    run_sql = next(t for t in first["tools"] if t["name"] == "run_sql")
    assert "session_id" not in run_sql["input_schema"]["properties"]
    result = second["messages"][-1]["content"][0]
    assert result["type"] == "tool_result"
    assert result["tool_use_id"] == "t1"
    assert result["is_error"] is False
    assert json.loads(result["content"])["command"] == "CREATE TABLE"


async def test_a_failed_tool_call_goes_back_to_the_model_and_nothing_is_checkpointed(
    runtime: Runtime, api_app: Litestar
) -> None:
    model = ScriptedAnthropic(
        [tool_use("t1", "run_sql", {"sql": "create tabel notes (body text)"})],
        [text_block("Sorry, my SQL was wrong.")],
    )
    agent = AnthropicAgent("no-key-needed", "claude-test", client=model)
    async with open_demo(runtime, api_app, agent=agent) as demo:
        html, labels = await run_turn(demo, "I need a notes table")
    assert labels == ["root"]
    assert "syntax error" in html
    result = model.requests[1]["messages"][-1]["content"][0]
    assert result["is_error"] is True
    assert 'syntax error at or near "tabel"' in result["content"]


async def test_an_openai_model_drives_the_tools_with_streamed_arguments(
    runtime: Runtime, api_app: Litestar
) -> None:
    model = ScriptedOpenAI(
        [
            chunk("Adding "),
            chunk("it."),
            chunk(calls=[call_part(0, "c1", "run_sql", '{"sql": "create table tags ')]),
            chunk(calls=[call_part(0, None, None, '(name text)"}')]),
        ],
        [chunk("Your tags table is ready.")],
    )
    agent = OpenAIAgent("no-key-needed", "gpt-test", client=model)
    async with open_demo(runtime, api_app, agent=agent) as demo:
        html, labels = await run_turn(demo, "add tags")
    assert labels == ["root", "add tags"]
    assert "Adding " in html
    assert "ready" in html
    first, second = model.requests
    assert first["messages"][0]["role"] == "system"
    assert first["stream"] is True
    assistant, tool = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"] == {
        "name": "run_sql",
        "arguments": '{"sql": "create table tags (name text)"}',
    }
    assert tool["role"] == "tool"
    assert tool["tool_call_id"] == "c1"
    assert json.loads(tool["content"])["command"] == "CREATE TABLE"


def test_without_a_key_the_offline_agent_answers() -> None:
    agent, note = choose_agent({})
    assert isinstance(agent, OfflineAgent)
    assert note is None


@pytest.mark.parametrize(
    ("key", "package"), [("ANTHROPIC_API_KEY", "anthropic"), ("OPENAI_API_KEY", "openai")]
)
def test_a_key_picks_its_model_when_its_sdk_is_installed(key: str, package: str) -> None:
    agent, note = choose_agent({key: "sk-test", "AGENTDB_DEMO_MODEL": "some-model"})
    if importlib.util.find_spec(package) is None:
        assert isinstance(agent, OfflineAgent)
        assert (
            note
            == f"{key} is set, but the {package} package is not installed (pip install {package})"
        )
    else:
        assert "some-model" in agent.name
        assert note is None


async def test_at_the_cap_only_an_idle_chat_gives_its_place_and_its_session_goes(
    runtime: Runtime, api_app: Litestar
) -> None:
    async with open_demo(runtime, api_app, agent=OfflineAgent(), max_chats=2) as demo:
        first, second = await demo.new_chat(), await demo.new_chat()
        with pytest.raises(SessionCapReached, match="AGENTDB_DEMO_MAX_SESSIONS"):
            await demo.new_chat()
        assert set(demo.chats) == {first.key, second.key}
        second.used_at -= CHAT_IDLE  # idle long enough: the longest-unused idle chat goes
        third = await demo.new_chat()
        assert set(demo.chats) == {first.key, third.key}
        await asyncio.gather(*demo._tasks)
        gone = await runtime.sessions.get(second.session_id)
        assert gone.deleted_at is not None
        kept = await demo.client.get_session(first.session_id)
        assert kept.deleted_at is None
    # Closing the demo deletes the sessions it still had.
    for chat in (first, third):
        assert (await runtime.sessions.get(chat.session_id)).deleted_at is not None
