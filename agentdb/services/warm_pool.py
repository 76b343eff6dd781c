"""The warm pool: projects made ahead of any session, so a session create takes one instead of
waiting for the control plane (a project and a snapshot: about 0.25 s on the local plane, a
second or more on Neon).

Each tier with a pool size keeps that many ready projects, made with exactly what the tier's
sessions get (organization, compute, quotas, history retention) and each with the root snapshot
of its empty database. A project is named after the id the session that takes it will have,
and the snapshot after its root checkpoint's id, so taking one renames nothing: the session's
row, its root checkpoint and the pool row's removal are one meta-DB transaction.

The pool is refilled by the `fill_warm_pool` job (one process at a time, across replicas),
kicked after every take. Its rows are written before their projects are made: a fill that a
crash cut short leaves a row that is not ready, which the next fill deletes with its project.
A project that outlived its row (a crash between the two deletes) is named like a session's
with neither a session nor a pool row: the reconciler's orphan pass deletes it.

Warm projects are the platform's, not any user's: they count toward no user's sessions, but
they are real projects (on Neon, toward the organization's project limit; locally, about 15 MB
of disk each).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.neon import CreatedProject, NeonClient, NeonError, NeonNotFound
from agentdb.tiers import Tier, Tiers
from meta_schema import WarmProject

from ._common import Clock, SessionFactory, describe, system_clock
from ._errors import ControlPlaneFailed
from ._secrets import Secrets

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PoolKey:
    """Which warm projects a session may take: its tier's pool, made in its organization with
    what the tier gives now (`fingerprint`)."""

    pool: str
    org_id: str | None
    fingerprint: str


@dataclass(frozen=True)
class FillReport:
    made: int = 0
    discarded: int = 0
    failed: int = 0


class WarmPool:
    """Keeps each tier's ready projects and hands them to session creates."""

    def __init__(
        self,
        sessions: SessionFactory,
        neon: NeonClient,
        secrets: Secrets,
        *,
        tiers: Tiers,
        size: Callable[[Tier], int],
        spec: Callable[[Tier], dict[str, Any]],
        name: Callable[[uuid.UUID], str],
        default_org_id: str | None = None,
        clock: Clock = system_clock,
        refill_soon: Callable[[], None] | None = None,
    ) -> None:
        """`size`: how many ready projects a tier keeps (0: no pool); `spec`: what a tier's
        session projects are made with (`create_project`'s arguments besides name and
        organization); `name`: the project name of a session id; `refill_soon`: called after
        a take, to have `fill` run soon."""
        self._sessions = sessions
        self._neon = neon
        self._secrets = secrets
        self._tiers = tiers
        self._size = size
        self._spec = spec
        self._name = name
        self._default_org_id = default_org_id
        self._clock = clock
        self._refill_soon = refill_soon

    def _db(self) -> AsyncSession:
        return self._sessions(expire_on_commit=False)

    def key(self, tier: Tier) -> PoolKey:
        """The pool a session of `tier` in the tier's own organization takes from."""
        org_id = tier.org_id or self._default_org_id
        made_with = json.dumps(
            {"org_id": org_id, **self._spec(tier)}, sort_keys=True, default=_jsonable
        )
        return PoolKey(tier.name, org_id, hashlib.sha256(made_with.encode()).hexdigest())

    # --- taking ------------------------------------------------------------------------------

    async def take(self, db: AsyncSession, tier: Tier, org_id: str | None) -> WarmProject | None:
        """A ready project of `tier`'s pool for a session in `org_id`, removed from the pool in
        `db`'s transaction (the caller commits it with the session that takes it); None when
        the pool is empty or its projects are of another organization or of the tier as it was.
        Concurrent takes never get the same project (the row is locked, others skipped)."""
        if self._size(tier) <= 0:
            return None
        key = self.key(tier)
        if org_id != key.org_id:
            return None
        warm: WarmProject | None = await db.scalar(
            sa.select(WarmProject)
            .where(
                col(WarmProject.pool) == key.pool,
                col(WarmProject.fingerprint) == key.fingerprint,
                col(WarmProject.ready),
            )
            .order_by(col(WarmProject.created_at))
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if warm is not None:
            await db.delete(warm)
        return warm

    def taken(self) -> None:
        """A session took a project (its transaction committed): refill soon."""
        if self._refill_soon is not None:
            self._refill_soon()

    async def sizes(self) -> dict[str, int]:
        """Ready projects per pool."""
        async with self._db() as db:
            found = await db.execute(
                sa.select(col(WarmProject.pool), sa.func.count())
                .where(col(WarmProject.ready))
                .group_by(col(WarmProject.pool))
            )
            return dict(found.tuples().all())

    # --- filling -----------------------------------------------------------------------------

    async def fill(self) -> FillReport:
        """The `fill_warm_pool` job: deletes what a cut-short fill left and projects made for
        a tier as it no longer is (or past its size), then makes what each pool lacks, one
        project at a time. A failed make is logged and ends the round (the next one retries).

        Only one fill may run at a time (the job runner's lock across processes): a row that
        is not ready when a fill starts is a fill that died."""
        discarded = 0
        async with self._db() as db:
            abandoned = list(
                await db.scalars(sa.select(WarmProject).where(~col(WarmProject.ready)))
            )
        for row in abandoned:
            discarded += await self._discard(row)
        keys = {tier.name: (self.key(tier), self._size(tier)) for tier in self._tiers.tiers}
        async with self._db() as db:
            ready = list(
                await db.scalars(
                    sa.select(WarmProject)
                    .where(col(WarmProject.ready))
                    .order_by(col(WarmProject.created_at))
                )
            )
        kept: dict[str, int] = {}
        for row in ready:
            key, size = keys.get(row.pool, (None, 0))
            current = key is not None and row.fingerprint == key.fingerprint
            if current and kept.get(row.pool, 0) < size:
                kept[row.pool] = kept.get(row.pool, 0) + 1
            elif await self._claim(row.id):
                discarded += await self._discard(row)
        made = 0
        for tier in self._tiers.tiers:
            key, size = keys[tier.name]
            for _ in range(size - kept.get(tier.name, 0)):
                try:
                    await self._make(tier, key)
                except (NeonError, ControlPlaneFailed) as error:
                    log.warning("warm_pool.fill_failed", pool=tier.name, error=describe(error))
                    return FillReport(made=made, discarded=discarded, failed=1)
                made += 1
        if made or discarded:
            log.info("warm_pool.filled", made=made, discarded=discarded)
        return FillReport(made=made, discarded=discarded)

    async def drain(self) -> int:
        """Deletes every ready project of every pool (e.g. before the installation goes away);
        returns how many. Takes concurrent with it get none of them."""
        async with self._db() as db:
            ids = list(
                await db.scalars(sa.select(col(WarmProject.id)).where(col(WarmProject.ready)))
            )
        drained = 0
        for warm_id in ids:
            row = await self._claim(warm_id)
            if row is not None:
                drained += await self._discard(row)
        return drained

    async def _make(self, tier: Tier, key: PoolKey) -> None:
        row = WarmProject(
            pool=key.pool, fingerprint=key.fingerprint, org_id=key.org_id, created_at=self._clock()
        )
        async with self._db() as db:
            db.add(row)
            await db.commit()
            try:
                created = await self._neon.create_project(
                    name=self._name(row.id), org_id=key.org_id, **self._spec(tier)
                )
                self._record(row, created)
                await db.commit()
                taken = await self._neon.create_snapshot(
                    created.project.id, created.branch.id, name=str(row.root_checkpoint_id)
                )
            except (NeonError, ControlPlaneFailed):
                await self._discard(row)
                raise
            snapshot = taken.snapshot
            row.snapshot_id = snapshot.id
            row.source_branch_id = snapshot.source_branch_id or created.branch.id
            row.lsn = snapshot.lsn
            row.taken_at = snapshot.timestamp or snapshot.created_at
            row.size_bytes = snapshot.full_size
            row.ready = True
            await db.commit()

    def _record(self, row: WarmProject, created: CreatedProject) -> None:
        row.project_id = created.project.id
        if not created.connection_uris or not created.endpoints:
            raise ControlPlaneFailed("the new project came without a compute or connection URI")
        row.live_branch_id = created.branch.id
        row.endpoint_id = created.endpoints[0].id
        row.encrypted_connection_secret = self._secrets.encrypt(
            created.connection_uris[0].connection_uri.get_secret_value()
        )

    async def _claim(self, warm_id: uuid.UUID) -> WarmProject | None:
        """Removes a ready row from the pool, unless a take has it (locked) or took it."""
        async with self._db() as db:
            row: WarmProject | None = await db.scalar(
                sa.select(WarmProject)
                .where(col(WarmProject.id) == warm_id)
                .with_for_update(skip_locked=True)
            )
            if row is not None:
                await db.delete(row)
                await db.commit()
            return row

    async def _discard(self, row: WarmProject) -> int:
        """Deletes a row's project (found by name when a lost answer left its id unknown),
        then the row if it is still there; 1 if a project was deleted. A failure is logged:
        the row (or, once it is gone, the reconciler's orphan pass) brings it back."""
        deleted = 0
        try:
            project_id = row.project_id
            if project_id is None:
                found = await self._neon.find_project(self._name(row.id), org_id=row.org_id)
                project_id = found.id if found is not None else None
            if project_id is not None:
                await self._neon.wait_for_project_operations(project_id)
                await self._neon.delete_project(project_id)
                deleted = 1
        except NeonNotFound:
            pass
        except NeonError as error:
            log.warning("warm_pool.discard_failed", warm_id=str(row.id), error=describe(error))
            return 0
        async with self._db() as db:
            await db.execute(sa.delete(WarmProject).where(col(WarmProject.id) == row.id))
            await db.commit()
        return deleted


def _jsonable(value: object) -> object:
    dump = getattr(value, "model_dump", None)
    if dump is None:
        raise TypeError(f"{type(value).__name__} is not JSON")
    return dump(mode="json", exclude_none=True)


__all__ = ["FillReport", "PoolKey", "WarmPool"]
