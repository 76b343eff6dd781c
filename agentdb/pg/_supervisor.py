"""Supervision of the embedded PostgreSQL: notice the postmaster's death, restart it with
backoff, and answer a health probe naming the cause while it is down.

A killed postmaster leaves its backends running for a moment and its pid file behind;
`EmbeddedPostgres.start()` already clears both, so a restart is a start on the same port (every
DSN handed out stays valid). PostgreSQL's own crash recovery replays the WAL on that start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import psycopg
import structlog

from agentdb.pg._embedded import EmbeddedPostgres
from agentdb.pg._errors import PostgresError
from agentdb.pg._server_info import ServerInfo

_log = structlog.get_logger(__name__)

_PROBE_TIMEOUT_S = 2


@dataclass(frozen=True)
class ServerHealth:
    """What a probe found: `ok`, or `down` / `restarting` with the cause in words."""

    status: Literal["ok", "down", "restarting"]
    cause: str | None = None
    restarts: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


async def probe_server(info: ServerInfo, *, timeout_s: float = _PROBE_TIMEOUT_S) -> str | None:
    """None when the server answers `SELECT 1` as its superuser within `timeout_s`, else why
    not (one line, no secrets): what a health check reports."""
    try:
        async with asyncio.timeout(timeout_s):
            async with await psycopg.AsyncConnection.connect(
                info.conninfo(), connect_timeout=max(1, int(timeout_s)), autocommit=True
            ) as conn:
                await conn.execute("SELECT 1")
    except TimeoutError:
        return f"PostgreSQL on {info.host}:{info.port} did not answer within {timeout_s:g} s"
    except psycopg.Error as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__
        return f"PostgreSQL on {info.host}:{info.port} is unreachable: {reason}"
    return None


class PostgresSupervisor:
    """Watches one `EmbeddedPostgres` that this process started and restarts it when its
    postmaster dies: `async with PostgresSupervisor(pg).watch(): ...`.

    The postmaster is checked every `interval_s` (its process, then a query); a death is
    noticed within `interval_s` plus one probe. Restarts back off from `backoff_initial_s`,
    doubling up to `backoff_max_s`, until one succeeds.
    """

    def __init__(
        self,
        pg: EmbeddedPostgres,
        *,
        interval_s: float = 1.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self._pg = pg
        self._interval = interval_s
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._health = ServerHealth("ok")
        self._restarts = 0

    @property
    def health(self) -> ServerHealth:
        """The last state the watcher saw (updated every `interval_s`)."""
        return self._health

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[PostgresSupervisor]:
        """Runs the watcher for as long as the block runs."""
        task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def check(self) -> ServerHealth:
        """One look at the server, restarting it (with backoff) when its postmaster is gone."""
        info = self._pg.server_info
        if info is None:
            self._health = ServerHealth("down", "PostgreSQL is not started", self._restarts)
            return self._health
        if not await self._pg.is_alive():
            self._health = ServerHealth(
                "down", f"the PostgreSQL postmaster on port {info.port} died", self._restarts
            )
            await self._restart()
            return self._health
        cause = await probe_server(info)
        self._health = ServerHealth("ok" if cause is None else "down", cause, self._restarts)
        return self._health

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except (PostgresError, psycopg.Error, OSError):
                _log.exception("pg_supervisor_failed")
            await asyncio.sleep(self._interval)

    async def _restart(self) -> None:
        delay = self._backoff_initial
        while True:
            cause = self._health.cause
            self._health = ServerHealth("restarting", cause, self._restarts)
            began = time.monotonic()
            try:
                await self._pg.restart()
            except (PostgresError, psycopg.Error, OSError) as exc:
                _log.warning("pg_restart_failed", error=str(exc)[:300], retry_in_s=delay)
                self._health = ServerHealth("down", f"{cause}; restart failed: {exc}"[:500])
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            self._restarts += 1
            self._health = ServerHealth("ok", None, self._restarts)
            _log.warning(
                "pg_restarted",
                restarts=self._restarts,
                seconds=round(time.monotonic() - began, 3),
            )
            return
