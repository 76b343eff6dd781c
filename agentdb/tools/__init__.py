"""agentdb as tools for agents: one definition per tool, exported as OpenAI and Anthropic
function-calling schemas, a dispatcher (`Toolbox.call`) and an MCP server (stdio for desktop
agent clients; streamable HTTP at `/mcp` of `agentdb serve` is `agentdb.tools.mcp_http`)."""

from ._definitions import PLATFORM_TOOLS, TOOLS, PlatformTool, Tool, ToolInput
from ._mcp import build_mcp_server, scoped_toolbox, serve_stdio
from ._toolbox import Toolbox, ToolError

__all__ = [
    "PLATFORM_TOOLS",
    "TOOLS",
    "PlatformTool",
    "Tool",
    "ToolError",
    "ToolInput",
    "Toolbox",
    "build_mcp_server",
    "scoped_toolbox",
    "serve_stdio",
]
