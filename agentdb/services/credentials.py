"""agentdb stays in control of its sessions' credentials: when the session's role no longer
accepts the stored password (an agent ran `ALTER ROLE current_user PASSWORD ...`), the password
is reset through the control plane (Neon's `reset_password`, which both planes serve), the new
connection URI is stored encrypted, and the reset is audited.

A reset is serialized per session across processes (an advisory lock of its own, so it never
waits on a checkpoint or restore) and is skipped when another caller has already stored a new
URI, so a burst of refused calls costs one reset.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote, urlsplit, urlunsplit

import structlog
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.ext.asyncio import AsyncSession

from agentdb.neon import NeonClient, NeonError
from meta_schema import SessionStatus

from ._common import (
    SYSTEM,
    Actor,
    Clock,
    SessionFactory,
    SessionLocks,
    describe,
    event,
    load_session,
    operation_ids,
    system_clock,
)
from ._errors import Conflict, ControlPlaneFailed
from ._secrets import Secrets

log = structlog.get_logger(__name__)

#: SQLSTATE of "password authentication failed".
INVALID_PASSWORD = "28P01"  # noqa: S105 - an error code, not a password


def merged_options(uri: str, extra: str) -> str:
    """The `options` startup parameter for a connection to `uri` with `extra` settings: the
    URI's own options (the local plane's proxy reads the endpoint from them, as Neon's does
    for clients without SNI) come first, since an `options=` argument replaces them."""
    given = conninfo_to_dict(uri).get("options")
    return f"{given} {extra}" if given else extra


def with_password(uri: str, password: str) -> str:
    """`uri` with its password replaced; host, database and parameters stay as they are."""
    return with_login(uri, urlsplit(uri).username or "", password)


def with_login(uri: str, user: str, password: str) -> str:
    """`uri` logging in as `user` with `password`; host, database and parameters stay."""
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


class CredentialService:
    """Resets a session role's password when the stored one stopped working."""

    def __init__(
        self,
        sessions: SessionFactory,
        neon: NeonClient,
        secrets: Secrets,
        *,
        clock: Clock = system_clock,
    ) -> None:
        self._sessions = sessions
        self._neon = neon
        self._secrets = secrets
        self._clock = clock
        self._locks = SessionLocks(sessions, purpose=b"agentdb.creds")

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    async def recover(
        self, session_id: uuid.UUID, refused_uri: str, *, actor: Actor = SYSTEM
    ) -> str:
        """The session's working connection URI after `refused_uri` failed to authenticate:
        the stored one if another caller already replaced it, else a fresh password set
        through the control plane. Raises `ControlPlaneFailed` when the plane refuses and
        `Conflict` when the session has no database any more."""
        async with self._locks.hold(session_id), self._db() as db:
            row = await load_session(db, session_id)
            if row.encrypted_connection_secret is None or row.status == SessionStatus.DELETED:
                raise Conflict(f"session {session_id} has no database ({row.status})")
            stored = self._secrets.decrypt(row.encrypted_connection_secret)
            if stored != refused_uri:
                return stored  # someone reset it meanwhile
            if row.project_id is None or row.live_branch_id is None or row.role_name is None:
                raise Conflict(f"session {session_id} has no database role to reset")
            try:
                changed = await self._neon.reset_password(
                    row.project_id, row.live_branch_id, row.role_name
                )
            except NeonError as error:
                log.error(  # noqa: TRY400 - the error is in the line; no traceback
                    "session.credentials_reset_failed",
                    session_id=str(session_id),
                    error=describe(error),
                )
                raise ControlPlaneFailed(
                    f"resetting the database password of session {session_id} failed: "
                    f"{describe(error)}"
                ) from error
            password = changed.role.password
            if password is None:
                raise ControlPlaneFailed(
                    f"the control plane reset the password of session {session_id} "
                    "but did not return it"
                )
            fresh = with_password(stored, password.get_secret_value())
            row.encrypted_connection_secret = self._secrets.encrypt(fresh)
            db.add(
                event(
                    actor,
                    "session.credentials_reset",
                    at=self._clock(),
                    session_id=session_id,
                    target_kind="session",
                    target_id=session_id,
                    details={
                        "reason": "the stored password was refused (changed from SQL)",
                        "role": row.role_name,
                    },
                    operation_ids=operation_ids(changed),
                )
            )
            await db.commit()
        log.warning("session.credentials_reset", session_id=str(session_id))
        return fresh


__all__ = ["INVALID_PASSWORD", "CredentialService", "with_password"]
