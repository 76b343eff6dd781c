"""The demo's web app (Litestar, server-rendered with Jinja templates, HTMX and server-sent
events; htmx is vendored in `static/`, so it works offline) and how it is started: `open_demo`
gives a `Demo` acting as the demo user through an SDK client of the in-process API app,
`create_demo_app` its pages at `/demo`, `with_demo` puts them beside `agentdb serve`'s API.

Who may use it: every route but the sign-in page and the static files needs a sign-in (a
cookie set once the person pasted an agentdb admin or user token) or that token as a bearer
header; a browser without one is sent to the sign-in page, anything else gets a 401. A request
that changes something, when signed in by cookie, must come from the demo's own origin.

How the demo reaches agentdb: it is a trusted part of the agentdb process. At start it makes
(or finds) the user `demo@agentdb.local` and issues that user a token that lives as long as the
demo (revoked at the end), and reaches the API app in-process with it, through the same routes
and checks as any client. Each browser gets a cookie naming its chat and its own session of
that user (at most AGENTDB_DEMO_MAX_SESSIONS at once); the agent's toolbox is bound to that
session. Connection strings stay on the server.
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
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, State
from litestar.enums import ScopeType
from litestar.exceptions import NotFoundException
from litestar.handlers import BaseRouteHandler
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
from ._auth import SIGN_IN_COOKIE, CrossSite, SignInRequired, SignIns, TooManyFailures
from ._chat import Chat, Demo, DemoError, SessionCapReached
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


def _cookie(request: AnyRequest, key: str, value: str, max_age: int | None = None) -> Cookie:
    return Cookie(
        key=key,
        value=value,
        path=request.app.state.prefix,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _chat_cookie(request: AnyRequest, chat: Chat) -> Cookie:
    return _cookie(request, COOKIE, chat.key)


# --- signing in ------------------------------------------------------------------------------

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _same_origin(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether a browser's request comes from a page of this server: its Origin names our host
    (or, from a browser that sends no Origin, Sec-Fetch-Site says same-origin)."""
    origin = connection.headers.get("origin")
    if origin is None:
        return connection.headers.get("sec-fetch-site") == "same-origin"
    host = connection.headers.get("host", "")
    _, sep, netloc = origin.partition("://")
    return bool(sep) and bool(host) and netloc.lower() == host.lower()


async def _signed_in(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The guard of every demo route but those marked public."""
    if handler.opt.get("public"):
        return
    sign_ins: SignIns = connection.app.state.demo.sign_ins
    header = connection.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise SignInRequired("send 'Authorization: Bearer <token>' or sign in")
        client = connection.client.host if connection.client is not None else "unknown"
        if await sign_ins.check_bearer(token.strip(), client) is None:
            raise SignInRequired("the token does not open the demo (use an admin or user token)")
        return  # a header cannot be forged cross-site: no Origin check
    cookie = connection.cookies.get(SIGN_IN_COOKIE)
    if not cookie or await sign_ins.principal(cookie) is None:
        raise SignInRequired("sign in with an agentdb admin or user token first")
    method = cast("Mapping[str, Any]", connection.scope).get("method", "GET")
    if method not in _SAFE_METHODS and not _same_origin(connection):
        raise CrossSite("this request did not come from the demo's own page")


@get("/sign-in", name="demo:sign-in", opt={"public": True})
async def sign_in_page() -> Template:
    return Template("sign_in.html", context={"error": None})


@post("/sign-in", opt={"public": True}, status_code=303)
async def sign_in(request: AnyRequest) -> Response[Any]:
    if not _same_origin(request):
        raise CrossSite("sign in from the demo's own page")
    form = await request.form()
    token = str(form.get("token", "")).strip()
    client = request.client.host if request.client is not None else "unknown"
    sign_ins = _demo(request).sign_ins
    cookie = await sign_ins.sign_in(token, client) if token else None
    if cookie is None:
        error = (
            "paste a token first"
            if not token
            else "that token does not open the demo (an admin or user token that is not "
            "revoked or expired is needed)"
        )
        return Template("sign_in.html", context={"error": error}, status_code=401)
    prefix = request.app.state.prefix
    return Redirect(
        f"{prefix}/",
        status_code=303,
        cookies=[
            _cookie(request, SIGN_IN_COOKIE, cookie, int(sign_ins.ttl.total_seconds())),
        ],
    )


@post("/sign-out", status_code=200)
async def sign_out(request: AnyRequest) -> Response[str]:
    demo = _demo(request)
    demo.sign_ins.sign_out(request.cookies.get(SIGN_IN_COOKIE, ""))
    chat = demo.chats.get(request.cookies.get(COOKIE, ""))
    if chat is not None:
        demo.drop_chat(chat)
    prefix = request.app.state.prefix
    response = Response("", headers={"HX-Redirect": f"{prefix}/sign-in"})
    response.delete_cookie(SIGN_IN_COOKIE, path=prefix)
    response.delete_cookie(COOKIE, path=prefix)
    return response


def _wants_html_page(request: AnyRequest) -> bool:
    return (
        request.method in _SAFE_METHODS
        and "hx-request" not in request.headers
        and "text/html" in request.headers.get("accept", "")
    )


def _on_sign_in_required(request: AnyRequest, exc: SignInRequired) -> Response[Any]:
    sign_in_url = f"{request.app.state.prefix}/sign-in"
    if _wants_html_page(request):
        return Redirect(sign_in_url, status_code=303)
    headers = {"WWW-Authenticate": 'Bearer realm="agentdb demo"'}
    if "hx-request" in request.headers:
        headers["HX-Redirect"] = sign_in_url  # htmx follows it whatever the status
    return _problem(401, "Unauthorized", str(exc), headers)


def _on_cross_site(_: AnyRequest, exc: CrossSite) -> Response[Any]:
    return _problem(403, "Forbidden", str(exc))


def _on_too_many_failures(_: AnyRequest, exc: TooManyFailures) -> Response[Any]:
    return _problem(429, "Too Many Requests", str(exc), {"Retry-After": str(exc.retry_after)})


def _problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


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
        try:
            chat = await demo.new_chat()
        except SessionCapReached as exc:
            return Template("message.html", context={"message": str(exc)}, status_code=429)
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
        cookies=[_chat_cookie(request, chat)],
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
        cookies=[_chat_cookie(request, chat)],
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
                guards=[_signed_in],
                route_handlers=[
                    sign_in_page,
                    sign_in,
                    sign_out,
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
                        path="/static",
                        directories=[_HERE / "static"],
                        include_in_schema=False,
                        opt={"public": True},  # htmx and the stylesheet: no data
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
            SignInRequired: _on_sign_in_required,
            CrossSite: _on_cross_site,
            TooManyFailures: _on_too_many_failures,
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
    max_chats: int | None = None,
) -> AsyncIterator[Demo]:
    """The demo over a running agentdb: acts as the demo user through `api` (the REST app of
    `runtime`, reached in-process). `agent` defaults to what `environ` (default: the process
    environment) allows: a real model with an API key, else the offline agent. On exit it
    deletes its sessions and revokes its token. At most `max_chats` (default:
    AGENTDB_DEMO_MAX_SESSIONS) browsers have a chat (and a database) at once; signing in is
    checked by `runtime`'s token service."""
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
                sign_ins=SignIns(runtime.tokens.authenticate),
                agent_note=note,
                max_chats=runtime.settings.demo_max_sessions if max_chats is None else max_chats,
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
