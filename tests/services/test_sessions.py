"""SessionService on the embedded PostgreSQL and the in-process local plane."""

from __future__ import annotations

import uuid

import httpx
import pytest
import sqlalchemy as sa
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentdb.neon import NeonClient, NeonNotFound
from agentdb.neon._client import LOCAL_APP_URL
from agentdb.services import (
    Conflict,
    ControlPlaneFailed,
    InvalidInput,
    NotFound,
    Secrets,
    SessionNotFound,
    SessionService,
    UserNotFound,
)
from meta_schema import AgentSession, Checkpoint, CheckpointStatus, Event, SessionStatus

from .conftest import API_KEY, FAST_RETRY, execute, failing_neon, fetch


async def events_of(
    meta_sessions: async_sessionmaker[AsyncSession], session_id: uuid.UUID
) -> list[Event]:
    async with meta_sessions() as db:
        rows = await db.scalars(
            sa.select(Event).where(Event.session_id == session_id).order_by(Event.id)  # type: ignore[arg-type]
        )
        return list(rows)


async def stored(
    meta_sessions: async_sessionmaker[AsyncSession], session_id: uuid.UUID
) -> AgentSession:
    async with meta_sessions() as db:
        row = await db.get(AgentSession, session_id)
        assert row is not None
        return row


async def test_create_gives_a_ready_database_with_a_root_checkpoint(
    session_service: SessionService, user_id: uuid.UUID, meta_sessions, neon: NeonClient
) -> None:
    session = await session_service.create(user_id, name="first")
    assert session.status == SessionStatus.READY
    assert session.name == "first"
    assert session.head_checkpoint_id is not None

    uri = await session_service.connection_uri(session.id)
    await execute(uri, "CREATE TABLE notes (body text)", "INSERT INTO notes VALUES ('hi')")
    assert await fetch(uri, "SELECT body FROM notes") == [("hi",)]

    row = await stored(meta_sessions, session.id)
    assert row.project_id is not None
    assert (await neon.get_project(row.project_id)).name == f"agentdb-{session.id}"
    async with meta_sessions() as db:
        root = await db.get(Checkpoint, session.head_checkpoint_id)
        assert root is not None
        assert root.status == CheckpointStatus.READY
        assert root.snapshot_id is not None
        assert root.parent_id is None
        assert root.source_branch_id == row.live_branch_id
    events = await events_of(meta_sessions, session.id)
    assert [e.details["phase"] for e in events] == ["requested", "succeeded"]
    assert events[-1].neon_operation_ids


async def test_views_never_carry_the_connection_uri(
    session_service: SessionService, user_id: uuid.UUID
) -> None:
    session = await session_service.create(user_id)
    uri = await session_service.connection_uri(session.id)
    password = httpx.URL(uri).password
    assert password
    assert password not in session.model_dump_json()
    assert password not in repr(session)
    assert "connection" not in "".join(session.model_dump())


async def test_connection_secret_is_encrypted_at_rest(
    session_service: SessionService, user_id: uuid.UUID, meta_sessions, box: Secrets
) -> None:
    session = await session_service.create(user_id)
    uri = await session_service.connection_uri(session.id)
    password = httpx.URL(uri).password
    assert password
    async with meta_sessions() as db:
        raw = await db.scalar(
            sa.text("SELECT encrypted_connection_secret FROM agent_sessions WHERE id = :id"),
            {"id": session.id},
        )
    assert isinstance(raw, bytes)
    assert password.encode() not in raw
    assert uri.encode() not in raw
    assert box.decrypt(raw) == uri


async def test_same_idempotency_key_returns_the_same_session(
    session_service: SessionService, user_id: uuid.UUID, meta_sessions
) -> None:
    first = await session_service.create(user_id, idempotency_key="run-42")
    again = await session_service.create(user_id, idempotency_key="run-42")
    assert again.id == first.id
    async with meta_sessions() as db:
        count = await db.scalar(
            sa.select(sa.func.count())
            .select_from(AgentSession)
            .where(AgentSession.idempotency_key == "run-42")  # type: ignore[arg-type]
        )
    assert count == 1


async def test_get_and_list(session_service: SessionService, user_id: uuid.UUID) -> None:
    a = await session_service.create(user_id, name="a")
    b = await session_service.create(user_id, name="b")
    assert (await session_service.get(a.id)).name == "a"
    listed = [s.id for s in await session_service.list(user_id)]
    assert listed[-2:] == [a.id, b.id]
    assert await session_service.list(uuid.uuid4()) == []


async def test_unknown_ids_raise_not_found(session_service: SessionService) -> None:
    unknown = uuid.uuid4()
    with pytest.raises(SessionNotFound):
        await session_service.get(unknown)
    with pytest.raises(NotFound):
        await session_service.connection_uri(unknown)
    with pytest.raises(NotFound):
        await session_service.delete(unknown)
    with pytest.raises(UserNotFound):
        await session_service.create(unknown)


async def test_bad_input_names_the_field(
    session_service: SessionService, user_id: uuid.UUID
) -> None:
    with pytest.raises(InvalidInput) as raised:
        await session_service.create(user_id, name="x" * 201)
    assert raised.value.field == "name"
    with pytest.raises(InvalidInput) as raised:
        await session_service.create(user_id, idempotency_key="  ")
    assert raised.value.field == "idempotency_key"


async def test_delete_removes_the_project(
    session_service: SessionService, user_id: uuid.UUID, meta_sessions, neon: NeonClient
) -> None:
    session = await session_service.create(user_id)
    project_id = (await stored(meta_sessions, session.id)).project_id
    assert project_id is not None

    deleted = await session_service.delete(session.id)
    assert deleted.status == SessionStatus.DELETED
    assert deleted.deleted_at is not None
    with pytest.raises(NeonNotFound):
        await neon.get_project(project_id)
    row = await stored(meta_sessions, session.id)
    assert row.encrypted_connection_secret is None
    with pytest.raises(Conflict):
        await session_service.connection_uri(session.id)
    assert session.id not in [s.id for s in await session_service.list(user_id)]
    # Deleting again, or after the project vanished, is done already.
    assert (await session_service.delete(session.id)).status == SessionStatus.DELETED


async def test_delete_treats_a_vanished_project_as_done(
    session_service: SessionService, user_id: uuid.UUID, meta_sessions, neon: NeonClient
) -> None:
    session = await session_service.create(user_id)
    project_id = (await stored(meta_sessions, session.id)).project_id
    assert project_id is not None
    await neon.delete_project(project_id)
    assert (await session_service.delete(session.id)).status == SessionStatus.DELETED


async def test_failed_project_create_leaves_a_failed_session_and_nothing_else(
    localplane_app: Litestar,
    meta_sessions,
    box: Secrets,
    user_id: uuid.UUID,
    neon: NeonClient,
) -> None:
    def fails(request: httpx.Request) -> bool:
        return request.method == "POST" and request.url.path.endswith("/projects")

    async with failing_neon(localplane_app, fails) as broken:
        service = SessionService(meta_sessions, broken, box)
        with pytest.raises(ControlPlaneFailed):
            await service.create(user_id, idempotency_key="doomed")
        async with meta_sessions() as db:
            row = await db.scalar(
                sa.select(AgentSession).where(AgentSession.idempotency_key == "doomed")  # type: ignore[arg-type]
            )
        assert row is not None
        assert row.status == SessionStatus.FAILED
        assert row.error
        assert "injected failure" in row.error
        assert row.project_id is None
        assert row.encrypted_connection_secret is None
        events = await events_of(meta_sessions, row.id)
        assert [e.details["phase"] for e in events] == ["requested", "failed"]
        assert events[-1].details["status"] == "failed"
        assert await neon.find_project(f"agentdb-{row.id}") is None
        # The same key now answers with the failed session, not a second attempt.
        assert (await service.create(user_id, idempotency_key="doomed")).id == row.id


async def test_failed_root_checkpoint_deletes_the_new_project(
    localplane_app: Litestar,
    meta_sessions,
    box: Secrets,
    user_id: uuid.UUID,
    neon: NeonClient,
) -> None:
    def fails(request: httpx.Request) -> bool:
        return request.method == "POST" and request.url.path.endswith("/snapshot")

    async with failing_neon(localplane_app, fails, status=400) as broken:
        service = SessionService(meta_sessions, broken, box)
        with pytest.raises(ControlPlaneFailed):
            await service.create(user_id, idempotency_key="no-snapshot")
    async with meta_sessions() as db:
        row = await db.scalar(
            sa.select(AgentSession).where(AgentSession.idempotency_key == "no-snapshot")  # type: ignore[arg-type]
        )
        assert row is not None
        checkpoints = list(
            await db.scalars(sa.select(Checkpoint).where(Checkpoint.session_id == row.id))  # type: ignore[arg-type]
        )
    assert row.status == SessionStatus.FAILED
    assert row.project_id is None
    assert row.head_checkpoint_id is None
    assert [c.status for c in checkpoints] == [CheckpointStatus.FAILED]
    assert await neon.find_project(f"agentdb-{row.id}") is None


async def test_a_project_created_but_unanswered_is_adopted(
    localplane_app: Litestar,
    meta_sessions: async_sessionmaker[AsyncSession],
    box: Secrets,
    user_id: uuid.UUID,
    neon: NeonClient,
) -> None:
    """The control plane made the project, then the answer was lost (a 5xx): the session is
    built on that project (its password read back), not failed and not made twice."""
    plane = httpx.ASGITransport(app=localplane_app)
    lost: list[str] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        answer = await plane.handle_async_request(request)
        if request.method == "POST" and request.url.path.endswith("/projects") and not lost:
            lost.append(request.url.path)
            return httpx.Response(500, json={"code": "INTERNAL_ERROR", "message": "lost"})
        return answer

    async with NeonClient(
        LOCAL_APP_URL,
        api_key=API_KEY,
        transport=httpx.MockTransport(handle),
        retry=FAST_RETRY,
        operation_poll_interval=0.02,
    ) as lossy:
        service = SessionService(meta_sessions, lossy, box)
        view = await service.create(user_id, "adopted")
        uri = await service.connection_uri(view.id)
    assert lost
    assert view.status == SessionStatus.READY
    await execute(uri, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1)")
    assert await fetch(uri, "SELECT n FROM t") == [(1,)]
    projects = [p async for p in neon.iter_projects() if p.name == f"agentdb-{view.id}"]
    assert len(projects) == 1
    await SessionService(meta_sessions, neon, box).delete(view.id)
