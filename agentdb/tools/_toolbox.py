"""`Toolbox`: the tools over one SDK client, as function-calling schemas (OpenAI, Anthropic,
MCP) and as a dispatcher that validates an agent's arguments and runs the tool.

A toolbox bound to a session (an agent holding a session token) fills in `session_id` itself
and leaves it out of every schema: the agent never handles an id it could get wrong. A toolbox
offers only the tools its token's mode may call, and each call says which tool made it (the
SDK's agent context), so the audit log records it.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import JsonValue, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from agentdb.sdk import (
    AgentContext,
    AgentDB,
    AgentDBError,
    ConflictError,
    ControlPlaneError,
    SqlError,
)
from agentdb.wire import TokenMode

from ._definitions import PLATFORM_TOOLS, TOOLS, PlatformTool, Tool

#: A tool of either kind.
AnyTool = Tool[Any] | PlatformTool[Any]

JsonSchema = dict[str, Any]


class ToolError(Exception):
    """A tool call that did not happen or failed; the message says what to change, in words an
    agent can act on. `status` is the REST API's status when the API refused the call."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _AgentSchema(GenerateJsonSchema):
    """JSON schemas an LLM reads easily: no titles, and an optional field is just optional
    (left out means the default), not "this type or null"."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def field_title_should_be_set(self, schema: Any) -> bool:  # noqa: ANN401, ARG002 - pydantic's hook
        return False


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:  # noqa: ANN401 - any JSON
    """The schema with every local `$ref` replaced by its definition (none are recursive),
    and without `"default": null` (an omitted argument gets its default anyway)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {
            key: _inline(value, defs)
            for key, value in node.items()
            if key not in {"$defs", "title"} and not (key == "default" and value is None)
        }
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def input_schema(tool: AnyTool, *, bound: bool) -> JsonSchema:
    """The tool's input as JSON Schema: without `session_id` for a bound toolbox, with it
    required otherwise (a platform tool takes none)."""
    raw = tool.input_model.model_json_schema(schema_generator=_AgentSchema)
    schema: JsonSchema = _inline(raw, raw.get("$defs", {}))
    properties: dict[str, Any] = schema.setdefault("properties", {})
    if isinstance(tool, PlatformTool):
        return schema
    required = [name for name in schema.get("required", []) if name != "session_id"]
    if bound:
        properties.pop("session_id", None)
    else:
        required.insert(0, "session_id")
        # The session comes first: it is what every call is about.
        schema["properties"] = {"session_id": properties.pop("session_id"), **properties}
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)
    return schema


class Toolbox:
    """agentdb's tools over an SDK client (embedded or remote; the caller keeps it open).

    `session_id` binds every call to that session and hides `session_id` from the schemas;
    without it, every session tool takes a required `session_id`, and the platform tools
    (`create_session`, `list_sessions`) are offered too. `mode` is the mode of the client's
    token (`scoped_toolbox` learns it): only the tools it may call are offered, a read-only
    one's run_sql as the read-only query it is. User and admin tokens are `full`."""

    def __init__(
        self,
        client: AgentDB,
        *,
        session_id: uuid.UUID | str | None = None,
        mode: TokenMode | str = TokenMode.FULL,
    ) -> None:
        self.client = client
        self.session_id = None if session_id is None else uuid.UUID(str(session_id))
        self.mode = TokenMode(mode)
        bound = self.session_id is not None
        candidates: tuple[AnyTool, ...] = TOOLS if bound else (*PLATFORM_TOOLS, *TOOLS)
        offered = [t for t in (c.for_mode(self.mode) for c in candidates) if t is not None]
        self._tools = {tool.name: tool for tool in offered}
        self._withheld = {c.name for c in candidates} - set(self._tools)
        self._schemas = {tool.name: input_schema(tool, bound=bound) for tool in offered}

    @property
    def tools(self) -> list[AnyTool]:
        return list(self._tools.values())

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def input_schema(self, name: str) -> JsonSchema:
        """A copy of tool `name`'s input schema."""
        return copy.deepcopy(self._schemas[self._tool(name).name])

    def openai_tools(self) -> list[dict[str, Any]]:
        """For OpenAI's Chat Completions `tools=` (function calling)."""
        return [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": self.input_schema(tool.name),
                },
            }
            for tool in self.tools
        ]

    def anthropic_tools(self) -> list[dict[str, Any]]:
        """For Anthropic's Messages API `tools=`."""
        return [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": self.input_schema(tool.name),
            }
            for tool in self.tools
        ]

    async def call(
        self,
        name: str,
        arguments: Mapping[str, Any] | str | None = None,
        *,
        tool_call_id: str | None = None,
        model: str | None = None,
        prompt: str | None = None,
    ) -> JsonValue:
        """Runs tool `name` with the agent's `arguments` (a dict, or the JSON text a model
        produced) and returns its JSON result. Raises `ToolError` for an unknown tool (or one
        the token's mode may not call), bad arguments, or a call the API refused (with the
        API's explanation).

        The call's requests say what made them, for the audit log: the tool's name, and
        `tool_call_id` (the model's id of this call, e.g. Anthropic's `tool_use` id), `model`
        and `prompt` (the user's request behind it) when given; values not given are the
        client's (`AgentDB.agent_context`)."""
        tool = self._tool(name)
        args = _decode(arguments)
        # Naming its own session is harmless; naming another one is a mistake worth telling.
        if self.session_id is not None:
            given = args.pop("session_id", None)
            if given is not None and not _same_id(given, self.session_id):
                raise ToolError(
                    f"session_id: this connection works on session {self.session_id} only; "
                    "leave session_id out"
                )
        try:
            parsed = tool.input_model.model_validate(args)
        except ValidationError as exc:
            raise ToolError(_describe(exc, tool)) from None
        try:
            context = AgentContext(
                tool=tool.name, tool_call_id=tool_call_id, model=model, prompt=prompt
            )
        except ValueError as exc:
            raise ToolError(str(exc)) from None
        try:
            with self.client.agent_context(**context.fields()):
                if isinstance(tool, PlatformTool):
                    return await tool.handler(self.client, parsed)
                session_id = self.session_id or parsed.session_id
                if session_id is None:
                    raise ToolError("session_id: required (the id of the agent session to work on)")
                return await tool.handler(self.client, session_id, parsed)
        except AgentDBError as exc:
            raise ToolError(_explain(exc), status=exc.status) from exc
        except httpx.HTTPError as exc:
            raise ToolError(f"agentdb could not be reached ({exc!r}); try again later") from exc

    def _tool(self, name: str) -> AnyTool:
        tool = self._tools.get(name)
        if tool is not None:
            return tool
        known = ", ".join(self._tools)
        if name in self._withheld:
            raise ToolError(
                f"{name}: this connection's token is {self.mode.value} and may not call it; "
                f"the tools are: {known}"
            )
        raise ToolError(f"unknown tool {name!r}; the tools are: {known}")


def _decode(arguments: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}  # some models send "" for a tool without arguments
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise ToolError(f"the arguments are not valid JSON: {exc}") from None
    if not isinstance(arguments, Mapping):
        raise ToolError("the arguments must be a JSON object")
    return dict(arguments)


def _same_id(value: object, expected: uuid.UUID) -> bool:
    try:
        return uuid.UUID(str(value)) == expected
    except ValueError:
        return False


def _describe(error: ValidationError, tool: AnyTool) -> str:
    """One clause per bad argument, e.g. "checkpoint_id: required; max_rows: Input should be
    less than or equal to 10000"."""
    allowed = [n for n in tool.input_model.model_fields if n != "session_id"]
    parts = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "arguments"
        if item["type"] == "missing":
            parts.append(f"{field}: required")
        elif item["type"] == "extra_forbidden":
            known = ", ".join(allowed) if allowed else "none"
            parts.append(f"{field}: unknown argument (the arguments of {tool.name}: {known})")
        else:
            parts.append(f"{field}: {item['msg']}")
    return "; ".join(parts)


def _explain(error: AgentDBError) -> str:
    message = str(error)
    if isinstance(error, SqlError) and error.hint:
        message += f" (hint: {error.hint})"
    if isinstance(error, ControlPlaneError) or (
        isinstance(error, ConflictError) and error.type.endswith("/session-busy")
    ):
        message += " (temporary: try again in a moment)"
    return message
