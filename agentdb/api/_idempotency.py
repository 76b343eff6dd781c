"""`Idempotency-Key` on POSTs: a retry of the same request by the same token gets the first
answer again instead of doing the work twice.

The first call records the key (per token) with a fingerprint of the request before running;
its answer (any status below 500) is stored encrypted, since it may carry a token or a connection
URI, and replayed with `Idempotent-Replayed: true`. The same key with a different request is a
422; a retry while the first call still runs is a 409 with `Retry-After`. A 5xx answer is not
kept, so the caller can retry. A record left unfinished by a crash is taken over after
`STALE_AFTER`: the services make the workflows themselves idempotent by the same key, so the
retry finds what the interrupted call created instead of creating it twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.types import (
    ASGIApp,
    HTTPRequestEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col

from agentdb.runtime import IDEMPOTENCY_KEEP_FOR
from agentdb.services import Principal
from meta_schema import IdempotencyRecord
from meta_schema._base import new_id

from ._auth import runtime_of
from ._problems import BadRequest

HEADER = b"idempotency-key"
MAX_KEY = 200
STALE_AFTER = timedelta(minutes=5)
KEEP_FOR = IDEMPOTENCY_KEEP_FOR
MAX_BODY = 1024 * 1024


def _conflict(status: int, detail: str, *, retry_after: int | None = None) -> HTTPException:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return HTTPException(status_code=status, detail=detail, headers=headers)


class IdempotencyMiddleware(ASGIMiddleware):
    scopes = ("http",)  # type: ignore[assignment]

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        http = cast("HTTPScope", scope)
        raw = next((v for k, v in http["headers"] if k == HEADER), None)
        principal = http.get("user")
        if http["method"] != "POST" or raw is None or not isinstance(principal, Principal):
            await next_app(scope, receive, send)
            return
        key = raw.decode("latin-1")
        if not 0 < len(key) <= MAX_KEY or not key.isprintable() or not key.isascii():
            raise BadRequest(
                "Idempotency-Key", f"must be 1 to {MAX_KEY} printable ASCII characters"
            )
        body, replay_receive = await _buffer(receive)
        fingerprint = hashlib.sha256(
            http["method"].encode() + b" " + http["path"].encode() + b"\n" + body
        ).hexdigest()
        store = _Store(scope)
        stored = await store.claim(str(principal.token_id), key, http, fingerprint)
        if stored is not None:
            await _replay(send, stored)
            return
        status, headers, chunks = 0, [], []

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await next_app(scope, replay_receive, capture)
        finally:
            await store.finish(str(principal.token_id), key, status, headers, b"".join(chunks))


class _Store:
    def __init__(self, scope: Scope) -> None:
        runtime = runtime_of(scope)
        self._meta = runtime.meta
        self._secrets = runtime.secrets

    async def claim(
        self, principal: str, key: str, scope: HTTPScope, fingerprint: str
    ) -> dict[str, Any] | None:
        """Records the key as taken by this call (None), or returns the stored answer."""
        now = datetime.now(UTC)
        async with self._meta() as db:
            inserted = await db.scalar(
                insert(IdempotencyRecord)
                .values(
                    id=new_id(),
                    principal=principal,
                    key=key,
                    method=scope["method"],
                    path=scope["path"],
                    fingerprint=fingerprint,
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["principal", "key"])
                .returning(col(IdempotencyRecord.id))
            )
            if inserted is not None:
                await db.commit()
                return None
            found = await db.scalar(
                sa.select(IdempotencyRecord)
                .where(
                    col(IdempotencyRecord.principal) == principal,
                    col(IdempotencyRecord.key) == key,
                )
                .with_for_update()
            )
            if found is None:  # deleted meanwhile: let the caller retry
                raise _conflict(409, "the Idempotency-Key is being reset; retry")
            if now - found.created_at >= KEEP_FOR and found.status_code is not None:
                # Past its time: the key is free again (a periodic job deletes such rows).
                found.fingerprint = fingerprint
                found.method, found.path = scope["method"], scope["path"]
                found.created_at, found.status_code = now, None
                found.encrypted_response = found.completed_at = None
                await db.commit()
                return None
            if found.fingerprint != fingerprint:
                raise _conflict(
                    422,
                    "this Idempotency-Key was already used for a different request"
                    f" ({found.method} {found.path}); use a new key",
                )
            if found.status_code is None or found.encrypted_response is None:
                if now - found.created_at < STALE_AFTER:
                    raise _conflict(
                        409,
                        "a request with this Idempotency-Key is still running; retry shortly",
                        retry_after=1,
                    )
                found.created_at = now  # a crash left it: this call takes it over
                await db.commit()
                return None
            answer: dict[str, Any] = json.loads(self._secrets.decrypt(found.encrypted_response))
            return answer

    async def finish(
        self,
        principal: str,
        key: str,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        where = (col(IdempotencyRecord.principal) == principal, col(IdempotencyRecord.key) == key)
        async with self._meta() as db:
            if not status or status >= 500 or len(body) > MAX_BODY:  # noqa: PLR2004
                await db.execute(sa.delete(IdempotencyRecord).where(*where))
            else:
                kept = [
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in headers
                    if k in {b"content-type", b"location", b"retry-after"}
                ]
                answer = {
                    "status": status,
                    "headers": kept,
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


async def _buffer(receive: Receive) -> tuple[bytes, Receive]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest("body", f"must be at most {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    sent = False

    async def replay() -> ReceiveMessage:
        nonlocal sent
        if not sent:
            sent = True
            request: HTTPRequestEvent = {"type": "http.request", "body": body, "more_body": False}
            return request
        return await receive()

    return body, replay


async def _replay(send: Send, stored: dict[str, Any]) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored["headers"]]
    headers.append((b"idempotent-replayed", b"true"))
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": stored["status"],
        "headers": headers,
    }
    await send(start)
    body: HTTPResponseBodyEvent = {
        "type": "http.response.body",
        "body": base64.b64decode(stored["body"]),
        "more_body": False,
    }
    await send(body)
