"""Which agentdb processes sharing the meta database are alive: each holds a session-level
advisory lock keyed by its runner id (`JobRunner.runner`) on a connection of its own for as long
as it runs. PostgreSQL ends that session when the process dies (its socket closes), so the lock
is free exactly when the process is gone: another process may then take over what it claimed
(an `Idempotency-Key` whose call never finished) at once, not after a timeout."""

from __future__ import annotations

import asyncio
import hashlib
from types import TracebackType
from typing import Self

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ._common import SessionFactory, describe

log = structlog.get_logger(__name__)


def lease_key(runner: str) -> int:
    """The advisory-lock key of a process (another `person` than jobs' and sessions' keys)."""
    digest = hashlib.blake2b(runner.encode(), digest_size=8, person=b"agentdb.proc").digest()
    return int.from_bytes(digest, "big", signed=True)


class ProcessLease:
    """This process's lease (`async with`), and what it says of other processes' leases."""

    def __init__(self, sessions: SessionFactory, runner: str, *, check_every: float = 10.0) -> None:
        self.runner = runner
        self._sessions = sessions
        self._check_every = check_every
        self._db: AsyncSession | None = None
        self._conn: AsyncConnection | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.renew()
        self._keeper = asyncio.create_task(self._keep(), name="lease")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        await self._release()

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._check_every)
            try:
                await self.renew()
            except Exception as error:  # noqa: BLE001 - PostgreSQL is down: try next time
                log.warning("lease.renew_failed", runner=self.runner, error=describe(error))

    @property
    def held(self) -> bool:
        return self._conn is not None

    async def renew(self) -> None:
        """Holds the lease, taking it again on a new connection if the old one died (a
        PostgreSQL restart). Meant for a periodic job as well as the start."""
        if self._conn is not None:
            try:
                await self._conn.execute(sa.select(1))
            except Exception as error:  # noqa: BLE001 - a dead connection: take it again
                log.info("lease.lost", runner=self.runner, error=describe(error))
                await self._release()
            else:
                return
        db = self._sessions()
        try:
            conn = await db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            await conn.execute(sa.select(sa.func.pg_advisory_lock(lease_key(self.runner))))
        except BaseException:
            await db.close()
            raise
        self._db, self._conn = db, conn

    async def gone(self, runner: str) -> bool:
        """Whether the process `runner` has ended: its lease is free. This process is never
        gone to itself; a process that never took a lease counts as gone."""
        if runner == self.runner:
            return False
        key = lease_key(runner)
        async with self._sessions() as db:
            conn = await db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            free = bool(await conn.scalar(sa.select(sa.func.pg_try_advisory_lock(key))))
            if free:
                await conn.scalar(sa.select(sa.func.pg_advisory_unlock(key)))
        return free

    async def _release(self) -> None:
        db, conn = self._db, self._conn
        self._db = self._conn = None
        if db is None or conn is None:
            return
        try:
            await conn.scalar(sa.select(sa.func.pg_advisory_unlock(lease_key(self.runner))))
        except Exception as error:  # noqa: BLE001 - a closed connection holds no lock
            log.info("lease.release_failed", error=describe(error))
            await conn.invalidate()
        finally:
            await db.close()


__all__ = ["ProcessLease", "lease_key"]
