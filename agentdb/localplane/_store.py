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
"""


class Tx:
    """One transaction over the state table."""

    def __init__(self, conn: AsyncConnection[dict[str, object]]) -> None:
        self._conn = conn

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
            await self._conn.execute(
                "DELETE FROM lp_resources WHERE kind = %s AND id = %s", (record.kind, record.id)
            )

    async def delete_project(self, project_id: str) -> None:
        await self._conn.execute("DELETE FROM lp_resources WHERE project_id = %s", (project_id,))

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
            yield Tx(conn)
