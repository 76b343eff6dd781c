"""Readiness: whether this agentdb can serve requests now, for a load balancer or an
orchestrator deciding where to send traffic (`/readyz`; `/healthz` stays cheap liveness).

Three things are checked at once, each within `timeout`: the meta database answers `SELECT 1`,
the control plane (Neon, or the local plane) answers a one-project list, and the PostgreSQL
agentdb runs on answers (the embedded server's supervisor says so). A probe that arrives within
`cache_for` of the last check gets its answer, so a fleet of probers costs one check per
interval, never a request to Neon per probe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from agentdb.neon import NeonClient

from ._common import SessionFactory, describe

#: Each check's name, as `/readyz` reports it.
CHECKS = ("meta_database", "control_plane", "postgres")


@dataclass(frozen=True)
class ReadinessReport:
    """Each check's cause of failure (None: it passed)."""

    causes: dict[str, str | None] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(cause is None for cause in self.causes.values())


class Readiness:
    def __init__(
        self,
        meta: SessionFactory,
        neon: NeonClient,
        database_health: Callable[[], Awaitable[str | None]],
        *,
        org_id: str | None = None,
        timeout: float = 2.0,
        cache_for: float = 1.0,
    ) -> None:
        self._meta = meta
        self._neon = neon
        self._database_health = database_health
        self._org_id = org_id
        self._timeout = timeout
        self._cache_for = cache_for
        self._lock = asyncio.Lock()
        self._last: tuple[float, ReadinessReport] | None = None

    async def check(self) -> ReadinessReport:
        """The three checks' outcome, at most `cache_for` old; within `timeout` (plus the wait
        for a check already under way)."""
        async with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < self._cache_for:
                return self._last[1]
            causes = await asyncio.gather(
                self._bounded(self._check_meta), self._bounded(self._check_plane), self._postgres()
            )
            report = ReadinessReport(dict(zip(CHECKS, causes, strict=True)))
            self._last = (time.monotonic(), report)
            return report

    async def _bounded(self, check: Callable[[], Awaitable[None]]) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                await check()
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except Exception as error:  # noqa: BLE001 - whatever it is, the cause is the answer
            return describe(error)
        return None

    async def _check_meta(self) -> None:
        async with self._meta() as db:
            await db.execute(sa.text("SELECT 1"))

    async def _check_plane(self) -> None:
        await self._neon.list_projects(org_id=self._org_id, limit=1)

    async def _postgres(self) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._database_health()
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"


__all__ = ["CHECKS", "Readiness", "ReadinessReport"]
