"""API tokens: issuing bearer tokens for a user or one agent session, the platform's admin token,
and resolving a token to the `Principal` it stands for.

Only a token's SHA-256 is stored. Tokens carry a prefix per scope ("adb_admin_", "adb_user_",
"adb_sess_") so secret scanners can find leaked ones, then 256 random bits in base62.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
import string
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, SecretStr
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.wire import SCOPE_PREFIXES, TokenView
from meta_schema import (
    ActorScope,
    AgentSession,
    ApiToken,
    Event,
    SessionStatus,
    TokenMode,
    TokenScope,
    User,
)

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
from ._errors import Conflict, InvalidInput, SessionNotFound, TokenNotFound, UserNotFound

_ALPHABET = string.ascii_letters + string.digits
#: 62**43 > 2**256: base62 keeps a token one "word" (double-click selects it whole).
_SECRET_LENGTH = 43
#: Random characters kept in a token's `prefix`, to tell tokens apart (not enough to guess).
_PREFIX_RANDOM = 6
#: Longer strings are not tokens; refusing them bounds the work a request can cause.
MAX_TOKEN_LENGTH = 1024
MAX_TTL = timedelta(days=3650)
#: A session token issued without a lifetime lives this long (`AGENTDB_SESSION_TOKEN_TTL_S`),
#: and none lives longer than the maximum (`AGENTDB_SESSION_TOKEN_MAX_TTL_S`).
DEFAULT_SESSION_TTL = timedelta(hours=24)
MAX_SESSION_TTL = timedelta(days=30)
#: Most tokens one listing returns.
#: `last_used_at` is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
#: The name of the row holding the operator's AGENTDB_ADMIN_TOKEN (its hash).
CONFIGURED_ADMIN_NAME = "AGENTDB_ADMIN_TOKEN"
GENERATED_ADMIN_NAME = "generated admin token"
MIN_CONFIGURED_LENGTH = 32
#: Serializes `ensure_admin_token` across processes that start at once.
_ADMIN_LOCK_KEY = int.from_bytes(
    hashlib.blake2b(b"agentdb.admin_token", digest_size=8).digest(), "big", signed=True
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request's token stands for, and what it may reach: the admin token everything,
    a user token that user and their sessions, a session token exactly its session."""

    token_id: uuid.UUID
    scope: TokenScope
    user_id: uuid.UUID | None
    session_id: uuid.UUID | None
    #: What the holder may do (`TokenMode`); user and admin tokens are `full`.
    mode: TokenMode = TokenMode.FULL
    #: The token's name, as the audit log records it beside its id.
    name: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == TokenScope.ADMIN

    def can_reach_user(self, user_id: uuid.UUID) -> bool:
        """Whether this token may act on the user as a whole (a session token may not: it
        reaches one session, never its owner's others)."""
        if self.scope == TokenScope.ADMIN:
            return True
        return self.scope == TokenScope.USER and self.user_id == user_id

    def can_reach_session(self, session_user_id: uuid.UUID, session_id: uuid.UUID) -> bool:
        if self.scope == TokenScope.ADMIN:
            return True
        if self.scope == TokenScope.USER:
            return self.user_id == session_user_id
        return self.session_id == session_id and self.user_id == session_user_id

    def can_reach_token(self, token: TokenView) -> bool:
        """The admin reaches every token, a user token its user's and their sessions' tokens,
        a session token only itself (an agent may give up its own token, nothing more)."""
        if self.scope == TokenScope.ADMIN:
            return True
        if self.scope == TokenScope.USER:
            return token.scope != TokenScope.ADMIN and token.user_id == self.user_id
        return token.id == self.token_id

    def actor(self, request_id: str | None = None) -> Actor:
        """This token as the audit log records it."""
        return Actor(str(self.token_id), ActorScope(self.scope.value), request_id)


class IssuedToken(BaseModel):
    """A new token: `token` is shown this once and stored nowhere."""

    model_config = ConfigDict(frozen=True)

    token: SecretStr
    view: TokenView


def token_hash(token: str) -> str:
    """Hex SHA-256 of a token, as `api_tokens.token_hash` stores it. A fast hash suffices:
    tokens carry 256 random bits, so there is nothing to brute-force."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def new_token(scope: TokenScope) -> str:
    return SCOPE_PREFIXES[scope] + "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_LENGTH))


def _check_ttl(ttl: timedelta | None, most: timedelta = MAX_TTL) -> None:
    if ttl is not None and not timedelta(0) < ttl <= most:
        raise InvalidInput(
            "ttl_seconds", f"must be positive and at most {int(most.total_seconds())} seconds"
        )


class TokenService:
    """Issues, authenticates, lists and revokes API tokens. Session tokens expire: after
    `session_ttl` unless issued with a lifetime, never later than `session_max_ttl`."""

    def __init__(
        self,
        sessions: SessionFactory,
        *,
        clock: Clock = system_clock,
        session_ttl: timedelta = DEFAULT_SESSION_TTL,
        session_max_ttl: timedelta = MAX_SESSION_TTL,
    ) -> None:
        if not timedelta(0) < session_ttl <= session_max_ttl <= MAX_TTL:
            raise ValueError("session_ttl must be positive and at most session_max_ttl")
        self._sessions = sessions
        self._clock = clock
        self._session_ttl = session_ttl
        self._session_max_ttl = session_max_ttl

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    # --- issuing -------------------------------------------------------------------------------

    async def issue_user_token(
        self,
        user_id: uuid.UUID,
        *,
        name: str | None = None,
        ttl: timedelta | None = None,
        actor: Actor = SYSTEM,
    ) -> IssuedToken:
        """A token reaching the user and all their sessions. Raises `UserNotFound` (also for
        a disabled user) or `InvalidInput`."""
        check_text("name", name, MAX_NAME)
        _check_ttl(ttl)
        async with self._db() as db:
            user = await db.get(User, user_id)
            if user is None or user.disabled_at is not None:
                raise UserNotFound(user_id)
            return await self._issue(
                db,
                TokenScope.USER,
                user_id=user_id,
                session_id=None,
                name=name,
                ttl=ttl,
                actor=actor,
            )

    async def issue_session_token(
        self,
        session_id: uuid.UUID,
        *,
        name: str | None = None,
        ttl: timedelta | None = None,
        mode: TokenMode = TokenMode.READ_WRITE,
        actor: Actor = SYSTEM,
    ) -> IssuedToken:
        """A token reaching this one session and nothing else: what an agent gets. It expires
        after `ttl`, by default the service's `session_ttl`; `mode` says what it may do there.
        Raises `SessionNotFound`, `Conflict` (a deleted session, a disabled owner) or
        `InvalidInput`."""
        check_text("name", name, MAX_NAME)
        _check_ttl(ttl, self._session_max_ttl)
        ttl = self._session_ttl if ttl is None else ttl
        async with self._db() as db:
            session = await db.get(AgentSession, session_id)
            if session is None:
                raise SessionNotFound(session_id)
            if session.status in {SessionStatus.DELETING, SessionStatus.DELETED}:
                raise Conflict(f"session {session_id} is {session.status}")
            owner = await db.get(User, session.user_id)
            if owner is None or owner.disabled_at is not None:
                raise Conflict(f"the owner of session {session_id} is disabled")
            return await self._issue(
                db,
                TokenScope.SESSION,
                user_id=session.user_id,
                session_id=session_id,
                name=name,
                ttl=ttl,
                actor=actor,
                mode=mode,
            )

    async def _issue(
        self,
        db: AsyncSession,
        scope: TokenScope,
        *,
        user_id: uuid.UUID | None,
        session_id: uuid.UUID | None,
        name: str | None,
        ttl: timedelta | None,
        actor: Actor,
        mode: TokenMode = TokenMode.FULL,
    ) -> IssuedToken:
        token = new_token(scope)
        row = self._row(
            db,
            token,
            scope,
            user_id=user_id,
            session_id=session_id,
            name=name,
            ttl=ttl,
            actor=actor,
            mode=mode,
        )
        await db.commit()
        return IssuedToken(token=SecretStr(token), view=TokenView.of(row))

    def _row(
        self,
        db: AsyncSession,
        token: str,
        scope: TokenScope,
        *,
        user_id: uuid.UUID | None = None,
        session_id: uuid.UUID | None = None,
        name: str | None,
        ttl: timedelta | None = None,
        actor: Actor = SYSTEM,
        prefix: str | None = None,
        source: str = "issued",
        mode: TokenMode = TokenMode.FULL,
    ) -> ApiToken:
        now = self._clock()
        row = ApiToken(
            token_hash=token_hash(token),
            prefix=prefix
            if prefix is not None
            else token[: len(SCOPE_PREFIXES[scope]) + _PREFIX_RANDOM],
            scope=scope,
            mode=mode,
            user_id=user_id,
            session_id=session_id,
            name=name,
            created_at=now,
            expires_at=None if ttl is None else now + ttl,
        )
        db.add(row)
        db.add(self._event(actor, "token.issue", row, source=source))
        return row

    # --- authenticating ------------------------------------------------------------------------

    async def authenticate(self, token: str) -> Principal | None:
        """The principal `token` stands for, or None when it is unknown, revoked, expired, or
        its user is disabled or its session deleted (callers answer all of these alike).

        The same work for every token: one hash and one lookup by the unique hash index.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = token_hash(token)
        query = (
            sa.select(ApiToken, col(User.disabled_at), col(AgentSession.status))
            .outerjoin(User, col(User.id) == col(ApiToken.user_id))
            .outerjoin(AgentSession, col(AgentSession.id) == col(ApiToken.session_id))
            .where(col(ApiToken.token_hash) == digest)
        )
        async with self._db() as db:
            found = (await db.execute(query)).one_or_none()
            if found is None:
                return None
            row, user_disabled_at, session_status = found
            now = self._clock()
            if (
                not hmac.compare_digest(row.token_hash, digest)
                or row.revoked_at is not None
                or (row.expires_at is not None and row.expires_at <= now)
                or user_disabled_at is not None
                or (row.session_id is not None and session_status == SessionStatus.DELETED)
            ):
                return None
            if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
                await self._touch(db, row.id, now)
            return Principal(
                token_id=row.id,
                scope=row.scope,
                user_id=row.user_id,
                session_id=row.session_id,
                mode=row.mode if row.scope == TokenScope.SESSION else TokenMode.FULL,
                name=row.name,
            )

    async def _touch(self, db: AsyncSession, token_id: uuid.UUID, now: datetime) -> None:
        # The condition repeats in SQL so that concurrent requests write once between them.
        await db.execute(
            sa.update(ApiToken)
            .where(
                col(ApiToken.id) == token_id,
                sa.or_(
                    col(ApiToken.last_used_at).is_(None),
                    col(ApiToken.last_used_at) <= now - LAST_USED_RESOLUTION,
                ),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        await db.commit()

    # --- the admin token -----------------------------------------------------------------------

    async def ensure_admin_token(self, configured: SecretStr | None) -> SecretStr | None:
        """Makes sure the platform has an admin token, at start-up.

        With `configured` (AGENTDB_ADMIN_TOKEN): its hash is stored (once), and a previously
        configured value that differs is revoked; returns None. Raises `InvalidInput` for a
        value shorter than 32 characters and `Conflict` when the value was revoked or is
        another token's. Without: if no valid admin token exists, one is generated, stored
        hashed and returned for the caller to show once; otherwise None. Processes starting
        at once take turns on an advisory lock.
        """
        value = None if configured is None else configured.get_secret_value()
        if value is not None:
            if not MIN_CONFIGURED_LENGTH <= len(value) <= MAX_TOKEN_LENGTH:
                raise InvalidInput(
                    "admin_token",
                    f"must be {MIN_CONFIGURED_LENGTH} to {MAX_TOKEN_LENGTH} characters",
                )
            if any(c.isspace() or not c.isprintable() for c in value):
                raise InvalidInput("admin_token", "must not contain spaces or control characters")
        async with self._db() as db:
            await db.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADMIN_LOCK_KEY)))
            if value is None:
                generated = await self._generate_admin(db)
                await db.commit()
                return generated
            await self._store_configured(db, value)
            await db.commit()
            return None

    async def _generate_admin(self, db: AsyncSession) -> SecretStr | None:
        now = self._clock()
        valid = await db.scalar(
            sa.select(col(ApiToken.id))
            .where(
                col(ApiToken.scope) == TokenScope.ADMIN,
                col(ApiToken.revoked_at).is_(None),
                sa.or_(col(ApiToken.expires_at).is_(None), col(ApiToken.expires_at) > now),
            )
            .limit(1)
        )
        if valid is not None:
            return None
        token = new_token(TokenScope.ADMIN)
        self._row(db, token, TokenScope.ADMIN, name=GENERATED_ADMIN_NAME, source="generated")
        return SecretStr(token)

    async def _store_configured(self, db: AsyncSession, value: str) -> None:
        digest = token_hash(value)
        found = await db.scalar(sa.select(ApiToken).where(col(ApiToken.token_hash) == digest))
        if found is not None and found.scope != TokenScope.ADMIN:
            raise Conflict("AGENTDB_ADMIN_TOKEN equals another token; configure a new value")
        if found is not None and found.revoked_at is not None:
            raise Conflict("AGENTDB_ADMIN_TOKEN was revoked; configure a new value")
        if found is None:
            # The prefix of an operator's value would give part of it away.
            self._row(
                db,
                value,
                TokenScope.ADMIN,
                name=CONFIGURED_ADMIN_NAME,
                prefix="(configured)",
                source="configured",
            )
        replaced = await db.scalars(
            sa.select(ApiToken).where(
                col(ApiToken.scope) == TokenScope.ADMIN,
                col(ApiToken.name) == CONFIGURED_ADMIN_NAME,
                col(ApiToken.revoked_at).is_(None),
                col(ApiToken.token_hash) != digest,
            )
        )
        for old in replaced:
            old.revoked_at = self._clock()
            db.add(self._event(SYSTEM, "token.revoke", old, reason="AGENTDB_ADMIN_TOKEN changed"))

    # --- revoking ------------------------------------------------------------------------------

    async def revoke(
        self, token_id: uuid.UUID, *, actor: Actor = SYSTEM, by: Principal | None = None
    ) -> TokenView:
        """Revokes a token for good, from its next request on; revoking it again changes
        nothing. Returns the token as it is now. Raises `TokenNotFound`, also when `by` (the
        caller's token) does not reach it; `Conflict` when `by` asks for an admin token's
        (those are replaced in the settings)."""
        async with self._db() as db:
            row = await db.get(ApiToken, token_id, with_for_update=True)
            if row is None or (by is not None and not by.can_reach_token(TokenView.of(row))):
                raise TokenNotFound(token_id)
            if by is not None and row.scope == TokenScope.ADMIN:
                raise Conflict("an admin token is replaced by changing AGENTDB_ADMIN_TOKEN")
            if row.revoked_at is None:
                row.revoked_at = self._clock()
                db.add(self._event(actor, "token.revoke", row))
                await db.commit()
            return TokenView.of(row)

    # --- looking up ----------------------------------------------------------------------------

    async def get(self, token_id: uuid.UUID, *, by: Principal | None = None) -> TokenView:
        """One token, without its secret or hash. Raises `TokenNotFound`, also when `by` (the
        caller's token) does not reach it."""
        async with self._db() as db:
            row = await db.get(ApiToken, token_id)
            view = None if row is None else TokenView.of(row)
            if view is None or (by is not None and not by.can_reach_token(view)):
                raise TokenNotFound(token_id)
            return view

    async def list(
        self,
        *,
        user_id: uuid.UUID | None = None,
        session_id: uuid.UUID | None = None,
        include_inactive: bool = False,
        limit: int = 100,
        after: uuid.UUID | None = None,
    ) -> builtins.list[TokenView]:
        """The tokens of a user (their user tokens and their sessions' tokens) or of one
        session, in issue order (ids are time-ordered), `limit` at most, after the token
        `after`. Revoked and expired ones only with `include_inactive`. Admin tokens belong to
        no user and are never listed."""
        if (user_id is None) == (session_id is None):
            raise ValueError("give exactly one of user_id and session_id")
        check_limit(limit)
        query = sa.select(ApiToken).where(col(ApiToken.scope) != TokenScope.ADMIN)
        if user_id is not None:
            query = query.where(col(ApiToken.user_id) == user_id)
        else:
            query = query.where(col(ApiToken.session_id) == session_id)
        if not include_inactive:
            query = query.where(
                col(ApiToken.revoked_at).is_(None),
                sa.or_(
                    col(ApiToken.expires_at).is_(None), col(ApiToken.expires_at) > self._clock()
                ),
            )
        if after is not None:
            query = query.where(col(ApiToken.id) > after)
        async with self._db() as db:
            rows = await db.scalars(query.order_by(col(ApiToken.id)).limit(limit))
            return [TokenView.of(row) for row in rows]

    def _event(self, actor: Actor, action: str, row: ApiToken, **details: str) -> Event:
        return event(
            actor,
            action,
            at=self._clock(),
            session_id=row.session_id,
            target_kind="token",
            target_id=row.id,
            details={"scope": row.scope.value, "prefix": row.prefix, **details},
        )


__all__ = [
    "SCOPE_PREFIXES",
    "IssuedToken",
    "Principal",
    "TokenService",
    "TokenView",
    "token_hash",
]
