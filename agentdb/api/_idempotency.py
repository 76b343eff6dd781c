"""`Idempotency-Key` on POSTs: a retry of the same request by the same token gets the first
answer again instead of doing the work twice. The keys and answers are kept by
`IdempotencyService`; this middleware fingerprints the request and speaks HTTP.

The first call records the key (per token) with a fingerprint of the request before running;
its answer (any status below 500) is stored encrypted, since it may carry a token or a connection
URI, and replayed with `Idempotent-Replayed: true`. The same key with a different request is a
422; a retry while the first call still runs is a 409 with `Retry-After`. A 5xx answer is not
kept, so the caller can retry. A record left unfinished by a crash is taken over after
`STALE_AFTER`: the services make the workflows themselves idempotent by the same key, so the
retry finds what the interrupted call created instead of creating it twice.
"""

from __future__ import annotations

import hashlib
from typing import cast

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

from agentdb.services import Principal
from agentdb.services.idempotency import MAX_BODY, Claim, Mismatch, Replay

from ._auth import runtime_of
from ._problems import BadRequest

HEADER = b"idempotency-key"
MAX_KEY = 200


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
        keys = runtime_of(scope).idempotency
        token = str(principal.token_id)
        claimed = await keys.claim(token, key, http["method"], http["path"], fingerprint)
        if isinstance(claimed, Replay):
            await _replay(send, claimed)
            return
        if claimed is not Claim.TAKEN:
            raise _refusal(claimed)
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
            kept = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
            await keys.finish(token, key, status, kept, b"".join(chunks))


def _refusal(claimed: Claim | Mismatch) -> HTTPException:
    """Why a call may not run with its key: the key went to another request, or its first
    call is still running."""
    match claimed:
        case Mismatch(method, path):
            return _conflict(
                422,
                "this Idempotency-Key was already used for a different request"
                f" ({method} {path}); use a new key",
            )
        case Claim.BUSY:
            return _conflict(
                409,
                "a request with this Idempotency-Key is still running; retry shortly",
                retry_after=1,
            )
        case _:
            return _conflict(409, "the Idempotency-Key is being reset; retry")


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


async def _replay(send: Send, stored: Replay) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored.headers]
    headers.append((b"idempotent-replayed", b"true"))
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": stored.status,
        "headers": headers,
    }
    await send(start)
    body: HTTPResponseBodyEvent = {
        "type": "http.response.body",
        "body": stored.body,
        "more_body": False,
    }
    await send(body)
