"""The MCP server over streamable HTTP, mounted at `/mcp` by `agentdb serve`: each request acts
with its own bearer token through an SDK client of the in-process API app, so a session token
reaches its one session and nothing else. Apart from `agentdb.tools` because it loads Litestar,
which a client of agentdb (`agentdb mcp` with a URL) never needs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import unquote

import httpx
from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from agentdb.sdk import AgentContext, AgentDB
from agentdb.wire import AGENT_CONTEXT_HEADERS, TokenMode

from ._mcp import build_mcp_server, scoped_toolbox
from ._toolbox import Toolbox, ToolError

#: Base URL of the in-process API app as the HTTP transport's SDK clients call it.
INTERNAL_URL = "http://agentdb"


class McpHttp:
    """The MCP server over streamable HTTP, for mounting in the API app (`route`), stateless
    and answering JSON: every request carries its caller's bearer token, and the tools act
    with it through an SDK client of `api`, so they pass the API's own authorization. A
    request's `X-Agent-Model` and `X-Agent-Prompt` headers (an MCP client configured to send
    them) go with its tool calls' requests, beside the tool and call id the server fills in.

    `running()` must be entered around serving (it owns the MCP SDK's task group)."""

    def __init__(self, api: ASGIApp, *, path: str = "/mcp") -> None:
        self._api = api
        self.path = path
        self.server = build_mcp_server(self._toolbox_for)
        # DNS-rebinding protection is off: it guards servers that trust whoever reaches them,
        # and every request here must carry a bearer token a rebinding page does not have.
        self._manager = StreamableHTTPSessionManager(
            self.server, json_response=True, stateless=True, security_settings=None
        )

    def running(self) -> AbstractAsyncContextManager[None]:
        return self._manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._manager.handle_request(scope, receive, send)  # type: ignore[arg-type]

    @property
    def route(self) -> ASGIRouteHandler:
        """A Litestar route handler mounting this app at `path` (the API's middleware, bearer
        authentication included, runs before it)."""

        async def mcp_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            await self(scope, receive, send)

        # Open to every token mode: MCP speaks POST even to read, and each tool's own API
        # request meets the token's mode there (a read-only token is offered reading tools).
        return asgi(self.path, is_mount=True, copy_scope=True, opt={"mode": TokenMode.READ_ONLY})(
            mcp_endpoint
        )

    @asynccontextmanager
    async def _toolbox_for(self, request: object) -> AsyncIterator[Toolbox]:
        token = _bearer(request)
        if token is None:
            raise ToolError("send 'Authorization: Bearer <token>' (an agentdb token)")
        transport = httpx.ASGITransport(app=self._api)  # type: ignore[arg-type]
        context = _agent_context(request)
        async with AgentDB.connect(
            INTERNAL_URL, token, transport=transport, agent_context=context
        ) as client:
            yield await scoped_toolbox(client, token)


def _agent_context(request: object) -> AgentContext:
    """The model and prompt the MCP client sent as headers (percent-encoded UTF-8)."""
    headers = getattr(request, "headers", None)
    found: dict[str, str] = {}
    for key in ("model", "prompt"):
        value = headers.get(AGENT_CONTEXT_HEADERS[key]) if headers is not None else None
        if isinstance(value, str) and value.strip():
            found[key] = unquote(value.strip(), errors="replace")
    try:
        return AgentContext(**found)
    except ValueError as exc:
        raise ToolError(f"{AGENT_CONTEXT_HEADERS['model']} header: {exc}") from None


def _bearer(request: object) -> str | None:
    headers = getattr(request, "headers", None)
    value = headers.get("authorization") if headers is not None else None
    if not isinstance(value, str):
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


__all__ = ["McpHttp"]
