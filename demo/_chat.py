"""The demo's state: one `Chat` per browser (its own agentdb session, its messages and turns)
and the `Demo` that runs turns and the person's checkpoint actions through the SDK.

A turn runs as a task; what it produces is kept as a list of server-sent events, so the page
can (re)connect at any time and read from where it was. After a turn whose SQL changed the
database (diffed against the head checkpoint, or any app object with no checkpoint yet), the
demo checkpoints it through the `create_checkpoint` tool, labelled with the person's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jinja2
import structlog
from pydantic import JsonValue

from agentdb.sdk import AgentDB, AgentDBError, Branch, CheckpointTree, Diff
from agentdb.tools import Toolbox, ToolError

from ._agents import Agent, Tools
from ._auth import SignIns
from ._browser import RowChanges, TableView, describe, describe_uri, live_query, row_changes

log = structlog.get_logger("demo")

#: A checkpoint's label is the person's message, cut to what agentdb keeps as a label.
MAX_LABEL = 200
MAX_MESSAGE = 10_000
PREVIEW_TTL_SECONDS = 3600
#: A diff's own previews are deleted as soon as they are read; this is in case that fails.
DIFF_PREVIEW_TTL_SECONDS = 600
#: Chats (each with its own agentdb session) kept at once, unless AGENTDB_DEMO_MAX_SESSIONS says.
MAX_CHATS = 5
#: At the cap, a chat unused this long (and not answering) gives its place to a new one.
CHAT_IDLE = timedelta(minutes=30)
_APP_OBJECTS_SQL = """
SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
"""

#: Renders a fragment template with its context into HTML.
Render = Callable[..., str]
#: The events of a turn's stream: parts of the answer, the turn's last fragment (it refreshes
#: the side panes), and the end of the stream (its data must not be empty, or browsers drop it).
DELTA_EVENT = "delta"
END_EVENT = "end"
DONE_EVENT = "done"


class DemoError(Exception):
    """Something the person asked for that cannot be done; the message says why."""


class SessionCapReached(DemoError):  # noqa: N818 - a state, read as "the cap is reached"
    """The demo keeps as many sessions as it may; none is idle enough to give its place."""


class Busy(DemoError):  # noqa: N818 - a state, read as "the chat is busy"
    """The agent is still answering; one turn (or restore) at a time per chat."""


@dataclass
class Turn:
    """One message of the person and the agent's answer, as it streams."""

    number: int
    message: str
    events: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, event: str, html: str) -> None:
        self.events.append((event, html))
        self._wake.set()
        self._wake = asyncio.Event()

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.push(DONE_EVENT, "end")

    async def stream(self, after: int = 0) -> AsyncIterator[tuple[int, str, str]]:
        """(id, event, html) from event `after` on, until the turn is done; ids count from 1."""
        sent = max(after, 0)
        while True:
            while sent < len(self.events):
                event, html = self.events[sent]
                sent += 1
                yield sent, event, html
            if self.done:
                return
            await self._wake.wait()


class TurnReply:
    """The agent's `Reply`, as HTML fragments pushed to the turn's event stream."""

    def __init__(self, turn: Turn, render: Render) -> None:
        self._turn = turn
        self._render = render

    def _add(self, kind: str, **context: Any) -> None:  # noqa: ANN401
        self._turn.push(DELTA_EVENT, self._render("_reply.html", kind=kind, **context))

    def text(self, chunk: str) -> None:
        self._add("text", text=chunk)

    def status(self, line: str) -> None:
        self._add("status", text=line)

    def tool(self, name: str, arguments: Mapping[str, Any]) -> None:
        self._add("tool", name=name, arguments=dict(arguments))

    def result(self, line: str) -> None:
        self._add("result", text=line)

    def table(self, columns: list[str], rows: list[list[JsonValue]], total: int) -> None:
        self._add("table", columns=columns, rows=rows, total=total)

    def error(self, message: str) -> None:
        self._add("error", text=message)


@dataclass
class Chat:
    """One browser's conversation with its own agentdb session."""

    key: str
    session_id: uuid.UUID
    created_at: datetime
    used_at: datetime
    turns: list[Turn] = field(default_factory=list)
    history: list[Any] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    preview: Branch | None = None


@dataclass(frozen=True, slots=True)
class Panels:
    """What the side panes show: the checkpoint tree and the live database."""

    tree: CheckpointTree
    tables: list[TableView]


class Demo:
    """The chat demo over an open SDK client that acts as `user_id` (the demo's user)."""

    def __init__(
        self,
        client: AgentDB,
        *,
        user_id: uuid.UUID,
        agent: Agent,
        templates: jinja2.Environment,
        sign_ins: SignIns,
        agent_note: str | None = None,
        max_chats: int = MAX_CHATS,
    ) -> None:
        self.client = client
        self.sign_ins = sign_ins
        self.user_id = user_id
        self.agent = agent
        self.agent_note = agent_note
        self.templates = templates
        self.max_chats = max_chats
        self.chats: dict[str, Chat] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def render(self, template: str, **context: Any) -> str:  # noqa: ANN401
        return self.templates.get_template(template).render(**context)

    # --- chats -------------------------------------------------------------------------------

    def chat(self, key: str) -> Chat | None:
        """The chat a browser's cookie names, if it is still kept."""
        chat = self.chats.get(key)
        if chat is not None:
            chat.used_at = datetime.now(UTC)
        return chat

    async def new_chat(self) -> Chat:
        """A chat with a new, empty agentdb session. Every chat costs a database: at the cap,
        the longest-unused chat idle for `CHAT_IDLE` gives its place; if none is, raises
        `SessionCapReached`."""
        if len(self.chats) >= self.max_chats:
            self._reclaim_idle()
        if len(self.chats) >= self.max_chats:
            raise SessionCapReached(
                f"the demo already has {len(self.chats)} sessions open, its cap "
                "(AGENTDB_DEMO_MAX_SESSIONS); use “New session” in an open chat, "
                f"or try again when one has been idle for {int(CHAT_IDLE.total_seconds()) // 60}"
                " minutes"
            )
        now = datetime.now(UTC)
        key = secrets.token_urlsafe(24)
        # The place is taken before the session exists, so that concurrent requests cannot
        # all pass the cap while their sessions are being created.
        self.chats[key] = Chat(key, uuid.UUID(int=0), now, now)
        try:
            session = await self.client.create_session(user_id=self.user_id, name="demo chat")
        except BaseException:
            del self.chats[key]
            raise
        chat = self.chats[key]
        chat.session_id = session.id
        log.info("demo.chat_started", session_id=str(session.id))
        return chat

    def _reclaim_idle(self) -> None:
        now = datetime.now(UTC)
        idle = [
            c
            for c in self.chats.values()
            if now - c.used_at >= CHAT_IDLE and not c.lock.locked() and c.session_id.int
        ]
        if idle:
            oldest = min(idle, key=lambda c: c.used_at)
            del self.chats[oldest.key]
            self._spawn(self._drop(oldest))

    async def replace_chat(self, old: Chat | None) -> Chat:
        """A new chat; the old one's session (and its checkpoints) is deleted first, so that
        its place under the cap goes to the new one."""
        if old is not None:
            self.chats.pop(old.key, None)
            self._spawn(self._drop(old))
        return await self.new_chat()

    def drop_chat(self, chat: Chat) -> None:
        """Forgets the chat and deletes its session (at sign-out)."""
        if self.chats.pop(chat.key, None) is not None:
            self._spawn(self._drop(chat))

    async def _drop(self, chat: Chat) -> None:
        async with chat.lock:
            with contextlib.suppress(AgentDBError):
                await self.client.delete_session(chat.session_id)

    async def close(self) -> None:
        """Stops running turns and deletes the sessions this demo created."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for chat in list(self.chats.values()):
            with contextlib.suppress(AgentDBError):
                await self.client.delete_session(chat.session_id)
        self.chats.clear()

    def _spawn(self, work: Any) -> None:  # noqa: ANN401 - a coroutine
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- turns -------------------------------------------------------------------------------

    def send(self, chat: Chat, message: str) -> Turn:
        """Starts the agent's answer to `message`; raises `Busy` while one is running."""
        if chat.turns and not chat.turns[-1].done:
            raise Busy("the agent is still answering your last message")
        turn = Turn(len(chat.turns) + 1, message[:MAX_MESSAGE])
        chat.turns.append(turn)
        self._spawn(self._run_turn(chat, turn))
        return turn

    async def _run_turn(self, chat: Chat, turn: Turn) -> None:
        reply = TurnReply(turn, self.render)
        try:
            async with chat.lock:
                tools = Tools(Toolbox(self.client, session_id=chat.session_id), reply)
                try:
                    await self.agent.respond(turn.message, tools, chat.history)
                    if tools.dirty:
                        await self._checkpoint_if_changed(turn, tools)
                except Exception as exc:  # the person sees it; the demo keeps running
                    log.exception("demo.turn_failed")
                    reply.error(f"the agent stopped: {exc}")
                turn.push(END_EVENT, self.render("_turn_end.html", turn=turn))
        finally:
            turn.finish()

    async def _checkpoint_if_changed(self, turn: Turn, tools: Tools) -> None:
        reply = tools.reply
        reply.status("checking what changed…")
        if not await _changed(tools.toolbox):
            reply.status("the database is as at the last checkpoint: no checkpoint needed")
            return
        reply.status("saving a checkpoint…")
        label = (
            turn.message if len(turn.message) <= MAX_LABEL else turn.message[: MAX_LABEL - 1] + "…"
        )
        arguments = {"label": label, "message": turn.message}
        try:
            await tools.call("create_checkpoint", arguments)
        except ToolError:
            return
        reply.status(f"checkpoint saved: “{label}”")

    # --- what the person does beside the chat -------------------------------------------------

    async def panels(self, chat: Chat) -> Panels:
        tree = await self.client.list_checkpoints(chat.session_id)
        tables = await describe(live_query(self.client, str(chat.session_id)))
        return Panels(tree, tables)

    async def restore(self, chat: Chat, checkpoint_id: uuid.UUID) -> None:
        if chat.lock.locked():
            raise Busy("the agent is still answering; restore when it is done")
        async with chat.lock:
            await self.client.restore_checkpoint(chat.session_id, checkpoint_id)

    async def preview(self, chat: Chat, checkpoint_id: uuid.UUID) -> tuple[Branch, list[TableView]]:
        """The checkpoint opened as a preview branch (the previous preview is deleted)."""
        await self.close_preview(chat)
        branch = await self.client.preview_checkpoint(
            chat.session_id, checkpoint_id, ttl_seconds=PREVIEW_TTL_SECONDS
        )
        chat.preview = branch
        if branch.connection_uri is None:
            raise DemoError("agentdb gave no connection for the preview")
        return branch, await describe_uri(branch.connection_uri)

    async def close_preview(self, chat: Chat) -> None:
        branch, chat.preview = chat.preview, None
        if branch is not None:
            with contextlib.suppress(AgentDBError):
                await self.client.delete_branch(chat.session_id, branch.id)

    async def diff(
        self, chat: Chat, from_id: uuid.UUID, to: str
    ) -> tuple[Diff, dict[str, RowChanges]]:
        """agentdb's diff (schema, row counts, whether data changed) and, for tables whose
        data changed and that are small, the rows themselves: each checkpoint is read through
        a short-lived preview branch, the live database through the SQL call."""
        diff = await self.client.diff_checkpoints(chat.session_id, from_id, to)
        changed = {t.name for t in diff.tables if t.data_changed or t.rows_from != t.rows_to}
        if not changed:
            return diff, {}
        before = await self._tables_at(chat, str(from_id))
        after = await self._tables_at(chat, to)
        rows = {}
        for name in changed:
            if name in before and name in after:
                found = row_changes(before[name], after[name])
                if found is not None:
                    rows[name] = found
        return diff, rows

    async def _tables_at(self, chat: Chat, state: str) -> dict[str, TableView]:
        if state.upper() == "HEAD":
            tables = await describe(live_query(self.client, str(chat.session_id)))
        else:
            branch = await self.client.preview_checkpoint(
                chat.session_id, state, ttl_seconds=DIFF_PREVIEW_TTL_SECONDS
            )
            try:
                if branch.connection_uri is None:
                    raise DemoError("agentdb gave no connection for the preview")
                tables = await describe_uri(branch.connection_uri)
            finally:
                with contextlib.suppress(AgentDBError):
                    await self.client.delete_branch(chat.session_id, branch.id)
        return {t.qualified: t for t in tables}


async def _changed(toolbox: Toolbox) -> bool:
    """Whether the live database differs from the head checkpoint, asked through the tools:
    a diff against the head, or with no checkpoint yet, whether any app object exists."""
    session = await toolbox.call("get_session", {})
    head = session.get("head_checkpoint_id") if isinstance(session, dict) else None
    if head is None:
        result = await toolbox.call("run_sql", {"sql": _APP_OBJECTS_SQL})
        rows = result.get("rows") if isinstance(result, dict) else None
        return bool(isinstance(rows, list) and rows and rows[0] != [0])
    diff = await toolbox.call("diff_checkpoints", {"checkpoint_id": head, "against": "HEAD"})
    if not isinstance(diff, dict):
        return True
    summary = diff.get("summary")
    identical = isinstance(summary, dict) and summary.get("identical") is True
    tables = diff.get("tables")
    return not identical or bool(tables)
