"""Where `Idempotency-Key` answers are kept: a key per token, the request's fingerprint, and the
first answer, encrypted (it may carry a token or a connection URI). The API's middleware
(`agentdb/api/_idempotency.py`) claims a key before running a POST and finishes it after.

A key claimed by a call that never finished (a crash) is taken over as soon as the process that
claimed it is gone (`ProcessLease`), else after `STALE_AFTER`: the workflows themselves are
idempotent by the same key, so the retry finds what the interrupted call made instead of making
it twice. Answers are kept `KEEP_FOR`, then deleted by a job.
"""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col

from meta_schema import IdempotencyRecord
from meta_schema._base import new_id

from ._common import SessionFactory
from ._secrets import Secrets
from .lease import ProcessLease

#: How long a POST's answer is kept for replay under its key.
KEEP_FOR = timedelta(hours=24)
#: After this, a claimed key whose call never finished is taken over by a retry.
STALE_AFTER = timedelta(minutes=5)
#: Larger answers are not kept (the key is released: a retry runs again).
MAX_BODY = 1024 * 1024
#: The response headers a replay repeats.
_KEPT_HEADERS = frozenset({"content-type", "location", "retry-after"})
_SERVER_ERROR = 500


class Claim(enum.Enum):
    """What claiming a key found, when it holds no answer to replay."""

    #: The key is this call's: run the request, then `finish`.
    TAKEN = "taken"
    #: A call with this key is still running.
    BUSY = "busy"
    #: The key was deleted meanwhile (expired): the caller may retry.
    RESETTING = "resetting"


@dataclass(frozen=True)
class Replay:
    """The first call's answer: `status`, the kept `headers` and the `body`."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Mismatch:
    """The key was used for another request (`method` `path`)."""

    method: str
    path: str


class IdempotencyService:
    """`lease`: this process's, which claims carry; a key whose claimer is gone (another
    process that died mid-call) is taken over at once. Without one, after `STALE_AFTER`."""

    def __init__(
        self, sessions: SessionFactory, secrets: Secrets, *, lease: ProcessLease | None = None
    ) -> None:
        self._sessions = sessions
        self._secrets = secrets
        self._lease = lease
        self._runner = lease.runner if lease is not None else None

    async def claim(  # noqa: PLR0911 - one return per state a key can be in
        self, principal: str, key: str, method: str, path: str, fingerprint: str
    ) -> Claim | Replay | Mismatch:
        """Takes `key` for this call (`Claim.TAKEN`), or says why not: the answer to replay, a
        call still running, or another request that used the key."""
        now = datetime.now(UTC)
        async with self._sessions() as db:
            inserted = await db.scalar(
                insert(IdempotencyRecord)
                .values(
                    id=new_id(),
                    principal=principal,
                    key=key,
                    method=method,
                    path=path,
                    fingerprint=fingerprint,
                    created_at=now,
                    runner=self._runner,
                )
                .on_conflict_do_nothing(index_elements=["principal", "key"])
                .returning(col(IdempotencyRecord.id))
            )
            if inserted is not None:
                await db.commit()
                return Claim.TAKEN
            found = await db.scalar(
                sa.select(IdempotencyRecord)
                .where(
                    col(IdempotencyRecord.principal) == principal,
                    col(IdempotencyRecord.key) == key,
                )
                .with_for_update()
            )
            if found is None:  # deleted meanwhile
                return Claim.RESETTING
            if now - found.created_at >= KEEP_FOR and found.status_code is not None:
                # Past its time: the key is free again (a periodic job deletes such rows).
                found.fingerprint = fingerprint
                found.method, found.path = method, path
                found.created_at, found.status_code = now, None
                found.encrypted_response = found.completed_at = None
                await db.commit()
                return Claim.TAKEN
            if found.fingerprint != fingerprint:
                return Mismatch(found.method, found.path)
            if found.status_code is None or found.encrypted_response is None:
                if now - found.created_at < STALE_AFTER and not await self._claimer_gone(found):
                    return Claim.BUSY
                # A crash left it: this call takes it over.
                found.created_at, found.runner = now, self._runner
                await db.commit()
                return Claim.TAKEN
            answer: dict[str, Any] = json.loads(self._secrets.decrypt(found.encrypted_response))
        return Replay(
            status=int(answer["status"]),
            headers=[(str(k), str(v)) for k, v in answer["headers"]],
            body=base64.b64decode(answer["body"]),
        )

    async def _claimer_gone(self, found: IdempotencyRecord) -> bool:
        if self._lease is None or found.runner is None or found.runner == self._runner:
            return False
        return await self._lease.gone(found.runner)

    async def finish(
        self, principal: str, key: str, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        """Keeps the answer of the call that claimed `key`; a 5xx, a call that never answered
        (`status` 0) or an answer past `MAX_BODY` releases the key instead."""
        where = (col(IdempotencyRecord.principal) == principal, col(IdempotencyRecord.key) == key)
        async with self._sessions() as db:
            if not status or status >= _SERVER_ERROR or len(body) > MAX_BODY:
                await db.execute(sa.delete(IdempotencyRecord).where(*where))
            else:
                answer = {
                    "status": status,
                    "headers": [(k, v) for k, v in headers if k.lower() in _KEPT_HEADERS],
                    "body": base64.b64encode(body).decode("ascii"),
                }
                await db.execute(
                    sa.update(IdempotencyRecord)
                    .where(*where)
                    .values(
                        status_code=status,
                        encrypted_response=self._secrets.encrypt(json.dumps(answer)),
                        completed_at=datetime.now(UTC),
                    )
                )
            await db.commit()

    async def delete_expired(self) -> int:
        """Deletes the answers kept longer than `KEEP_FOR`; how many. Meant for a periodic job."""
        async with self._sessions() as db:
            result = await db.execute(
                sa.delete(IdempotencyRecord).where(
                    col(IdempotencyRecord.created_at) < datetime.now(UTC) - KEEP_FOR
                )
            )
            await db.commit()
        return int(getattr(result, "rowcount", 0) or 0)


__all__ = ["KEEP_FOR", "STALE_AFTER", "Claim", "IdempotencyService", "Mismatch", "Replay"]
