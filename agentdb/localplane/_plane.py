"""`LocalPlane`: the Neon API v2 subset served by agentdb over one PostgreSQL cluster."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import structlog

from agentdb.pg import ServerInfo

from . import _tls as tls
from ._addons import AddonLineage
from ._branches import PlaneBranches
from ._compute import PlaneCompute
from ._data_api import DataApiMixin
from ._engine import Engine
from ._errors import LocalPlaneError
from ._faults import KillSwitch
from ._governance import Limits
from ._models import BranchRecord, SnapshotRecord, now
from ._neon_auth import NeonAuthMixin
from ._organizations import OrganizationsMixin
from ._projects import PlaneProjects
from ._proxy import Proxy
from ._snapshots import PlaneSnapshots
from ._store import STATE_DATABASE, Store

log = structlog.get_logger(__name__)
# Neon deletes expired snapshots and branches "by a background job, not exactly on time".
_SWEEP_INTERVAL_S = 15


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """Where the connection proxy listens (port 0: the one it had last time, else a free one)
    and where its CA and certificate are kept."""

    host: str
    port: int
    tls_dir: Path


@asynccontextmanager
async def _proxying(
    plane: LocalPlane, engine: Engine, server: ServerInfo, options: ProxyOptions | None
) -> AsyncIterator[None]:
    if options is None:
        yield
        return
    files = tls.ensure(options.tls_dir, [options.host])
    proxy = Proxy(plane, server, files.server_context(), files.end_point_hash())
    remembered = options.tls_dir / "proxy.port"
    port = options.port
    if port == 0 and remembered.exists():
        port = int(remembered.read_text())
    try:
        bound = await proxy.start(options.host, port)
    except OSError:
        if port == options.port:
            raise
        bound = await proxy.start(options.host, 0)  # the remembered port is taken now
    remembered.write_text(str(bound))
    plane.proxy_address = (options.host, bound)
    plane.tls_files = files
    # Pooled transactions finish before a checkpoint or restore closes their database.
    engine.before_block = proxy.pooler.drain
    engine.after_block = proxy.pooler.undrain
    log.info("localplane.proxy", host=options.host, port=bound, ca_cert=str(files.ca_cert))
    try:
        yield
    finally:
        plane.proxy_address = None
        engine.before_block = engine.after_block = None
        await proxy.close()


class LocalPlane(
    AddonLineage,
    NeonAuthMixin,
    DataApiMixin,
    PlaneProjects,
    PlaneBranches,
    PlaneSnapshots,
    PlaneCompute,
    OrganizationsMixin,
):
    """Everything the HTTP layer calls; one per process and cluster."""

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        server: ServerInfo,
        *,
        operation_delay_s: float = 0,
        organizations: Sequence[str] = (),
        meter_interval_s: float = 30.0,
        limits: Limits | None = None,
        kill_at: str = "",
        proxy: ProxyOptions | None = None,
    ) -> AsyncIterator[LocalPlane]:
        """The plane over `server`, with the default organization and `organizations`; it
        measures consumption and enforces quotas every `meter_interval_s` seconds, and holds
        tenants to `limits` (see `_governance`). `kill_at` arms a kill point (crash tests).
        With `proxy`, the connection proxy runs too and connection URIs go through it."""
        limits = limits or Limits()
        async with Engine.open(server, KillSwitch(kill_at), limits) as engine:
            await engine.ensure_state_database(STATE_DATABASE)
            async with Store.open(server.conninfo(STATE_DATABASE)) as store:
                plane = cls(store, engine, server, operation_delay_s=operation_delay_s)
                plane.min_free_disk_mb = limits.min_free_disk_mb
                plane.backend_memory_max_mb = limits.backend_memory_max_mb
                async with store.hold_runner_lock(plane.runner_id):
                    await plane.recover()
                    await plane.collect_orphans()
                    # Resumed jobs reopen what they closed; what no job owns is reopened here.
                    await plane.reopen_doors()
                    await engine.govern_roles()
                    await plane.ensure_organizations(organizations)
                    await plane.meter()  # the baseline the first interval is measured from
                    background = [
                        asyncio.create_task(plane._sweep_expired()),
                        asyncio.create_task(plane.run_meter(meter_interval_s)),
                        asyncio.create_task(plane._guard(limits.guard_interval_s)),
                        asyncio.create_task(plane.watch(limits.size_watch_interval_s)),
                    ]
                    try:
                        async with _proxying(plane, engine, server, proxy):
                            yield plane
                    finally:
                        for task in background:
                            task.cancel()
                        await asyncio.gather(*background, return_exceptions=True)
                        await plane.drain(stopping=True)
                        await plane.close_meter()

    async def expire(self) -> int:
        """Deletes snapshots and branches whose `expires_at` has passed, as Neon does;
        returns how many it deleted. Ones that are busy are left for the next sweep."""
        current = now()
        async with self._store.tx() as tx:
            snapshots = await tx.expired(SnapshotRecord, current)
            branches = await tx.expired(BranchRecord, current)
        deleted = 0
        for snap in snapshots:
            with contextlib.suppress(LocalPlaneError):
                await self.delete_snapshot(snap.project_id, snap.id)
                deleted += 1
        for branch in branches:
            with contextlib.suppress(LocalPlaneError):
                await self.delete_branch(branch.project_id, branch.id)
                deleted += 1
        return deleted

    async def guard(self) -> None:
        """One round of the guard: tenant backends past their limits are cancelled or ended,
        and databases a failed or crashed copy left closed are reopened."""
        await self._store.keep_runner_lock()
        await self._engine.reap()
        await self.reopen_doors()

    async def _guard(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.guard()
            except psycopg.OperationalError as error:
                # The server is down (being restarted); the next round tries again.
                log.warning("localplane.guard_failed", error=type(error).__name__)
            except Exception:
                log.exception("localplane.guard_failed")

    async def sweep(self) -> None:
        """One sweep: expired snapshots and branches are deleted, and what a cleanup that gave
        up left is dropped now rather than at the next start (only while no job or cleanup
        runs, which could still be about to drop it)."""
        await self.expire()
        if self.orphans_suspected and not self._tasks:
            await self.collect_orphans()
            self.orphans_suspected = False

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                log.exception("localplane.sweep_failed")
