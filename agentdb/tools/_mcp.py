"""The tools as an MCP server (the official `mcp` SDK's low-level `Server`): the same
definitions, names, descriptions and input schemas as `Toolbox`, with a failed call answered as
an MCP tool error (`isError`) whose text says what to change. Each caller is offered the tools
its token's mode allows, and each call's requests carry the tool's name and the MCP request's id
(`X-Agent-Tool`, `X-Agent-Tool-Call-Id`), which the audit log records.

Two transports: stdio here (`agentdb mcp`, for desktop agent clients), and streamable HTTP
mounted at `/mcp` by `agentdb serve` (`agentdb.tools.mcp_http`, which loads the server's web
framework and so lives apart).
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import version
from typing import Any

from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from agentdb.sdk import AgentDB, AgentDBError
from agentdb.wire import SCOPE_PREFIXES, TokenMode, TokenScope

from ._toolbox import AnyTool, Toolbox, ToolError

#: Tells an agent (and its client) how the tools fit together, once per connection.
INSTRUCTIONS = (
    "agentdb gives this agent session its own PostgreSQL database. Work with run_sql. Call "
    "create_checkpoint after every meaningful step; restore_checkpoint puts the database back "
    "to any checkpoint in place (same connection string, later checkpoints kept). "
    "diff_checkpoints shows what changed. Dev and preview branches are separate databases "
    "that expire on their own. list_extensions shows the extensions CREATE EXTENSION can "
    "install; roles are made with create_role, not CREATE ROLE. Deleting the session or its "
    "checkpoints and turning Neon Auth or the Data API off need a user or admin token: no "
    "tool here does them. A read-only token is offered the reading tools only, and its "
    "run_sql runs one statement that never writes."
)
#: The same for a read-only token's stdio server, which knows its mode before it starts.
READ_ONLY_INSTRUCTIONS = (
    "agentdb gives this agent session its own PostgreSQL database; this connection is "
    "read-only. Query it with run_sql (one statement per call, run in a read-only transaction "
    "that is rolled back: nothing you run changes the database). list_checkpoints, "
    "diff_checkpoints, list_roles, list_extensions, get_session and get_usage show its "
    "history, roles, extensions and state. Changing anything needs a read_write token."
)
SESSION_TOKEN_PREFIX = SCOPE_PREFIXES[TokenScope.SESSION]

#: Gives the toolbox for one MCP request: the transport's request (None on stdio) in, a
#: toolbox acting with that request's credentials out, for the time of the call.
ToolboxSource = Callable[[object], AbstractAsyncContextManager[Toolbox]]


async def scoped_toolbox(client: AgentDB, token: str | None = None) -> Toolbox:
    """A toolbox for whoever holds `token`: for a session token, bound to its session and
    offering what its mode allows (the API's `GET /v1/tokens/current` tells both); unbound
    (`session_id` in every call) and `full` otherwise: user and admin tokens, and an embedded
    client, which acts without a token."""
    if token is None or not token.startswith(SESSION_TOKEN_PREFIX):
        return Toolbox(client, mode=TokenMode.FULL)
    try:
        own = await client.current_token()
    except AgentDBError as exc:
        raise ToolError(str(exc), status=exc.status) from exc
    if own.scope != TokenScope.SESSION or own.session_id is None:
        raise ToolError("the session token does not lead to a session")
    return Toolbox(client, session_id=own.session_id, mode=own.mode)


def build_mcp_server(toolbox: Toolbox | ToolboxSource, *, name: str = "agentdb") -> Server[Any]:
    """An MCP server offering agentdb's tools: over one `Toolbox` (stdio, embedded), or over
    a `ToolboxSource` that gives each request a toolbox acting with its caller's token."""
    source = _fixed(toolbox) if isinstance(toolbox, Toolbox) else toolbox
    read_only = isinstance(toolbox, Toolbox) and toolbox.mode == TokenMode.READ_ONLY

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], _: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        try:
            async with source(ctx.request) as box:
                return types.ListToolsResult(tools=[_mcp_tool(box, t) for t in box.tools])
        except ToolError as exc:
            raise MCPError(types.INVALID_REQUEST, exc.message) from exc

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        # The MCP request's id names the call in the audit log (the client numbers its
        # requests); a request without one gets an id of its own.
        call_id = f"mcp-{uuid.uuid4().hex}" if ctx.request_id is None else str(ctx.request_id)
        try:
            async with source(ctx.request) as box:
                result = await box.call(params.name, params.arguments, tool_call_id=call_id)
        except ToolError as exc:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=exc.message)], is_error=True
            )
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=_compact(result))],
            structured_content=result if isinstance(result, dict) else {"result": result},
        )

    return Server(
        name,
        version=version("agentdb"),
        title="agentdb",
        instructions=READ_ONLY_INSTRUCTIONS if read_only else INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _mcp_tool(box: Toolbox, tool: AnyTool) -> types.Tool:
    return types.Tool(
        name=tool.name,
        description=tool.description,
        input_schema=box.input_schema(tool.name),
        annotations=types.ToolAnnotations(
            read_only_hint=tool.read_only,
            destructive_hint=tool.destructive,
            idempotent_hint=tool.idempotent or tool.read_only,
            open_world_hint=False,
        ),
    )


def _fixed(toolbox: Toolbox) -> ToolboxSource:
    @asynccontextmanager
    async def source(_: object) -> AsyncIterator[Toolbox]:
        yield toolbox

    return source


# --- stdio ----------------------------------------------------------------------------------


async def serve_stdio(client: AgentDB, *, token: str | None = None) -> None:
    """Serves the tools over this process's stdin/stdout until the MCP client closes them.
    Opens and closes `client` (embedded or remote); `token` is the one it connects with, which
    decides whether the tools are bound to one session.

    Startup (an embedded PostgreSQL, the session a token leads to) happens before the MCP
    channel opens, so its failures end the command with their own message; Python's stdout
    points at stderr meanwhile, and while serving the MCP SDK points file descriptor 1 there,
    so nothing else can write into the channel."""
    async with contextlib.AsyncExitStack() as stack:
        with contextlib.redirect_stdout(sys.stderr):
            await stack.enter_async_context(client)
            toolbox = await scoped_toolbox(client, token)
        server = build_mcp_server(toolbox)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


def _compact(result: object) -> str:
    """The result as the agent reads it: JSON without padding (every character is a token)."""
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False)
