"""The demo's web app (Litestar, server-rendered with Jinja templates, HTMX and server-sent
events; htmx is vendored in `static/`, so it works offline) and how it is started: `open_demo`
gives a `Demo` acting as the demo user through an SDK client of the in-process API app,
`create_demo_app` its pages at `/demo`, `with_demo` puts them beside `agentdb serve`'s API.

How the demo authenticates: it is a trusted part of the agentdb process. At start it makes
(or finds) the user `demo@agentdb.local` and issues that user a token that lives as long as the
demo (revoked at the end), and reaches the API app in-process with it, through the same routes
and checks as any client. Each browser gets a cookie naming its chat and its own session of
that user; the agent's toolbox is bound to that session. Connection strings stay on the server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import jinja2
import psycopg
from litestar import Litestar, MediaType, Request, Response, Router, get, post
from litestar.datastructures import Cookie, State
from litestar.enums import ScopeType
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, ServerSentEvent, ServerSentEventMessage, Template
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from litestar.types import ASGIApp, Receive, Scope, Send
from pydantic import JsonValue

from agentdb.runtime import Runtime
from agentdb.sdk import AgentDB, AgentDBError, Checkpoint, CheckpointTree
from agentdb.services import AlreadyExists

from ._agents import Agent, choose_agent
from ._chat import MAX_CHATS, Chat, Demo, DemoError
from ._commands import COMMANDS_HELP

PREFIX = "/demo"
COOKIE = "agentdb_demo"
DEMO_EMAIL = "demo@agentdb.local"
#: The demo's token outlives no demo: it is revoked at the end, and expires anyway.
TOKEN_TTL = timedelta(days=7)
_HERE = Path(__file__).parent
_INTERNAL_URL = "http://agentdb"

AnyRequest = Request[Any, Any, Any]


# --- templates -------------------------------------------------------------------------------


def _cell(value: JsonValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "NULL" if value is None else str(value)


def _clock(at: datetime | None) -> str:
    return "" if at is None else at.strftime("%H:%M:%S")


def _children(tree: CheckpointTree) -> dict[uuid.UUID | None, list[Checkpoint]]:
    """The tree as parent id -> children, oldest first (roots under None)."""
    kids: dict[uuid.UUID | None, list[Checkpoint]] = {}
    known = {c.id for c in tree.checkpoints}
    for checkpoint in tree.checkpoints:
        parent = checkpoint.parent_id if checkpoint.parent_id in known else None
        kids.setdefault(parent, []).append(checkpoint)
    return kids


def templates(prefix: str = PREFIX) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals["prefix"] = prefix
    env.globals["commands"] = COMMANDS_HELP
    env.filters["cell"] = _cell
    env.filters["clock"] = _clock
    env.filters["children"] = _children
    return env


# --- routes ----------------------------------------------------------------------------------


class NoChat(Exception):  # noqa: N818 - a state: the browser has no chat here (any more)
    pass


def _demo(request: AnyRequest) -> Demo:
    demo: Demo = request.app.state.demo
    return demo


def _chat(request: AnyRequest) -> Chat:
    chat = _demo(request).chat(request.cookies.get(COOKIE, ""))
    if chat is None:
        raise NoChat
    return chat


def _cookie(chat: Chat, prefix: str) -> Cookie:
    return Cookie(key=COOKIE, value=chat.key, path=prefix, httponly=True, samesite="lax")


def _fragment(request: AnyRequest, template: str, **context: Any) -> Response[str]:  # noqa: ANN401
    html = _demo(request).render(template, **context)
    return Response(html, media_type=MediaType.HTML)


async def _panels(request: AnyRequest, chat: Chat, *, note: str | None = None) -> Response[str]:
    panels = await _demo(request).panels(chat)
    return _fragment(
        request, "_panels.html", tree=panels.tree, tables=panels.tables, note=note, chat=chat
    )


@get("/", include_in_schema=False)
async def root() -> Redirect:
    return Redirect(f"{PREFIX}/")


@get("/", name="demo:index")
async def index(request: AnyRequest) -> Template:
    demo = _demo(request)
    chat = demo.chat(request.cookies.get(COOKIE, ""))
    if chat is None:
        chat = await demo.new_chat()
    panels = await demo.panels(chat)
    return Template(
        "index.html",
        context={
            "chat": chat,
            "agent_name": demo.agent.name,
            "agent_note": demo.agent_note,
            "tree": panels.tree,
            "tables": panels.tables,
        },
        cookies=[_cookie(chat, request.app.state.prefix)],
    )


@post("/chat", status_code=200)
async def send(request: AnyRequest) -> Response[str]:
    form = await request.form()
    message = str(form.get("message", "")).strip()
    chat = _chat(request)
    if not message:
        raise DemoError("type a message first")
    turn = _demo(request).send(chat, message)
    return _fragment(request, "_exchange.html", turn=turn, after=0, shown="")


@get("/turns/{number:int}/events")
async def turn_events(request: AnyRequest, number: FromPath[int]) -> ServerSentEvent:
    chat = _chat(request)
    if not 1 <= number <= len(chat.turns):
        raise NotFoundException(f"no turn {number}")
    turn = chat.turns[number - 1]
    # Where to go on from: the browser's Last-Event-ID on a reconnect, or `after` from a page
    # that already shows the turn's first events.
    last = request.headers.get("last-event-id") or request.query_params.get("after") or ""
    after = int(last) if last.isdigit() else 0

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        async for event_id, event, html in turn.stream(after):
            yield ServerSentEventMessage(data=html, event=event, id=event_id)

    return ServerSentEvent(events())


@get("/panels")
async def panels(request: AnyRequest) -> Response[str]:
    return await _panels(request, _chat(request))


@post("/checkpoints/{checkpoint_id:uuid}/restore", status_code=200)
async def restore(request: AnyRequest, checkpoint_id: FromPath[uuid.UUID]) -> Response[str]:
    chat = _chat(request)
    checkpoint = await _demo(request).client.get_checkpoint(chat.session_id, checkpoint_id)
    await _demo(request).restore(chat, checkpoint_id)
    return await _panels(request, chat, note=f"Restored “{checkpoint.label or checkpoint.id}”.")


@post("/checkpoints/{checkpoint_id:uuid}/preview", status_code=200)
async def preview(request: AnyRequest, checkpoint_id: FromPath[uuid.UUID]) -> Response[str]:
    chat = _chat(request)
    demo = _demo(request)
    checkpoint = await demo.client.get_checkpoint(chat.session_id, checkpoint_id)
    _, tables = await demo.preview(chat, checkpoint_id)
    return _fragment(
        request, "_database.html", tables=tables, preview=checkpoint, oob=False, chat=chat
    )


@post("/preview/close", status_code=200)
async def close_preview(request: AnyRequest) -> Response[str]:
    chat = _chat(request)
    await _demo(request).close_preview(chat)
    return await _panels(request, chat)


@get("/diff")
async def diff(request: AnyRequest) -> Response[str]:
    chat = _chat(request)
    source = request.query_params.get("from", "")
    target = request.query_params.get("to", "HEAD") or "HEAD"
    try:
        from_id = uuid.UUID(source)
    except ValueError:
        raise DemoError("pick a checkpoint to diff from") from None
    if target == source:
        raise DemoError("pick two different states to diff")
    result, rows = await _demo(request).diff(chat, from_id, target)
    tree = await _demo(request).client.list_checkpoints(chat.session_id)
    labels = {str(c.id): c.label or str(c.id) for c in tree.checkpoints}
    return _fragment(
        request,
        "_diff.html",
        diff=result,
        rows=rows,
        from_label=labels.get(source, source),
        to_label="the live database" if target == "HEAD" else labels.get(target, target),
    )


@post("/session", status_code=200)
async def new_session(request: AnyRequest) -> Response[str]:
    demo = _demo(request)
    old = demo.chat(request.cookies.get(COOKIE, ""))
    chat = await demo.replace_chat(old)
    return Response(
        "",
        headers={"HX-Redirect": f"{request.app.state.prefix}/"},
        cookies=[_cookie(chat, request.app.state.prefix)],
    )


def _notice(request: AnyRequest, message: str) -> Response[str]:
    """A problem the person should read, shown in the notice bar whatever the request's
    target was (the page's own swap is cancelled)."""
    html = _demo(request).render("_notice.html", message=message)
    return Response(html, media_type=MediaType.HTML, headers={"HX-Reswap": "none"})


def _on_demo_error(request: AnyRequest, exc: DemoError) -> Response[str]:
    return _notice(request, str(exc))


def _on_agentdb_error(request: AnyRequest, exc: AgentDBError) -> Response[str]:
    return _notice(request, f"agentdb: {exc}")


def _on_preview_error(request: AnyRequest, exc: psycopg.Error) -> Response[str]:
    return _notice(request, f"could not read the preview: {exc}")


def _on_no_chat(_: AnyRequest, __: NoChat) -> Response[str]:
    # The server restarted or the chat was replaced in another tab: reload the page.
    return Response("", headers={"HX-Refresh": "true"})


def create_demo_app(demo: Demo, *, prefix: str = PREFIX) -> Litestar:
    """The demo's pages at `prefix` (and `/` redirecting there). `demo` stays the caller's:
    the app neither opens nor closes it."""
    engine = JinjaTemplateEngine.from_environment(demo.templates)
    return Litestar(
        route_handlers=[
            root,
            Router(
                path=prefix,
                route_handlers=[
                    index,
                    send,
                    turn_events,
                    panels,
                    restore,
                    preview,
                    close_preview,
                    diff,
                    new_session,
                    create_static_files_router(
                        path="/static", directories=[_HERE / "static"], include_in_schema=False
                    ),
                ],
            ),
        ],
        template_config=TemplateConfig(instance=engine),
        state=State({"demo": demo, "prefix": prefix}),
        exception_handlers={
            DemoError: _on_demo_error,
            AgentDBError: _on_agentdb_error,
            psycopg.Error: _on_preview_error,
            NoChat: _on_no_chat,
        },
        openapi_config=None,
        logging_config=None,
        debug=False,
    )


def with_demo(api: ASGIApp, demo_app: ASGIApp, *, prefix: str = PREFIX) -> ASGIApp:
    """One ASGI app: `prefix` and below to the demo, everything else (lifespan included) to
    `api`. The demo is not mounted inside the API app, whose every route needs a token."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == ScopeType.HTTP and (path == prefix or path.startswith(prefix + "/")):
            await demo_app(scope, receive, send)
        else:
            await api(scope, receive, send)

    return app


# --- starting it -----------------------------------------------------------------------------


@asynccontextmanager
async def open_demo(
    runtime: Runtime,
    api: ASGIApp,
    *,
    agent: Agent | None = None,
    environ: Mapping[str, str] | None = None,
    prefix: str = PREFIX,
    max_chats: int = MAX_CHATS,
) -> AsyncIterator[Demo]:
    """The demo over a running agentdb: acts as the demo user through `api` (the REST app of
    `runtime`, reached in-process). `agent` defaults to what `environ` (default: the process
    environment) allows: a real model with an API key, else the offline agent. On exit it
    deletes its sessions and revokes its token. At most `max_chats` browsers have a chat (and
    a database) at once."""
    note = None
    if agent is None:
        agent, note = choose_agent(os.environ if environ is None else environ)
    user_id = await _demo_user(runtime)
    issued = await runtime.tokens.issue_user_token(user_id, name="agentdb demo", ttl=TOKEN_TTL)
    transport = httpx.ASGITransport(app=cast("Any", api))
    try:
        token = issued.token.get_secret_value()
        async with AgentDB.connect(_INTERNAL_URL, token, transport=transport) as client:
            demo = Demo(
                client,
                user_id=user_id,
                agent=agent,
                templates=templates(prefix),
                agent_note=note,
                max_chats=max_chats,
            )
            try:
                yield demo
            finally:
                await demo.close()
    finally:
        await runtime.tokens.revoke(issued.view.id)


async def _demo_user(runtime: Runtime) -> uuid.UUID:
    try:
        return (await runtime.users.create(DEMO_EMAIL, name="demo")).id
    except AlreadyExists:
        after = None
        while page := await runtime.users.list(limit=100, after=after):
            for user in page:
                if user.email == DEMO_EMAIL:
                    return user.id
            after = page[-1].id
        raise
