"""Where the local control plane keeps its state: Neon resources as JSON rows in one table.

The state lives in its own database of the shared cluster (`agentdb_localplane`), so it is
transactional and survives restarts together with the databases it describes.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ._models import Record

R = TypeVar("R", bound=Record)

STATE_DATABASE = "agentdb_localplane"
_RUNNER_LOCK = 7710002

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lp_resources (
    kind text NOT NULL,
    id text NOT NULL,
    project_id text NOT NULL,
    data jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    seq bigserial,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS lp_resources_by_project ON lp_resources (project_id, kind, seq);
CREATE INDEX IF NOT EXISTS lp_resources_active_endpoints ON lp_resources (project_id)
    WHERE kind = 'endpoint' AND data->>'current_state' = 'active';
CREATE INDEX IF NOT EXISTS lp_resources_expiring ON lp_resources (kind)
    WHERE data->>'expires_at' IS NOT NULL;
CREATE INDEX IF NOT EXISTS lp_resources_blocked_projects ON lp_resources (project_id)
    WHERE kind = 'project' AND data->>'quota_exceeded' IS NOT NULL;
-- The transaction that last changed what the meter reads of each project (see `changed_since`).
CREATE TABLE IF NOT EXISTS lp_changes (
    project_id text PRIMARY KEY,
    xid xid8 NOT NULL
);
CREATE INDEX IF NOT EXISTS lp_changes_by_xid ON lp_changes (xid);
"""
# The kinds whose changes the meter must see: a project's shape and sizes (not its usage
# buckets, which the meter writes, nor operations, roles or organizations).
_METERED_KINDS = frozenset({"project", "branch", "endpoint", "database", "snapshot"})


class Tx:
    """One transaction over the state table."""

    def __init__(self, conn: AsyncConnection[dict[str, object]]) -> None:
        self._conn = conn
        self._touched: set[str] = set()

    async def get(self, cls: type[R], record_id: str) -> R | None:
        cur = await self._conn.execute(
            "SELECT data FROM lp_resources WHERE kind = %s AND id = %s", (cls.kind, record_id)
        )
        row = await cur.fetchone()
        return None if row is None else cls.model_validate(row["data"])

    async def list(self, cls: type[R], project_id: str | None = None) -> list[R]:
        if project_id is None:
            cur = await self._conn.execute(
                "SELECT data FROM lp_resources WHERE kind = %s ORDER BY seq", (cls.kind,)
            )
        else:
            cur = await self._conn.execute(
                "SELECT data FROM lp_resources WHERE project_id = %s AND kind = %s ORDER BY seq",
                (project_id, cls.kind),
            )
        return [cls.model_validate(row["data"]) async for row in cur]

    async def list_in(self, cls: type[R], project_ids: Sequence[str]) -> builtins.list[R]:
        cur = await self._conn.execute(
            "SELECT data FROM lp_resources WHERE project_id = ANY(%s) AND kind = %s ORDER BY seq",
            (list(project_ids), cls.kind),
        )
        return [cls.model_validate(row["data"]) async for row in cur]

    async def list_since(
        self, cls: type[R], project_ids: Sequence[str], since: datetime
    ) -> builtins.list[R]:
        """The projects' records created at or after `since` (hourly usage buckets)."""
        cur = await self._conn.execute(
            """SELECT data FROM lp_resources
               WHERE project_id = ANY(%s) AND kind = %s AND created_at >= %s
               ORDER BY created_at""",
            (list(project_ids), cls.kind, since),
        )
        return [cls.model_validate(row["data"]) async for row in cur]

    async def latest(
        self, cls: type[R], project_ids: Sequence[str] | None, *, before: datetime | None = None
    ) -> builtins.list[R]:
        """Each project's newest record (created before `before`), for every project when
        `project_ids` is None."""
        cur = await self._conn.execute(
            """SELECT DISTINCT ON (project_id) data FROM lp_resources
               WHERE kind = %(kind)s
                 AND (%(all)s OR project_id = ANY(%(ids)s))
                 AND (%(before)s::timestamptz IS NULL OR created_at < %(before)s)
               ORDER BY project_id, created_at DESC""",
            {
                "kind": cls.kind,
                "all": project_ids is None,
                "ids": list(project_ids or []),
                "before": before,
            },
        )
        return [cls.model_validate(row["data"]) async for row in cur]

    async def put(self, *records: Record) -> None:
        for record in records:
            if record.kind in _METERED_KINDS:
                self._touched.add(record.project_id)
            await self._conn.execute(
                """INSERT INTO lp_resources (kind, id, project_id, data, created_at)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (kind, id) DO UPDATE SET data = EXCLUDED.data""",
                (
                    record.kind,
                    record.id,
                    record.project_id,
                    Jsonb(record.model_dump(mode="json")),
                    record.created_at,
                ),
            )

    async def delete(self, *records: Record) -> None:
        for record in records:
            if record.kind in _METERED_KINDS:
                self._touched.add(record.project_id)
            await self._conn.execute(
                "DELETE FROM lp_resources WHERE kind = %s AND id = %s", (record.kind, record.id)
            )

    async def delete_project(self, project_id: str) -> None:
        self._touched.add(project_id)
        await self._conn.execute("DELETE FROM lp_resources WHERE project_id = %s", (project_id,))

    async def ids(self, cls: type[R], ids: Sequence[str]) -> builtins.list[R]:
        """The records of `cls` with these ids (those that exist)."""
        cur = await self._conn.execute(
            "SELECT data FROM lp_resources WHERE kind = %s AND id = ANY(%s) ORDER BY seq",
            (cls.kind, list(ids)),
        )
        return [cls.model_validate(row["data"]) async for row in cur]

    async def changed_since(self, since: int | None) -> tuple[set[str], int]:
        """The projects whose metered records changed in a transaction that had not
        committed, or had not begun, when the watermark `since` was taken; and the new
        watermark. A transaction still running now has an id at or above the new one, so it
        is seen by the next call, whatever order transactions commit in."""
        cur = await self._conn.execute(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin"
        )
        row = await cur.fetchone()
        watermark = int(row["xmin"]) if row else 0  # type: ignore[call-overload]
        if since is None:
            return set(), watermark
        cur = await self._conn.execute(
            "SELECT project_id FROM lp_changes WHERE xid >= %s::text::xid8", (str(since),)
        )
        return {str(r["project_id"]) async for r in cur}, watermark

    async def expired(self, cls: type[R], current: datetime) -> builtins.list[R]:
        """The records of `cls` whose `expires_at` is at or before `current` (read through a
        partial index on the few that expire, whatever the number of records)."""
        cur = await self._conn.execute(
            """SELECT data FROM lp_resources
               WHERE kind = %s AND data->>'expires_at' IS NOT NULL
                 AND (data->>'expires_at')::timestamptz <= %s
               ORDER BY seq""",
            (cls.kind, current),
        )
        return [cls.model_validate(row["data"]) async for row in cur]

    async def active_projects(self) -> set[str]:
        """Projects with an endpoint running (read through a partial index)."""
        cur = await self._conn.execute(
            """SELECT DISTINCT project_id FROM lp_resources
               WHERE kind = 'endpoint' AND data->>'current_state' = 'active'"""
        )
        return {str(r["project_id"]) async for r in cur}

    async def blocked_projects(self) -> set[str]:
        """Projects over a compute quota (read through a partial index)."""
        cur = await self._conn.execute(
            """SELECT project_id FROM lp_resources
               WHERE kind = 'project' AND data->>'quota_exceeded' IS NOT NULL"""
        )
        return {str(r["project_id"]) async for r in cur}

    async def projects_of_databases(self, physical: Sequence[str]) -> dict[str, str]:
        """The project of each of these physical databases (those the store knows)."""
        cur = await self._conn.execute(
            """SELECT project_id, data->>'physical' AS physical FROM lp_resources
               WHERE kind = 'database' AND data->>'physical' = ANY(%s)""",
            (list(physical),),
        )
        return {str(r["physical"]): str(r["project_id"]) async for r in cur}

    async def forget_changes(self, project_ids: Sequence[str]) -> None:
        """Drops the change marks of projects that are gone."""
        await self._conn.execute(
            "DELETE FROM lp_changes WHERE project_id = ANY(%s)", (list(project_ids),)
        )

    async def record_changes(self) -> None:
        """Marks the projects this transaction changed (at its end: the marks' row locks are
        the last it takes, in id order, so two transactions never wait on each other's)."""
        if not self._touched:
            return
        await self._conn.execute(
            """INSERT INTO lp_changes (project_id, xid)
               SELECT id, pg_current_xact_id() FROM unnest(%s::text[]) AS id
               ON CONFLICT (project_id) DO UPDATE SET xid = EXCLUDED.xid""",
            (sorted(self._touched),),
        )
        self._touched.clear()

    async def lock(self, project_id: str) -> None:
        """Serializes the rest of the transaction against other mutations of the project."""
        await self._conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (project_id,)
        )

    async def running_operations(self, project_id: str) -> int:
        cur = await self._conn.execute(
            """SELECT count(*) AS n FROM lp_resources
               WHERE project_id = %s AND kind = 'operation'
                 AND data->>'status' IN ('scheduling', 'running', 'failed')""",
            (project_id,),
        )
        row = await cur.fetchone()
        return int(row["n"]) if row else 0  # type: ignore[call-overload]


class Store:
    """Owns the pool of connections to the state database."""

    def __init__(
        self, pool: AsyncConnectionPool[AsyncConnection[dict[str, object]]], conninfo: str = ""
    ) -> None:
        self._pool = pool
        self._conninfo = conninfo
        self._runner: int | None = None
        self._runner_conn: AsyncConnection[dict[str, object]] | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, conninfo: str) -> AsyncIterator[Store]:
        async with AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=10,
            open=False,
            kwargs={"row_factory": dict_row},
            connection_class=AsyncConnection[dict[str, object]],
            # After PostgreSQL restarted every pooled connection is dead: each is checked
            # before use, or a resumed job would fail once per stale connection.
            check=AsyncConnectionPool.check_connection,
        ) as pool:
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_advisory_xact_lock(7710001)")
                await conn.execute(_SCHEMA)
            yield cls(pool, conninfo)

    @asynccontextmanager
    async def hold_runner_lock(self, runner_id: int) -> AsyncIterator[None]:
        """Holds the advisory lock that tells other processes this runner is alive."""
        self._runner = runner_id
        await self.keep_runner_lock()
        try:
            yield
        finally:
            if self._runner_conn is not None and not self._runner_conn.closed:
                # Gone with its connection when the server restarted: nothing to release.
                with contextlib.suppress(psycopg.Error):
                    await self._runner_conn.close()
            self._runner_conn, self._runner = None, None

    async def keep_runner_lock(self) -> None:
        """Takes the runner lock again on a new connection if the one holding it broke (the
        server restarted): else another process would take this runner's jobs as orphans."""
        if self._runner is None:
            return
        conn = self._runner_conn
        if conn is not None and not conn.broken and not conn.closed:
            return
        conn = await AsyncConnection.connect(self._conninfo, autocommit=True, row_factory=dict_row)
        await conn.execute("SELECT pg_advisory_lock(%s, %s)", (_RUNNER_LOCK, self._runner))
        self._runner_conn = conn

    async def runner_alive(self, runner_id: int) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s) AS free", (_RUNNER_LOCK, runner_id)
            )
            row = await cur.fetchone()
            if row and row["free"]:
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_RUNNER_LOCK, runner_id))
                return False
            return True

    @asynccontextmanager
    async def tx(self, lock_project: str | None = None) -> AsyncIterator[Tx]:
        """A transaction; with `lock_project`, serialized against other mutations of it."""
        async with self._pool.connection() as conn, conn.transaction():
            if lock_project is not None:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock_project,)
                )
            tx = Tx(conn)
            yield tx
            await tx.record_changes()
