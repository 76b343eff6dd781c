"""`LocalPlane`: the Neon API v2 subset served by agentdb over one PostgreSQL cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agentdb.pg import ServerInfo

from ._branches import BranchesMixin
from ._compute import ComputeMixin
from ._engine import Engine
from ._projects import ProjectsMixin
from ._snapshots import SnapshotsMixin
from ._store import STATE_DATABASE, Store


class LocalPlane(ProjectsMixin, BranchesMixin, SnapshotsMixin, ComputeMixin):
    """Everything the HTTP layer calls; one per process and cluster."""

    @classmethod
    @asynccontextmanager
    async def open(
        cls, server: ServerInfo, *, operation_delay_s: float = 0
    ) -> AsyncIterator[LocalPlane]:
        async with Engine.open(server) as engine:
            await engine.ensure_state_database(STATE_DATABASE)
            async with Store.open(server.conninfo(STATE_DATABASE)) as store:
                plane = cls(store, engine, server, operation_delay_s=operation_delay_s)
                async with store.hold_runner_lock(plane.runner_id):
                    await plane.recover()
                    try:
                        yield plane
                    finally:
                        await plane.drain()
