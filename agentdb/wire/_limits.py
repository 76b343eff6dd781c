"""Limits shared by the API's models, the settings, the services and the tools."""

#: Most rows and longest statement timeout one SQL call may ask for (the server's settings
#: choose the defaults, up to these).
MAX_SQL_ROWS = 10_000
MAX_SQL_TIMEOUT_SECONDS = 3600


#: The headers in which an agent (or the SDK, toolbox and MCP server for it) says what it is
#: doing; each event of the request records them. Values are percent-encoded UTF-8.
AGENT_CONTEXT_HEADERS = {
    "tool": "X-Agent-Tool",
    "tool_call_id": "X-Agent-Tool-Call-Id",
    "model": "X-Agent-Model",
    "prompt": "X-Agent-Prompt",
}
#: Longest tool name, call id or model recorded; a longer one is refused.
MAX_AGENT_CONTEXT = 200
#: The prompt is an excerpt: longer text is cut to this many characters.
MAX_PROMPT_EXCERPT = 500
