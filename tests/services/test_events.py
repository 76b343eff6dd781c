"""EventService on the embedded PostgreSQL and the local plane: a session's audit log, oldest
first, paged by event id."""

from __future__ import annotations

import uuid

import pytest

from agentdb.services import InvalidInput, SessionNotFound
from agentdb.services._common import Actor
from agentdb.services.events import EventService, EventView
from agentdb.services.tokens import TokenService
from meta_schema import ActorScope


@pytest.fixture
def events(meta_sessions) -> EventService:
    return EventService(meta_sessions)


async def test_a_sessions_events_read_oldest_first_and_page_by_id(
    events, session_service, checkpoint_service, meta_sessions, user_id
) -> None:
    session = await session_service.create(user_id)
    other = await session_service.create(user_id)
    agent = Actor("token-9", ActorScope.SESSION, request_id="req-1")
    checkpoint = await checkpoint_service.create(session.id, label="one", actor=agent)
    token = await TokenService(meta_sessions).issue_session_token(session.id, actor=agent)

    feed = await events.list(session.id)
    assert [e.action for e in feed] == [
        "session.create",
        "session.create",
        "checkpoint.create",
        "checkpoint.create",
        "token.issue",
    ]
    assert [e.details.get("phase") for e in feed[:2]] == ["requested", "succeeded"]
    assert [e.id for e in feed] == sorted(e.id for e in feed)
    assert all(e.session_id == session.id for e in feed)
    created = feed[1]
    assert (created.actor, created.actor_scope, created.request_id) == (
        "system",
        ActorScope.SYSTEM,
        None,
    )
    assert (created.target_kind, created.target_id) == ("session", str(session.id))
    assert created.neon_operation_ids  # the project's and the root snapshot's operations
    assert feed[-2].target_id == str(checkpoint.id)
    assert (feed[-2].actor, feed[-2].actor_scope, feed[-2].request_id) == (
        "token-9",
        ActorScope.SESSION,
        "req-1",
    )
    issued = feed[-1]
    assert (issued.target_kind, issued.target_id) == ("token", str(token.view.id))
    assert token.token.get_secret_value() not in issued.model_dump_json()

    pages: list[list[EventView]] = []
    after: int | None = None
    while page := await events.list(session.id, after=after, limit=2):
        pages.append(page)
        after = page[-1].id
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [e for p in pages for e in p] == feed
    assert await events.list(session.id, after=feed[-1].id) == []
    assert [e.id for e in await events.list(session.id, after=feed[1].id, limit=1)] == [feed[2].id]

    # The other session's feed holds only its own events.
    assert {e.session_id for e in await events.list(other.id)} == {other.id}


async def test_a_deleted_sessions_events_stay_readable(events, session_service, user_id) -> None:
    session = await session_service.create(user_id)
    await session_service.delete(session.id)
    actions = [e.action for e in await events.list(session.id)]
    assert actions[-2:] == ["session.delete", "session.delete"]


async def test_bad_listing_requests_are_refused(events, session_service, user_id) -> None:
    with pytest.raises(SessionNotFound):
        await events.list(uuid.uuid4())
    session = await session_service.create(user_id)
    for limit in (0, -5, 501):
        with pytest.raises(InvalidInput) as caught:
            await events.list(session.id, limit=limit)
        assert caught.value.field == "limit"
    with pytest.raises(InvalidInput) as negative:
        await events.list(session.id, after=-1)
    assert negative.value.field == "after"
    assert len(await events.list(session.id, limit=500)) == 2
