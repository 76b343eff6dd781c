"""Users: the people a platform runs agent sessions for, each with a tier (quotas, retention)
and a unique, lower-cased email address."""

from __future__ import annotations

import builtins
import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.tiers import Tiers
from agentdb.wire import UserView
from meta_schema import User

from ._common import (
    MAX_NAME,
    SYSTEM,
    Actor,
    Clock,
    SessionFactory,
    check_limit,
    check_text,
    event,
    system_clock,
)
from ._errors import AlreadyExists, InvalidInput, UserNotFound

#: The tiers of a `UserService` built without configured ones (the runtime always passes
#: them: `agentdb.tiers`).
KNOWN_TIERS = ("free", "pro")
DEFAULT_TIER = "free"
#: RFC 5321's limit on a forward path, the usual bound on a whole address.
MAX_EMAIL = 254
_EMAIL_UNIQUE = "uq_users_email"


def normalized_email(email: str) -> str:
    """`email` lower-cased, after a pragmatic check (real validation is the platform's: it
    sends the mails). Raises `InvalidInput("email", ...)`."""
    if not email:
        raise InvalidInput("email", "must not be empty")
    if len(email) > MAX_EMAIL:
        raise InvalidInput("email", f"must be at most {MAX_EMAIL} characters")
    if any(c.isspace() or not c.isprintable() for c in email):
        raise InvalidInput("email", "must not contain spaces or control characters")
    local, at, domain = email.partition("@")
    if not at or "@" in domain:
        raise InvalidInput("email", "must contain exactly one '@'")
    if not local:
        raise InvalidInput("email", "needs a name before the '@'")
    if "." not in domain or domain.startswith(".") or domain.endswith(".") or ".." in domain:
        raise InvalidInput("email", "needs a domain with a dot after the '@', e.g. example.com")
    return email.lower()


class UserService:
    """Creates and reads users."""

    def __init__(
        self,
        sessions: SessionFactory,
        *,
        clock: Clock = system_clock,
        tiers: Tiers | None = None,
    ) -> None:
        """`tiers`: the tiers users may have, and the default one."""
        self._sessions = sessions
        self._clock = clock
        self._known = tiers.names if tiers is not None else KNOWN_TIERS
        self._default_tier = tiers.default if tiers is not None else DEFAULT_TIER

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    async def create(
        self,
        email: str,
        name: str | None = None,
        tier: str | None = None,
        *,
        actor: Actor = SYSTEM,
    ) -> UserView:
        """A new user; `name` defaults to the part of the address before the '@' and `tier`
        to the default tier ("free" unless configured otherwise). Raises `InvalidInput` or
        `AlreadyExists("email", ...)`."""
        address = normalized_email(email)
        check_text("name", name, MAX_NAME)
        tier = self._default_tier if tier is None else tier
        if tier not in self._known:
            raise InvalidInput("tier", f"must be one of {', '.join(self._known)}")
        async with self._db() as db:
            if await db.scalar(sa.select(col(User.id)).where(col(User.email) == address)):
                raise AlreadyExists("email", f"a user with email {address} exists")
            now = self._clock()
            row = User(
                name=name or email.partition("@")[0],
                email=address,
                tier=tier,
                created_at=now,
            )
            db.add(row)
            db.add(
                event(
                    actor,
                    "user.create",
                    at=now,
                    session_id=None,
                    target_kind="user",
                    target_id=row.id,
                    details={"tier": tier},
                )
            )
            try:
                await db.commit()
            except IntegrityError as error:
                # A concurrent create with the same address got there first.
                if _constraint(error) == _EMAIL_UNIQUE:
                    raise AlreadyExists("email", f"a user with email {address} exists") from None
                raise
            return UserView.of(row)

    async def get(self, user_id: uuid.UUID) -> UserView:
        async with self._db() as db:
            row = await db.get(User, user_id)
            if row is None:
                raise UserNotFound(user_id)
            return UserView.of(row)

    async def list(
        self, *, limit: int = 100, after: uuid.UUID | None = None
    ) -> builtins.list[UserView]:
        """Users oldest first (ids are UUIDv7, so id order is creation order), from the one
        after `after`."""
        check_limit(limit)
        query = sa.select(User).order_by(col(User.id)).limit(limit)
        if after is not None:
            query = query.where(col(User.id) > after)
        async with self._db() as db:
            return [UserView.of(row) for row in await db.scalars(query)]


def _constraint(error: IntegrityError) -> str | None:
    diag = getattr(error.orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    return name if isinstance(name, str) else None


__all__ = ["KNOWN_TIERS", "UserService", "UserView"]
