"""The agents that answer in the chat. Each works only through agentdb's tools (`Tools`, over a
`Toolbox` bound to the chat's session), the same definitions the MCP server and the
function-calling exports offer. With ANTHROPIC_API_KEY or OPENAI_API_KEY a real model drives
them through its official SDK (imported only then); without, `OfflineAgent` understands the
small command language of `demo._commands`."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import JsonValue

from agentdb.tools import Toolbox, ToolError

from ._commands import COMMANDS_HELP, MAX_SHOWN_ROWS, Action, CommandError, Sql, parse

#: Tool calls one turn of a model may make before it is stopped.
MAX_STEPS = 12
MAX_TOKENS = 2048
DEFAULT_MODELS = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-4.1-mini"}
SYSTEM_PROMPT = (
    "You are a codegen agent building the PostgreSQL database of the user's app, in a chat. "
    "Change the database with the run_sql tool; look before you change when unsure. After "
    "every turn of yours that changed the database, the app saves a checkpoint labelled with "
    "the user's message, so do not call create_checkpoint yourself unless asked. When the "
    "user asks to undo, restore the parent of the head checkpoint (list_checkpoints). Answer "
    "in one or two short sentences."
)
_READ_ONLY_COMMANDS = ("SELECT", "SHOW", "EXPLAIN", "VALUES", "TABLE")
_TABLES_SQL = """
SELECT c.table_schema, c.table_name,
       string_agg(c.column_name || ' ' || c.data_type, ', ' ORDER BY c.ordinal_position)
FROM information_schema.columns c
JOIN information_schema.tables t USING (table_schema, table_name)
WHERE t.table_type = 'BASE TABLE'
  AND c.table_schema <> 'information_schema' AND c.table_schema NOT LIKE 'pg\\_%'
GROUP BY 1, 2 ORDER BY 1, 2
"""


class Reply(Protocol):
    """What the person sees of a turn, as it happens."""

    def text(self, chunk: str) -> None: ...
    def status(self, line: str) -> None: ...
    def tool(self, name: str, arguments: Mapping[str, Any]) -> None: ...
    def result(self, line: str) -> None: ...
    def table(self, columns: list[str], rows: list[list[JsonValue]], total: int) -> None: ...
    def error(self, message: str) -> None: ...


class Tools:
    """The chat session's toolbox, as the agent calls it: every call and its outcome is shown
    in the reply, and `dirty` says whether the live database may differ from the head
    checkpoint (SQL ran since the last checkpoint or restore)."""

    def __init__(self, toolbox: Toolbox, reply: Reply) -> None:
        self.toolbox = toolbox
        self.reply = reply
        self.dirty = False

    async def call(self, name: str, arguments: Mapping[str, Any] | str | None) -> JsonValue:
        """Runs the tool; raises `ToolError` (already shown to the person) when it fails."""
        shown = arguments if isinstance(arguments, Mapping) else _loads(arguments)
        self.reply.tool(name, shown)
        try:
            result = await self.toolbox.call(name, arguments)
        except ToolError as exc:
            self.reply.error(exc.message)
            raise
        if name == "run_sql":
            self.dirty = True
            self.reply.result(_sql_outcome(result))
        elif name in {"create_checkpoint", "restore_checkpoint"}:
            self.dirty = False
            self.reply.result("done")
        return result


class Agent(Protocol):
    #: Shown on the page: which agent answers.
    name: str

    async def respond(self, message: str, tools: Tools, history: list[Any]) -> None:
        """Answers `message`, calling `tools` and writing to `tools.reply`. `history` is this
        chat's conversation so far, in the agent's own format; it appends to it."""
        ...


def _loads(arguments: str | None) -> Mapping[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def _sql_outcome(result: JsonValue) -> str:
    if not isinstance(result, dict):
        return "done"
    return str(result.get("command") or "done")


def _is_read(result: JsonValue) -> bool:
    return isinstance(result, dict) and str(result.get("command", "")).startswith(
        _READ_ONLY_COMMANDS
    )


# --- offline -----------------------------------------------------------------------------


class OfflineAgent:
    """Understands the command language of `demo._commands`; no network, no model."""

    name = (
        "offline command agent (no API key set; it understands the commands listed below "
        "the chat box)"
    )

    async def respond(self, message: str, tools: Tools, history: list[Any]) -> None:  # noqa: ARG002
        reply = tools.reply
        try:
            command = parse(message)
        except CommandError as exc:
            reply.error(str(exc))
            return
        try:
            if isinstance(command, Action):
                await self._action(command.name, tools)
            else:
                await self._sql(command, tools)
        except ToolError:
            reply.text("Nothing was changed.")

    async def _sql(self, command: Sql, tools: Tools) -> None:
        tools.reply.text(f"OK, I'll {command.summary}. ")
        arguments: dict[str, Any] = {"sql": command.sql}
        if command.params:
            arguments["params"] = command.params
        result = await tools.call("run_sql", arguments)
        if isinstance(result, dict) and _is_read(result):
            columns = [str(c["name"]) for c in result["columns"]]  # type: ignore[call-overload, index, union-attr]
            rows = result["rows"]
            total = result["row_count"]
            if isinstance(rows, list) and isinstance(total, int):
                tools.reply.table(columns, rows[:MAX_SHOWN_ROWS], total)  # type: ignore[arg-type]
        tools.reply.text("Done.")

    async def _action(self, name: str, tools: Tools) -> None:
        reply = tools.reply
        if name == "help":
            reply.text("I understand:\n")
            for example, meaning in COMMANDS_HELP:
                reply.text(f"• {example}  ({meaning})\n")
        elif name == "tables":
            result = await tools.call("run_sql", {"sql": _TABLES_SQL})
            rows = result.get("rows", []) if isinstance(result, dict) else []
            if not rows:
                reply.text("There are no tables yet.")
            elif isinstance(rows, list):
                reply.table(["schema", "table", "columns"], rows, len(rows))  # type: ignore[arg-type]
        elif name == "undo":
            await _undo(tools)


async def _undo(tools: Tools) -> None:
    reply = tools.reply
    tree = await tools.call("list_checkpoints", {})
    if not isinstance(tree, dict):
        return
    head_id = tree.get("head_id")
    checkpoints = tree.get("checkpoints")
    by_id = {
        c["id"]: c
        for c in (checkpoints if isinstance(checkpoints, list) else [])
        if isinstance(c, dict)
    }
    head = by_id.get(head_id) if isinstance(head_id, str) else None
    if head is None:
        reply.text("There is no checkpoint yet, so there is nothing to undo.")
        return
    parent_id = head.get("parent_id")
    if not isinstance(parent_id, str):
        reply.text(
            "This is the first checkpoint: there is nothing earlier to go back to "
            "(start a new session for an empty database)."
        )
        return
    parent = by_id.get(parent_id, {})
    reply.text(f"Going back to “{parent.get('label') or parent_id}”. ")
    await tools.call("restore_checkpoint", {"checkpoint_id": parent_id})
    reply.text("Done: the database is as it was then; later checkpoints stay in the tree.")


# --- real models ---------------------------------------------------------------------------


def _tool_content(result: JsonValue) -> str:
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False)


class AnthropicAgent:
    """Claude through the official `anthropic` SDK's tool calling, streaming its text."""

    def __init__(self, api_key: str, model: str, *, client: Any = None) -> None:  # noqa: ANN401
        if client is None:
            sdk: Any = importlib.import_module("anthropic")
            client = sdk.AsyncAnthropic(api_key=api_key)
        self._client = client
        self._model = model
        self.name = f"Claude ({model}) through the Anthropic API"

    async def respond(self, message: str, tools: Tools, history: list[Any]) -> None:
        history.append({"role": "user", "content": message})
        schemas = tools.toolbox.anthropic_tools()
        for _ in range(MAX_STEPS):
            async with self._client.messages.stream(
                model=self._model,
                max_tokens=MAX_TOKENS,
                system=SYSTEM_PROMPT,
                tools=schemas,
                messages=history,
            ) as stream:
                async for chunk in stream.text_stream:
                    tools.reply.text(chunk)
                final = await stream.get_final_message()
            history.append({"role": "assistant", "content": final.content})
            calls = [block for block in final.content if block.type == "tool_use"]
            if not calls:
                return
            results = []
            for call in calls:
                try:
                    content, failed = _tool_content(await tools.call(call.name, call.input)), False
                except ToolError as exc:
                    content, failed = exc.message, True
                results.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": call.id,
                        "content": content,
                        "is_error": failed,
                    }
                )
            history.append({"role": "user", "content": results})
        tools.reply.error(f"stopped after {MAX_STEPS} tool calls")


class OpenAIAgent:
    """An OpenAI model through the official `openai` SDK's function calling (Chat
    Completions), streaming its text."""

    def __init__(self, api_key: str, model: str, *, client: Any = None) -> None:  # noqa: ANN401
        if client is None:
            sdk: Any = importlib.import_module("openai")
            client = sdk.AsyncOpenAI(api_key=api_key)
        self._client = client
        self._model = model
        self.name = f"{model} through the OpenAI API"

    async def respond(self, message: str, tools: Tools, history: list[Any]) -> None:
        if not history:
            history.append({"role": "system", "content": SYSTEM_PROMPT})
        history.append({"role": "user", "content": message})
        schemas = tools.toolbox.openai_tools()
        for _ in range(MAX_STEPS):
            stream = await self._client.chat.completions.create(
                model=self._model, messages=history, tools=schemas, stream=True
            )
            text, calls = await _read_openai_stream(stream, tools.reply)
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for c in calls
                ]
            history.append(entry)
            if not calls:
                return
            for call in calls:
                try:
                    content = _tool_content(await tools.call(call["name"], call["arguments"]))
                except ToolError as exc:
                    content = f"error: {exc.message}"
                history.append({"role": "tool", "tool_call_id": call["id"], "content": content})
        tools.reply.error(f"stopped after {MAX_STEPS} tool calls")


async def _read_openai_stream(stream: Any, reply: Reply) -> tuple[str, list[dict[str, str]]]:  # noqa: ANN401 - the SDK's stream
    text: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    async for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            reply.text(delta.content)
            text.append(delta.content)
        for part in delta.tool_calls or []:
            slot = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] = part.id or slot["id"]
            if part.function is not None:
                slot["name"] += part.function.name or ""
                slot["arguments"] += part.function.arguments or ""
    return "".join(text), [calls[i] for i in sorted(calls)]


def choose_agent(environ: Mapping[str, str]) -> tuple[Agent, str | None]:
    """The agent the keys in `environ` allow, and a note when a key is set but its SDK is
    missing. AGENTDB_DEMO_MODEL picks the model (default: a current mid-size one)."""
    model = environ.get("AGENTDB_DEMO_MODEL")
    for key, package, factory in (
        ("ANTHROPIC_API_KEY", "anthropic", AnthropicAgent),
        ("OPENAI_API_KEY", "openai", OpenAIAgent),
    ):
        secret = environ.get(key)
        if not secret:
            continue
        try:
            agent: Agent = factory(secret, model or DEFAULT_MODELS[package])
        except ImportError:
            note = (
                f"{key} is set, but the {package} package is not installed (pip install {package})"
            )
            return OfflineAgent(), note
        return agent, None
    return OfflineAgent(), None
