"""`IdempotencyService`: a key per token runs its request once; the first answer is replayed,
another request under the key is refused, a call a crash left unfinished is taken over after
`STALE_AFTER`, and answers older than `KEEP_FOR` free their key and are deleted."""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from agentdb.services import IdempotencyService, ProcessLease, Secrets
from agentdb.services.idempotency import KEEP_FOR, STALE_AFTER, Claim, Mismatch, Replay
from meta_schema import IdempotencyRecord

SessionFactory = async_sessionmaker[AsyncSession]


async def age(meta: SessionFactory, key: str, by: timedelta) -> None:
    """Moves the key's record `by` into the past."""
    async with meta() as db:
        await db.execute(
            sa.update(IdempotencyRecord)
            .where(col(IdempotencyRecord.key) == key)
            .values(created_at=IdempotencyRecord.created_at - by)
        )
        await db.commit()


def fresh_key() -> str:
    return f"key-{uuid.uuid4().hex}"


async def test_a_key_runs_once_and_replays_its_first_answer(
    meta_sessions: SessionFactory, box: Secrets
):
    keys, key = IdempotencyService(meta_sessions, box), fresh_key()
    assert await keys.claim("tok", key, "POST", "/v1/x", "f1") is Claim.TAKEN
    assert await keys.claim("tok", key, "POST", "/v1/x", "f1") is Claim.BUSY
    # Another token's key of the same name is its own.
    assert await keys.claim("other", key, "POST", "/v1/x", "f1") is Claim.TAKEN
    headers = [("content-type", "application/json"), ("x-request-id", "r1")]
    await keys.finish("tok", key, 201, headers, b'{"id": 1}')
    replay = await keys.claim("tok", key, "POST", "/v1/x", "f1")
    assert replay == Replay(201, [("content-type", "application/json")], b'{"id": 1}')
    refused = await keys.claim("tok", key, "POST", "/v1/y", "f2")
    assert refused == Mismatch("POST", "/v1/x")
    async with meta_sessions() as db:
        stored = await db.scalar(
            sa.select(IdempotencyRecord).where(
                col(IdempotencyRecord.principal) == "tok", col(IdempotencyRecord.key) == key
            )
        )
    assert stored is not None
    assert stored.encrypted_response is not None
    assert b'"id"' not in stored.encrypted_response  # kept encrypted


async def test_a_server_error_or_a_lost_answer_frees_the_key(
    meta_sessions: SessionFactory, box: Secrets
):
    keys = IdempotencyService(meta_sessions, box)
    for status in (500, 0):
        key = fresh_key()
        assert await keys.claim("tok", key, "POST", "/v1/x", "f") is Claim.TAKEN
        await keys.finish("tok", key, status, [], b"oops")
        assert await keys.claim("tok", key, "POST", "/v1/x", "f") is Claim.TAKEN


async def test_a_call_a_crash_left_unfinished_is_taken_over_once_stale(
    meta_sessions: SessionFactory, box: Secrets
):
    keys, key = IdempotencyService(meta_sessions, box), fresh_key()
    assert await keys.claim("tok", key, "POST", "/v1/x", "f") is Claim.TAKEN
    await age(meta_sessions, key, STALE_AFTER - timedelta(seconds=30))
    assert await keys.claim("tok", key, "POST", "/v1/x", "f") is Claim.BUSY
    await age(meta_sessions, key, timedelta(seconds=60))
    assert await keys.claim("tok", key, "POST", "/v1/x", "f") is Claim.TAKEN
    # Taken over: the clock starts again for the new call.
    assert await keys.claim("tok", key, "POST", "/v1/x", "f") is Claim.BUSY


async def test_a_call_of_a_process_that_is_gone_is_taken_over_at_once(
    meta_sessions: SessionFactory, box: Secrets
):
    """Two processes sharing the meta DB, each with its lease: while the one that claimed a
    key lives, the key is busy for the other; once it is gone (its lease's session ended, as
    when the process is killed), the other takes the key over without waiting out the staleness."""
    key = fresh_key()
    async with ProcessLease(meta_sessions, "replica-b:2:bb") as theirs:
        mine = ProcessLease(meta_sessions, "replica-a:1:aa")
        async with mine:
            first = IdempotencyService(meta_sessions, box, lease=mine)
            assert await first.claim("tok", key, "POST", "/v1/x", "f") is Claim.TAKEN
            other = IdempotencyService(meta_sessions, box, lease=theirs)
            assert await other.claim("tok", key, "POST", "/v1/x", "f") is Claim.BUSY
            assert not await theirs.gone(mine.runner)
            # Its own lease is never gone to a process, even one that holds it.
            assert not await mine.gone(mine.runner)
        assert await theirs.gone(mine.runner)
        assert await other.claim("tok", key, "POST", "/v1/x", "f") is Claim.TAKEN
        # Now the key is the live process's: busy to a third, as before.
        async with ProcessLease(meta_sessions, "replica-c:3:cc") as third:
            late = IdempotencyService(meta_sessions, box, lease=third)
            assert await late.claim("tok", key, "POST", "/v1/x", "f") is Claim.BUSY
    async with meta_sessions() as db:
        stored = await db.scalar(
            sa.select(IdempotencyRecord.runner).where(col(IdempotencyRecord.key) == key)
        )
    assert stored == "replica-b:2:bb"


async def test_a_lease_is_taken_again_after_its_connection_died(
    meta_sessions: SessionFactory, box: Secrets
):
    async with ProcessLease(meta_sessions, "replica-d:4:dd") as mine:
        assert mine.held
        assert mine._conn is not None
        await mine._conn.invalidate()  # as a PostgreSQL restart would
        await mine.renew()
        assert mine.held
        async with ProcessLease(meta_sessions, "replica-e:5:ee") as theirs:
            assert not await theirs.gone(mine.runner)


async def test_expired_answers_free_their_key_and_are_deleted(
    meta_sessions: SessionFactory, box: Secrets
):
    keys = IdempotencyService(meta_sessions, box)
    old, kept = fresh_key(), fresh_key()
    for key in (old, kept):
        assert await keys.claim("tok", key, "POST", "/v1/x", "f") is Claim.TAKEN
        await keys.finish("tok", key, 200, [], b"{}")
    await age(meta_sessions, old, KEEP_FOR + timedelta(minutes=1))
    # Past its time the key is free, even for another request.
    assert await keys.claim("tok", old, "POST", "/v1/other", "g") is Claim.TAKEN
    await keys.finish("tok", old, 200, [], b"{}")
    await age(meta_sessions, old, KEEP_FOR + timedelta(minutes=1))
    assert await keys.delete_expired() >= 1
    async with meta_sessions() as db:
        left = set(
            await db.scalars(
                sa.select(col(IdempotencyRecord.key)).where(
                    col(IdempotencyRecord.key).in_([old, kept])
                )
            )
        )
    assert left == {kept}
