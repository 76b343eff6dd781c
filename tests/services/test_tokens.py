"""TokenService on the embedded PostgreSQL and the local plane: hashed bearer tokens per scope,
what each principal reaches, revocation, expiry, and the platform's admin token."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from agentdb.services import Conflict, InvalidInput, SessionNotFound, SessionService, UserNotFound
from agentdb.services._common import Actor
from agentdb.services._errors import TokenNotFound
from agentdb.services.tokens import Principal, TokenService, TokenView
from meta_schema import ActorScope, ApiToken, Event, TokenScope, User


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tokens(meta_sessions, clock) -> TokenService:
    return TokenService(meta_sessions, clock=clock)


async def new_user(meta_sessions) -> uuid.UUID:
    user = User(name="grace", email=f"grace-{uuid.uuid4()}@example.com", tier="free")
    created = user.id
    async with meta_sessions() as db:
        db.add(user)
        await db.commit()
    return created


async def token_row(meta_sessions, token_id: uuid.UUID) -> ApiToken:
    async with meta_sessions() as db:
        row = await db.get(ApiToken, token_id)
        assert row is not None
        return row


async def token_count(meta_sessions) -> tuple[int, int]:
    async with meta_sessions() as db:
        rows = await db.scalar(sa.select(sa.func.count()).select_from(ApiToken))
        events = await db.scalar(
            sa.select(sa.func.count()).select_from(Event).where(Event.action.like("token.%"))
        )
        return int(rows or 0), int(events or 0)


async def revoke_all_admin_tokens(meta_sessions) -> None:
    async with meta_sessions() as db:
        await db.execute(
            sa.update(ApiToken)
            .where(ApiToken.scope == TokenScope.ADMIN, ApiToken.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        await db.commit()


# --- issuing and authenticating ---------------------------------------------------------------


async def test_a_user_token_is_shown_once_and_stored_as_its_hash(
    tokens, meta_sessions, user_id, clock
) -> None:
    actor = Actor("admin-token", ActorScope.ADMIN, request_id="req-7")
    issued = await tokens.issue_user_token(user_id, name="ci", actor=actor)
    token = issued.token.get_secret_value()
    assert token.startswith("adb_user_")
    assert len(token) == len("adb_user_") + 43
    assert token not in repr(issued)
    view = issued.view
    assert (view.scope, view.user_id, view.session_id, view.name) == (
        TokenScope.USER,
        user_id,
        None,
        "ci",
    )
    assert view.prefix == token[:15]
    assert (view.created_at, view.expires_at, view.revoked_at) == (clock.now, None, None)

    row = await token_row(meta_sessions, view.id)
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    async with meta_sessions() as db:
        logged = (await db.scalars(sa.select(Event).where(Event.target_id == str(view.id)))).one()
    assert (logged.action, logged.actor, logged.request_id) == (
        "token.issue",
        "admin-token",
        "req-7",
    )
    assert token not in str(logged.details)
    assert token[15:] not in str(logged.details)

    principal = await tokens.authenticate(token)
    assert principal == Principal(
        token_id=view.id, scope=TokenScope.USER, user_id=user_id, session_id=None, name=view.name
    )
    assert principal.actor("req-8") == Actor(str(view.id), ActorScope.USER, "req-8")


async def test_a_session_token_stands_for_its_session_and_owner(
    tokens, session_service: SessionService, user_id, meta_sessions
) -> None:
    session = await session_service.create(user_id)
    issued = await tokens.issue_session_token(session.id, name="agent")
    token = issued.token.get_secret_value()
    assert token.startswith("adb_sess_")
    principal = await tokens.authenticate(token)
    assert principal is not None
    assert (principal.scope, principal.user_id, principal.session_id) == (
        TokenScope.SESSION,
        user_id,
        session.id,
    )
    async with meta_sessions() as db:
        logged = (
            await db.scalars(sa.select(Event).where(Event.target_id == str(issued.view.id)))
        ).one()
    assert logged.session_id == session.id


async def test_what_each_principal_reaches(tokens, session_service, meta_sessions) -> None:
    ada, bob = await new_user(meta_sessions), await new_user(meta_sessions)
    ada_session = await session_service.create(ada)
    ada_other = await session_service.create(ada)
    bob_session = await session_service.create(bob)
    await revoke_all_admin_tokens(meta_sessions)
    admin_token = await tokens.ensure_admin_token(None)
    assert admin_token is not None

    admin = await tokens.authenticate(admin_token.get_secret_value())
    user = await tokens.authenticate((await tokens.issue_user_token(ada)).token.get_secret_value())
    agent = await tokens.authenticate(
        (await tokens.issue_session_token(ada_session.id)).token.get_secret_value()
    )
    assert admin is not None
    assert user is not None
    assert agent is not None
    assert admin.is_admin
    assert not user.is_admin
    assert not agent.is_admin

    sessions = {"ada": ada_session, "ada_other": ada_other, "bob": bob_session}
    expected = {
        # principal: (users reached, sessions reached)
        "admin": ({ada, bob}, {"ada", "ada_other", "bob"}),
        "user": ({ada}, {"ada", "ada_other"}),
        "agent": (set(), {"ada"}),
    }
    for label, principal in (("admin", admin), ("user", user), ("agent", agent)):
        users_reached, sessions_reached = expected[label]
        assert {u for u in (ada, bob) if principal.can_reach_user(u)} == users_reached, label
        assert {
            name for name, s in sessions.items() if principal.can_reach_session(s.user_id, s.id)
        } == sessions_reached, label
    # A session token never reaches a session id paired with another owner.
    assert not agent.can_reach_session(bob, ada_session.id)


@pytest.mark.parametrize(
    "token", ["", "adb_user_", "adb_user_" + "x" * 43, "x" * 5000, "adb_sess_\udcff", "Bearer"]
)
async def test_unknown_tokens_are_refused(tokens, token) -> None:
    assert await tokens.authenticate(token) is None


async def test_revoked_tokens_are_refused(tokens, user_id, meta_sessions, clock) -> None:
    issued = await tokens.issue_user_token(user_id)
    token = issued.token.get_secret_value()
    assert await tokens.authenticate(token) is not None
    await tokens.revoke(issued.view.id, actor=Actor("someone", ActorScope.USER))
    assert await tokens.authenticate(token) is None
    assert (await token_row(meta_sessions, issued.view.id)).revoked_at == clock.now

    before = await token_count(meta_sessions)
    clock.now += timedelta(hours=1)
    await tokens.revoke(issued.view.id)  # again: nothing changes, nothing is logged
    assert await token_count(meta_sessions) == before
    assert (await token_row(meta_sessions, issued.view.id)).revoked_at == clock.now - timedelta(
        hours=1
    )
    with pytest.raises(TokenNotFound):
        await tokens.revoke(uuid.uuid4())


async def test_expired_tokens_are_refused(tokens, user_id, clock) -> None:
    issued = await tokens.issue_user_token(user_id, ttl=timedelta(hours=1))
    assert issued.view.expires_at == clock.now + timedelta(hours=1)
    token = issued.token.get_secret_value()
    clock.now += timedelta(minutes=59)
    assert await tokens.authenticate(token) is not None
    clock.now += timedelta(minutes=1)
    assert await tokens.authenticate(token) is None


async def test_tokens_of_disabled_users_and_deleted_sessions_are_refused(
    tokens, session_service, meta_sessions
) -> None:
    owner = await new_user(meta_sessions)
    session = await session_service.create(owner)
    user_token = (await tokens.issue_user_token(owner)).token.get_secret_value()
    session_token = (await tokens.issue_session_token(session.id)).token.get_secret_value()

    await session_service.delete(session.id)
    assert await tokens.authenticate(session_token) is None
    assert await tokens.authenticate(user_token) is not None

    async with meta_sessions() as db:
        await db.execute(
            sa.update(User).where(User.id == owner).values(disabled_at=datetime.now(UTC))
        )
        await db.commit()
    assert await tokens.authenticate(user_token) is None


async def test_last_used_is_written_at_most_once_a_minute(
    tokens, user_id, meta_sessions, clock
) -> None:
    issued = await tokens.issue_user_token(user_id)
    token = issued.token.get_secret_value()
    first = clock.now
    await tokens.authenticate(token)
    assert (await token_row(meta_sessions, issued.view.id)).last_used_at == first
    clock.now += timedelta(seconds=59)
    await tokens.authenticate(token)
    assert (await token_row(meta_sessions, issued.view.id)).last_used_at == first
    clock.now += timedelta(seconds=1)
    await tokens.authenticate(token)
    assert (await token_row(meta_sessions, issued.view.id)).last_used_at == clock.now


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        ({"ttl": timedelta(0)}, "ttl_seconds"),
        ({"ttl": timedelta(seconds=-1)}, "ttl_seconds"),
        ({"ttl": timedelta(days=3651)}, "ttl_seconds"),
        ({"name": "  "}, "name"),
        ({"name": "x" * 201}, "name"),
    ],
)
async def test_bad_token_options_are_refused_and_nothing_is_written(
    tokens, session_service, user_id, meta_sessions, case
) -> None:
    options, field = case
    session = await session_service.create(user_id)
    before = await token_count(meta_sessions)
    with pytest.raises(InvalidInput) as caught:
        await tokens.issue_user_token(user_id, **options)
    assert caught.value.field == field
    with pytest.raises(InvalidInput):
        await tokens.issue_session_token(session.id, **options)
    assert await token_count(meta_sessions) == before


async def test_tokens_need_a_live_owner(tokens, session_service, meta_sessions) -> None:
    owner = await new_user(meta_sessions)
    session = await session_service.create(owner)
    before = await token_count(meta_sessions)
    with pytest.raises(UserNotFound):
        await tokens.issue_user_token(uuid.uuid4())
    with pytest.raises(SessionNotFound):
        await tokens.issue_session_token(uuid.uuid4())
    await session_service.delete(session.id)
    with pytest.raises(Conflict, match="deleted"):
        await tokens.issue_session_token(session.id)
    async with meta_sessions() as db:
        await db.execute(
            sa.update(User).where(User.id == owner).values(disabled_at=datetime.now(UTC))
        )
        await db.commit()
    with pytest.raises(UserNotFound):
        await tokens.issue_user_token(owner)
    assert await token_count(meta_sessions) == before


# --- the admin token ---------------------------------------------------------------------------


async def test_without_configuration_an_admin_token_is_generated_once(
    tokens, meta_sessions
) -> None:
    await revoke_all_admin_tokens(meta_sessions)
    generated = await tokens.ensure_admin_token(None)
    assert generated is not None
    token = generated.get_secret_value()
    assert token.startswith("adb_admin_")
    principal = await tokens.authenticate(token)
    assert principal is not None
    assert principal.is_admin
    assert principal.user_id is None
    assert await tokens.ensure_admin_token(None) is None


async def test_processes_starting_at_once_generate_one_admin_token(meta_sessions, clock) -> None:
    await revoke_all_admin_tokens(meta_sessions)
    starting = [TokenService(meta_sessions, clock=clock) for _ in range(4)]
    results = await asyncio.gather(*(t.ensure_admin_token(None) for t in starting))
    assert len([r for r in results if r is not None]) == 1
    async with meta_sessions() as db:
        valid = await db.scalar(
            sa.select(sa.func.count())
            .select_from(ApiToken)
            .where(ApiToken.scope == TokenScope.ADMIN, ApiToken.revoked_at.is_(None))
        )
    assert valid == 1


async def test_a_configured_admin_token_is_stored_once_and_replaces_the_previous_one(
    tokens, meta_sessions, clock
) -> None:
    await revoke_all_admin_tokens(meta_sessions)
    first = SecretStr("first-admin-token-" + uuid.uuid4().hex)
    results = await asyncio.gather(
        *(TokenService(meta_sessions, clock=clock).ensure_admin_token(first) for _ in range(3))
    )
    assert results == [None, None, None]
    assert await tokens.ensure_admin_token(first) is None
    principal = await tokens.authenticate(first.get_secret_value())
    assert principal is not None
    assert principal.is_admin
    row = await token_row(meta_sessions, principal.token_id)
    assert (row.name, row.prefix) == ("AGENTDB_ADMIN_TOKEN", "(configured)")
    # A configured token counts: nothing is generated beside it.
    assert await tokens.ensure_admin_token(None) is None

    second = SecretStr("second-admin-token-" + uuid.uuid4().hex)
    assert await tokens.ensure_admin_token(second) is None
    assert await tokens.authenticate(first.get_secret_value()) is None
    assert await tokens.authenticate(second.get_secret_value()) is not None
    async with meta_sessions() as db:
        configured = await db.scalar(
            sa.select(sa.func.count())
            .select_from(ApiToken)
            .where(ApiToken.name == "AGENTDB_ADMIN_TOKEN", ApiToken.revoked_at.is_(None))
        )
    assert configured == 1

    # Going back to a revoked value is refused, not silently revived.
    with pytest.raises(Conflict, match="revoked"):
        await tokens.ensure_admin_token(first)


async def test_a_bad_configured_admin_token_is_refused(tokens, user_id, meta_sessions) -> None:
    before = await token_count(meta_sessions)
    for bad in ("short", "x" * 31, "has a space in it, and more than 32 characters!", "x" * 1025):
        with pytest.raises(InvalidInput) as caught:
            await tokens.ensure_admin_token(SecretStr(bad))
        assert caught.value.field == "admin_token"
        assert bad not in str(caught.value)
    assert await token_count(meta_sessions) == before
    user_token = await tokens.issue_user_token(user_id)
    with pytest.raises(Conflict, match="another token"):
        await tokens.ensure_admin_token(user_token.token)


# --- expiry, listing ---------------------------------------------------------------------------


async def test_session_tokens_expire_by_default_within_the_maximum(
    meta_sessions, session_service, user_id, clock
) -> None:
    tokens = TokenService(
        meta_sessions,
        clock=clock,
        session_ttl=timedelta(hours=2),
        session_max_ttl=timedelta(days=1),
    )
    session = await session_service.create(user_id)
    issued = await tokens.issue_session_token(session.id)
    assert issued.view.expires_at == clock.now + timedelta(hours=2)
    longest = await tokens.issue_session_token(session.id, ttl=timedelta(days=1))
    assert longest.view.expires_at == clock.now + timedelta(days=1)
    with pytest.raises(InvalidInput) as caught:
        await tokens.issue_session_token(session.id, ttl=timedelta(days=1, seconds=1))
    assert caught.value.field == "ttl_seconds"
    # User tokens keep no default expiry.
    assert (await tokens.issue_user_token(user_id)).view.expires_at is None
    clock.now += timedelta(hours=2)
    assert await tokens.authenticate(issued.token.get_secret_value()) is None
    assert await tokens.authenticate(longest.token.get_secret_value()) is not None
    with pytest.raises(ValueError, match="session_ttl"):
        TokenService(meta_sessions, session_ttl=timedelta(days=2), session_max_ttl=timedelta(1))


async def test_tokens_are_listed_per_user_and_session_without_secrets(
    tokens, meta_sessions, session_service, clock
) -> None:
    owner = await new_user(meta_sessions)
    first, second = await session_service.create(owner), await session_service.create(owner)
    user_token = await tokens.issue_user_token(owner, name="platform")
    a = await tokens.issue_session_token(first.id, name="agent a")
    b = await tokens.issue_session_token(second.id, ttl=timedelta(minutes=5))
    c = await tokens.issue_session_token(second.id)

    everything = await tokens.list(user_id=owner)
    # Ids are time-ordered (UUIDv7); within one millisecond their order is random.
    assert [v.id for v in everything] == sorted(t.view.id for t in (user_token, a, b, c))
    assert "token" not in TokenView.model_fields
    assert "token_hash" not in TokenView.model_fields
    assert [v.id for v in await tokens.list(session_id=second.id)] == sorted([b.view.id, c.view.id])
    page = await tokens.list(user_id=owner, limit=2)
    rest = await tokens.list(user_id=owner, after=page[-1].id)
    assert [v.id for v in page + rest] == [v.id for v in everything]

    revoked = await tokens.revoke(c.view.id, actor=Actor("someone", ActorScope.USER))
    assert revoked.revoked_at == clock.now
    clock.now += timedelta(minutes=5)  # b expires
    assert [v.id for v in await tokens.list(session_id=second.id)] == []
    inactive = await tokens.list(session_id=second.id, include_inactive=True)
    assert [v.id for v in inactive] == sorted([b.view.id, c.view.id])
    assert (await tokens.get(a.view.id)).name == "agent a"
    with pytest.raises(TokenNotFound):
        await tokens.get(uuid.uuid4())
    with pytest.raises(InvalidInput):
        await tokens.list(user_id=owner, limit=0)
    with pytest.raises(ValueError, match="exactly one"):
        await tokens.list()
