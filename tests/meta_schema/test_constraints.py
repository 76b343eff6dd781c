"""What the meta database itself refuses, whatever code writes to it: forged or duplicate
tokens, checkpoints and tokens that cross sessions, unknown states, edits to the event log."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import psycopg.errors
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.wire import BranchView, SessionView, TokenView
from meta_schema import (
    ActorScope,
    AgentSession,
    ApiToken,
    Branch,
    BranchKind,
    Checkpoint,
    CheckpointStatus,
    Event,
    SessionStatus,
    TokenScope,
    User,
)


def token_hash() -> str:
    return hashlib.sha256(secrets.token_bytes(32)).hexdigest()


async def add(db: AsyncSession, *rows: object) -> None:
    db.add_all(rows)
    await db.flush()


async def refused(
    db: AsyncSession, *rows: object, statement: sa.Executable | None = None
) -> type[BaseException]:
    """Insert `rows` (or run `statement`) in a savepoint that must fail; the psycopg error."""

    async def attempt() -> None:
        async with db.begin_nested():
            if statement is not None:
                await db.execute(statement)
            db.add_all(rows)
            await db.flush()

    with pytest.raises(DBAPIError) as raised:
        await attempt()
    assert raised.value.orig is not None
    return type(raised.value.orig)


async def new_user(db: AsyncSession) -> User:
    user = User(name="ada", email=f"ada-{uuid.uuid4()}@example.com", tier="free")
    await add(db, user)
    return user


async def new_session(db: AsyncSession, user: User | None = None) -> AgentSession:
    user = user or await new_user(db)
    session = AgentSession(user_id=user.id, name="todo app", tier=user.tier)
    await add(db, session)
    return session


async def test_rows_round_trip_with_enums_utc_times_and_json(db: AsyncSession):
    session = await new_session(db)
    checkpoint = Checkpoint(
        session_id=session.id,
        label="schema v1",
        meta={"commit": "abc123", "files": ["app.py"]},
        taken_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        size_bytes=7 * 2**20,
    )
    await add(db, checkpoint)
    db.expunge_all()

    loaded = await db.get_one(Checkpoint, checkpoint.id)
    assert loaded.status is CheckpointStatus.PENDING
    assert loaded.meta == {"commit": "abc123", "files": ["app.py"]}
    assert loaded.taken_at == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert loaded.taken_at.tzinfo is UTC
    assert loaded.pinned is False
    raw = await db.execute(sa.text("SELECT metadata->>'commit' FROM checkpoints"))
    assert raw.scalar_one() == "abc123"
    loaded_session = await db.get_one(AgentSession, session.id)
    assert loaded_session.status is SessionStatus.PROVISIONING
    assert loaded_session.created_at.tzinfo is UTC


def test_ids_are_uuid7_stamped_with_the_creation_millisecond():
    before = time.time_ns() // 1_000_000
    user = User(name="u", email="u@example.com", tier="free")
    after = time.time_ns() // 1_000_000
    assert (user.id.version, user.id.variant) == (7, uuid.RFC_4122)
    assert before <= user.id.int >> 80 <= after


async def test_naive_datetimes_are_refused_before_reaching_the_database(db: AsyncSession):
    session = await new_session(db)
    session.deleted_at = datetime(2026, 1, 1)  # noqa: DTZ001 - the point of the test
    with pytest.raises(StatementError, match="timezone"):
        await db.flush()


async def test_duplicate_token_hash_is_refused(db: AsyncSession):
    user = await new_user(db)
    digest = token_hash()
    await add(
        db, ApiToken(token_hash=digest, prefix="adb_u", scope=TokenScope.USER, user_id=user.id)
    )

    error = await refused(
        db, ApiToken(token_hash=digest, prefix="adb_u", scope=TokenScope.USER, user_id=user.id)
    )
    assert error is psycopg.errors.UniqueViolation


async def test_token_hash_must_be_a_hex_sha256(db: AsyncSession):
    error = await refused(
        db, ApiToken(token_hash="secret-token", prefix="x", scope=TokenScope.ADMIN)
    )
    assert error is psycopg.errors.CheckViolation


async def test_token_scope_and_owner_must_agree(db: AsyncSession):
    session = await new_session(db)
    user_token_naming_a_session = ApiToken(
        token_hash=token_hash(),
        prefix="x",
        scope=TokenScope.USER,
        user_id=session.user_id,
        session_id=session.id,
    )
    session_token_without_session = ApiToken(
        token_hash=token_hash(), prefix="x", scope=TokenScope.SESSION, user_id=session.user_id
    )
    assert await refused(db, user_token_naming_a_session) is psycopg.errors.CheckViolation
    assert await refused(db, session_token_without_session) is psycopg.errors.CheckViolation


async def test_session_token_cannot_name_someone_elses_session(db: AsyncSession):
    session = await new_session(db)
    mallory = await new_user(db)
    forged = ApiToken(
        token_hash=token_hash(),
        prefix="x",
        scope=TokenScope.SESSION,
        user_id=mallory.id,
        session_id=session.id,
    )
    assert await refused(db, forged) is psycopg.errors.ForeignKeyViolation

    await add(
        db,
        ApiToken(
            token_hash=token_hash(),
            prefix="x",
            scope=TokenScope.SESSION,
            user_id=session.user_id,
            session_id=session.id,
        ),
    )


async def test_checkpoint_parent_must_exist_in_the_same_session(db: AsyncSession):
    session = await new_session(db)
    other = await new_session(db)
    root = Checkpoint(session_id=session.id)
    await add(db, root)

    orphan = Checkpoint(session_id=session.id, parent_id=uuid.uuid4())
    assert await refused(db, orphan) is psycopg.errors.ForeignKeyViolation
    crossing = Checkpoint(session_id=other.id, parent_id=root.id)
    assert await refused(db, crossing) is psycopg.errors.ForeignKeyViolation

    child = Checkpoint(session_id=session.id, parent_id=root.id)
    sibling = Checkpoint(session_id=session.id, parent_id=root.id)  # history forks
    await add(db, child)
    await add(db, sibling)


async def test_head_checkpoint_must_belong_to_the_session(db: AsyncSession):
    session = await new_session(db)
    other = await new_session(db)
    foreign = Checkpoint(session_id=other.id)
    own = Checkpoint(session_id=session.id)
    await add(db, foreign, own)

    statement = (
        sa.update(AgentSession)
        .where(col(AgentSession.id) == session.id)
        .values(head_checkpoint_id=foreign.id)
    )
    assert await refused(db, statement=statement) is psycopg.errors.ForeignKeyViolation

    session.head_checkpoint_id = own.id
    await db.flush()


async def test_branch_source_must_be_a_checkpoint_of_the_session(db: AsyncSession):
    session = await new_session(db)
    other = await new_session(db)
    foreign = Checkpoint(session_id=other.id)
    await add(db, foreign)

    preview = Branch(
        session_id=session.id, kind=BranchKind.PREVIEW, name="p", source_checkpoint_id=foreign.id
    )
    assert await refused(db, preview) is psycopg.errors.ForeignKeyViolation


@pytest.mark.parametrize(
    ("table", "column"),
    [
        ("agent_sessions", "status"),
        ("checkpoints", "status"),
        ("api_tokens", "scope"),
    ],
)
async def test_unknown_enum_value_is_refused_by_its_check(
    db: AsyncSession, table: str, column: str
):
    session = await new_session(db)
    await add(
        db,
        Checkpoint(session_id=session.id),
        ApiToken(token_hash=token_hash(), prefix="x", scope=TokenScope.ADMIN),
    )
    statement = sa.text(f"UPDATE {table} SET {column} = 'paused'")
    assert await refused(db, statement=statement) is psycopg.errors.CheckViolation


async def test_idempotency_key_is_unique_per_user(db: AsyncSession):
    ada = await new_user(db)
    bob = await new_user(db)
    await add(db, AgentSession(user_id=ada.id, name="a", tier="free", idempotency_key="k1"))
    await add(db, AgentSession(user_id=bob.id, name="b", tier="free", idempotency_key="k1"))
    await add(db, AgentSession(user_id=ada.id, name="c", tier="free"))
    await add(db, AgentSession(user_id=ada.id, name="d", tier="free"))

    again = AgentSession(user_id=ada.id, name="a", tier="free", idempotency_key="k1")
    assert await refused(db, again) is psycopg.errors.UniqueViolation


async def test_events_are_append_only(db: AsyncSession):
    event = Event(
        actor="system",
        actor_scope=ActorScope.SYSTEM,
        action="session.create",
        request_id="req-1",
        details={"name": "todo app"},
        neon_operation_ids=["op-1", "op-2"],
    )
    await add(db, event)
    assert isinstance(event.id, int)  # numbered by the database

    for statement in (
        sa.text("UPDATE events SET action = 'session.delete'"),
        sa.text("DELETE FROM events"),
        sa.text("TRUNCATE events"),
    ):
        assert await refused(db, statement=statement) is psycopg.errors.InsufficientPrivilege

    db.expunge_all()
    kept = await db.get_one(Event, event.id)
    assert (kept.action, kept.neon_operation_ids) == ("session.create", ["op-1", "op-2"])


async def test_deleting_a_session_row_removes_what_it_owns_but_not_its_events(db: AsyncSession):
    session = await new_session(db)
    root = Checkpoint(session_id=session.id, status=CheckpointStatus.READY)
    await add(db, root)
    child = Checkpoint(session_id=session.id, parent_id=root.id)
    token = ApiToken(
        token_hash=token_hash(),
        prefix="x",
        scope=TokenScope.SESSION,
        user_id=session.user_id,
        session_id=session.id,
    )
    dev = Branch(
        session_id=session.id, kind=BranchKind.DEV, name="dev", source_checkpoint_id=root.id
    )
    event = Event(actor="system", actor_scope=ActorScope.SYSTEM, action="x", session_id=session.id)
    await add(db, child, token, dev, event)
    session.head_checkpoint_id = child.id
    await db.flush()

    await db.execute(sa.delete(AgentSession).where(col(AgentSession.id) == session.id))

    for table in ("checkpoints", "api_tokens", "branches"):
        count = await db.execute(sa.text(f"SELECT count(*) FROM {table}"))
        assert count.scalar_one() == 0, table
    assert (await db.execute(sa.text("SELECT count(*) FROM events"))).scalar_one() == 1


async def test_views_built_from_rows_never_carry_secrets(db: AsyncSession):
    """What the API sends is a view validated from the row: only the view's fields are read."""
    session = await new_session(db)
    session.encrypted_connection_secret = b"gAAAAA-fernet-token"
    token = ApiToken(token_hash=token_hash(), prefix="adb_a", scope=TokenScope.ADMIN)
    branch = Branch(
        session_id=session.id,
        kind=BranchKind.DEV,
        name="dev",
        encrypted_connection_secret=b"gAAAAA-fernet-token",
    )
    await add(db, token, branch)

    shown = [
        SessionView.of(session).model_dump_json(),
        TokenView.of(token).model_dump_json(),
        BranchView.of(branch).model_dump_json(),
    ]
    for text in shown:
        assert "fernet" not in text
        assert token.token_hash not in text
    assert "encrypted_connection_secret" not in SessionView.model_fields
    assert "encrypted_connection_secret" not in BranchView.model_fields
    assert "token_hash" not in TokenView.model_fields
    assert SessionView.of(session).status is SessionStatus.PROVISIONING
