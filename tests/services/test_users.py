"""UserService on the embedded PostgreSQL: unique lower-cased emails, tiers, paging by id, and
nothing written when the input is refused."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa

from agentdb.services import Conflict, InvalidInput, UserNotFound
from agentdb.services._common import Actor
from agentdb.services._errors import AlreadyExists
from agentdb.services.users import KNOWN_TIERS, UserService
from meta_schema import ActorScope, Event, User


@pytest.fixture
def users(meta_sessions) -> UserService:
    return UserService(meta_sessions)


def unique(local: str = "ada") -> str:
    return f"{local}-{uuid.uuid4().hex[:8]}@Example.COM"


async def counts(meta_sessions) -> tuple[int, int]:
    async with meta_sessions() as db:
        user_rows = await db.scalar(sa.select(sa.func.count()).select_from(User))
        event_rows = await db.scalar(
            sa.select(sa.func.count()).select_from(Event).where(Event.action == "user.create")
        )
        return int(user_rows or 0), int(event_rows or 0)


async def test_create_lower_cases_the_email_and_fills_defaults(users, meta_sessions) -> None:
    email = unique("Ada.Lovelace")
    actor = Actor("token-1", ActorScope.ADMIN, request_id="req-42")
    created = await users.create(email, actor=actor)
    assert created.email == email.lower()
    assert created.name == email.partition("@")[0]
    assert created.tier == "free"
    assert created.org_id is None
    assert created.disabled_at is None
    assert await users.get(created.id) == created

    async with meta_sessions() as db:
        logged = (
            await db.scalars(sa.select(Event).where(Event.target_id == str(created.id)))
        ).one()
    assert (logged.action, logged.actor, logged.actor_scope) == ("user.create", "token-1", "admin")
    assert logged.request_id == "req-42"
    assert logged.details == {"tier": "free"}
    assert logged.session_id is None


async def test_create_takes_a_name_and_a_known_tier(users) -> None:
    created = await users.create(unique(), name="Ada Lovelace", tier="pro")
    assert (created.name, created.tier) == ("Ada Lovelace", "pro")
    assert KNOWN_TIERS == ("free", "pro")


@pytest.mark.parametrize(
    "email",
    [
        "",
        "ada.example.com",
        "ada@@example.com",
        "ada@example@com",
        "@example.com",
        "ada@localhost",
        "ada@.example.com",
        "ada@example.",
        "ada@exa..mple.com",
        "ada lovelace@example.com",
        " ada@example.com",
        "ada@example.com\n",
        "ada\x00@example.com",
        "a" * 243 + "@example.com",
    ],
)
async def test_bad_emails_are_refused_and_nothing_is_written(users, meta_sessions, email) -> None:
    before = await counts(meta_sessions)
    with pytest.raises(InvalidInput) as caught:
        await users.create(email)
    assert caught.value.field == "email"
    assert caught.value.message
    assert await counts(meta_sessions) == before


async def test_a_254_character_email_is_fine(users) -> None:
    email = "a" * (254 - len("@example.com") - 8) + uuid.uuid4().hex[:8] + "@example.com"
    assert len(email) == 254
    assert (await users.create(email)).email == email


@pytest.mark.parametrize(
    ("name", "tier", "field", "message"),
    [
        ("   ", None, "name", "must not be blank"),
        ("x" * 201, None, "name", "at most 200"),
        ("nul\x00", None, "name", "NUL"),
        (None, "gold", "tier", "must be one of free, pro"),
        (None, "", "tier", "must be one of free, pro"),
    ],
)
async def test_bad_names_and_tiers_are_refused(  # noqa: PLR0917
    users, meta_sessions, name, tier, field, message
) -> None:
    before = await counts(meta_sessions)
    with pytest.raises(InvalidInput) as caught:
        await users.create(unique(), name=name, tier=tier)
    assert caught.value.field == field
    assert message in caught.value.message
    assert await counts(meta_sessions) == before


async def test_an_email_belongs_to_one_user_whatever_its_case(users, meta_sessions) -> None:
    email = unique()
    first = await users.create(email)
    before = await counts(meta_sessions)
    with pytest.raises(AlreadyExists) as caught:
        await users.create(email.upper())
    assert isinstance(caught.value, Conflict)
    assert caught.value.field == "email"
    assert first.email in caught.value.message
    assert await counts(meta_sessions) == before


async def test_concurrent_creates_of_one_email_make_one_user(users, meta_sessions) -> None:
    email = unique()
    before = await counts(meta_sessions)
    outcomes = await asyncio.gather(
        *(users.create(email) for _ in range(4)), return_exceptions=True
    )
    made = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(made) == 1
    assert all(isinstance(o, AlreadyExists) and o.field == "email" for o in refused)
    assert await counts(meta_sessions) == (before[0] + 1, before[1] + 1)


async def test_get_of_an_unknown_user_is_not_found(users) -> None:
    missing = uuid.uuid4()
    with pytest.raises(UserNotFound) as caught:
        await users.get(missing)
    assert caught.value.user_id == missing


async def test_list_pages_oldest_first(users) -> None:
    mine = [(await users.create(unique(f"page{i}"))).id for i in range(3)]
    seen: list[uuid.UUID] = []
    after: uuid.UUID | None = None
    while page := await users.list(limit=2, after=after):
        assert len(page) <= 2
        seen.extend(u.id for u in page)
        after = page[-1].id
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in mine] == mine
    assert [u.id for u in await users.list(after=mine[0], limit=500)][:2] == mine[1:]


@pytest.mark.parametrize("limit", [0, -1, 501])
async def test_list_refuses_a_bad_limit(users, limit) -> None:
    with pytest.raises(InvalidInput) as caught:
        await users.list(limit=limit)
    assert caught.value.field == "limit"
