"""The audit log of one agent session, read as a feed: everything done to it, oldest first,
paged by event id (a caller keeps the last id it saw and asks for what came after)."""

from __future__ import annotations

import builtins
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.wire import EventView
from meta_schema import Event

from ._common import SessionFactory, check_limit, load_session
from ._errors import InvalidInput


class EventService:
    """Reads a session's events."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    async def list(
        self, session_id: uuid.UUID, *, after: int | None = None, limit: int = 100
    ) -> builtins.list[EventView]:
        """The session's events with an id above `after`, oldest first, at most `limit`
        (1..500). Raises `SessionNotFound`, `InvalidInput`.

        Ids are drawn at insert, not at commit: a transaction still open while a page is read
        may later commit an id below the page's last one. Workflows commit their events within
        milliseconds, so a feed that must see everything re-reads a short window."""
        check_limit(limit)
        if after is not None and after < 0:
            raise InvalidInput("after", "must not be negative")
        query = (
            sa.select(Event)
            .where(col(Event.session_id) == session_id)
            .order_by(col(Event.id))
            .limit(limit)
        )
        if after is not None:
            query = query.where(col(Event.id) > after)
        async with self._db() as db:
            await load_session(db, session_id)
            return [EventView.of(row) for row in await db.scalars(query)]


__all__ = ["EventService", "EventView"]
