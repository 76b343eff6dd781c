"""Physical work of the local control plane on the shared PostgreSQL cluster.

Branches, snapshots and restores are whole databases copied with `CREATE DATABASE ... TEMPLATE`
(DESIGN.md: 0.17 s at 10 MB, 1.9 s at 1 GB; O(1) with `file_copy_method = clone` on reflink
filesystems). Every step is idempotent, so a job cut off by a crash can simply run again.

**Copy strategy.** `STRATEGY FILE_COPY` asks for two cluster-wide checkpoints and fsyncs each of
a database's ~300 files in turn, so on a busy machine every copy waits for whatever every tenant
left dirty and for hundreds of wake-ups (measured: an 8 MB copy 0.1 s alone, 2.3 s beside eight
busy tenant backends). `STRATEGY WAL_LOG` copies through shared buffers and writes the pages to
the WAL instead: no checkpoint, a single flush, as fast alone and about as fast beside them; its
cost grows with the size (the whole database goes through the WAL), so sources up to
`_WAL_LOG_MAX_BYTES` use it and bigger ones FILE_COPY (or a reflink clone, O(1)). The WAL a
copy writes is flushed to the statistics the moment it ends (`pg_stat_force_next_flush`), and
the meter gives no unreported WAL to tenants while a copy runs: it is the plane's own.

**Dropping.** `DROP DATABASE` also waits for a checkpoint, which pays the fsyncs every copy
since the last one deferred (measured: 23 s for 15,000 files beside busy tenants). So a database
is dropped in two steps: closed and renamed into the trash (`lpx_...`, a catalog update: it is
gone for every client at once), then dropped by a background task, one at a time; trash left
by a crash is emptied at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
import structlog
from psycopg import AsyncConnection, errors, sql
from psycopg_pool import AsyncConnectionPool

from agentdb.pg import ServerInfo

from ._faults import KillSwitch
from ._governance import Limits, govern_roles, reap

log = structlog.get_logger(__name__)

# CREATE DATABASE ... TEMPLATE needs the template to have no sessions; a client that was already
# authenticating when connections were disallowed can still slip in, so such statements retry.
_IN_USE_RETRIES = 50
_IN_USE_PAUSE_S = 0.02
_TERMINATE_DEADLINE_S = 10.0
# Sources up to this size are copied with STRATEGY WAL_LOG (module docstring).
_WAL_LOG_MAX_BYTES = 64 * 2**20
#: Databases prepared at once when a plane starts (`_prepare_cluster`).
_PREPARE_CONCURRENCY = 4
# A snapshot reads at most this much WAL to learn that its source is unchanged (else it copies).
_WAL_INSPECT_MAX_BYTES = 64 * 2**20
# Databases renamed here wait for the background drop.
TRASH_PREFIX = "lpx_"
_TERMINATE_POLL_S = 0.002
# Filesystems whose files can share blocks; elsewhere PostgreSQL 18's `clone` falls back to
# copy_file_range(), a full copy that measured no faster than the default.
_REFLINK_FILESYSTEMS = {"btrfs", "xfs", "bcachefs", "zfs", "ocfs2", "apfs"}
# The engine's connections into a project's database: built-ins first and only, so nothing the
# tenant defined (a `public.lower(text)`, an operator) stands in for what its statements name.
#: The plane's own connections into a tenant database: built-ins first, and writable even when
#: the size or disk guard made the database read-only (its catalog DDL must still run).
_SAFE_OPTIONS = "-c search_path=pg_catalog,pg_temp -c default_transaction_read_only=off"
#: The plane's own schemas in a project database (Neon Auth's, the Data API's): never copied
#: into a schema-only branch by the tenant's role, which does not own them.
_PLANE_SCHEMAS_EXCLUDED = ("--exclude-schema=neon_auth", "--exclude-schema=auth")

# Catalog hygiene: a shared cluster shows every role every backend, every database's counters,
# every lock and prepared transaction. Per database (each copies its catalog from template1 or
# from the database it was made from), PUBLIC loses these views and the functions behind them;
# the superuser (the plane's meter and jobs) keeps them. What stays visible is listed in
# docs/SECURITY.md: database names (pg_database), role names (pg_roles), settings, and the
# tenant's own database's catalog.
_PRIVATE_VIEWS = (
    "pg_stat_activity",
    "pg_stat_database",
    "pg_stat_database_conflicts",
    "pg_stat_ssl",
    "pg_stat_gssapi",
    "pg_stat_replication",
    "pg_stat_replication_slots",
    "pg_replication_slots",
    "pg_stat_wal_receiver",
    "pg_stat_subscription",
    "pg_stat_subscription_stats",
    "pg_locks",
    "pg_prepared_xacts",
    "pg_stat_progress_analyze",
    "pg_stat_progress_basebackup",
    "pg_stat_progress_cluster",
    "pg_stat_progress_copy",
    "pg_stat_progress_create_index",
    "pg_stat_progress_vacuum",
    "pg_stat_io",
    "pg_stat_wal",
    "pg_stat_bgwriter",
    "pg_stat_checkpointer",
    "pg_stat_slru",
    "pg_stat_archiver",
)
_PRIVATE_FUNCTIONS = """
SELECT p.oid::regprocedure::text FROM pg_proc p
 WHERE p.pronamespace = 'pg_catalog'::regnamespace
   AND (p.proname IN ('pg_stat_get_activity', 'pg_stat_get_progress_info', 'pg_lock_status',
                      'pg_prepared_xact', 'pg_blocking_pids', 'pg_safe_snapshot_blocking_pids',
                      'pg_isolation_test_session_is_blocked', 'pg_stat_get_wal_receiver',
                      'pg_stat_get_wal_senders', 'pg_stat_get_subscription',
                      'pg_stat_get_subscription_stats', 'pg_get_replication_slots',
                      'pg_stat_get_replication_slot', 'pg_stat_get_io', 'pg_stat_get_wal',
                      'pg_stat_get_archiver', 'pg_stat_get_slru', 'pg_tablespace_size')
        OR p.proname LIKE 'pg\\_stat\\_get\\_db\\_%'
        OR p.proname LIKE 'pg\\_stat\\_get\\_backend\\_%'
        OR p.proname LIKE 'pg\\_stat\\_get\\_checkpointer\\_%'
        OR p.proname LIKE 'pg\\_stat\\_get\\_bgwriter\\_%'
        OR p.proname LIKE 'pg\\_stat\\_get\\_buf\\_%')
   AND has_function_privilege('public', p.oid, 'EXECUTE')
"""


class EngineError(Exception):
    """A physical step on the cluster failed; the message is safe to show a client."""


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _rename(old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(old), _ident(new))


class Engine:
    """Runs the DDL behind every local-plane operation, as the cluster's superuser."""

    def __init__(
        self,
        server: ServerInfo,
        pool: AsyncConnectionPool[AsyncConnection],
        kill: KillSwitch | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.server = server
        self._pool = pool
        #: Called with a database's name before it is closed to clients and its sessions are
        #: ended, and once that is done (the connection proxy lets pooled transactions finish
        #: first, and holds new ones until the database opens again).
        self.before_block: Callable[[str], Awaitable[None]] | None = None
        self.after_block: Callable[[str], None] | None = None
        self.clone_supported = False
        #: Whether pg_walinspect can tell that a database is unchanged since it was made
        #: (`unchanged_since`): then a snapshot of it is not copied.
        self.walinspect = False
        # Named kill points for crash tests; unarmed, each is a no-op.
        self.kill = kill or KillSwitch()
        self.limits = limits or Limits()
        #: WAL_LOG copies begun and ended (their WAL reported): while they differ, the WAL no
        #: backend has reported may be a copy's, and the meter does not give it to tenants.
        self.copies_started = 0
        self.copies_finished = 0
        self._trash_task: asyncio.Task[None] | None = None
        self._trash_again = False

    @classmethod
    @asynccontextmanager
    async def open(
        cls, server: ServerInfo, kill: KillSwitch | None = None, limits: Limits | None = None
    ) -> AsyncIterator[Engine]:
        async with AsyncConnectionPool(
            server.conninfo("postgres"),
            min_size=1,
            max_size=8,
            open=False,
            kwargs={"autocommit": True},
            # After PostgreSQL restarted every pooled connection is dead: each is checked
            # before use, or a resumed job would fail once per stale connection.
            check=AsyncConnectionPool.check_connection,
        ) as pool:
            engine = cls(server, pool, kill, limits)
            await engine._prepare_cluster()
            try:
                yield engine
            finally:
                await engine._stop_trash()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[AsyncConnection]:
        async with self._pool.connection() as conn:
            yield conn

    @asynccontextmanager
    async def _inside(self, physical: str) -> AsyncIterator[AsyncConnection]:
        """A superuser connection into one database, for catalog DDL that runs no user code
        (ALTER SCHEMA ... OWNER, REVOKE on pg_catalog); never for DML or the tenant's objects."""
        async with await AsyncConnection.connect(
            self.server.conninfo(physical), autocommit=True, options=_SAFE_OPTIONS
        ) as conn:
            yield conn

    async def hide_other_tenants(self, physical: str) -> None:
        """Revokes from PUBLIC, in `physical`, the statistics views and functions that show
        other databases' backends, counters, locks and prepared transactions (idempotent)."""
        async with self._inside(physical) as conn:
            cur = await conn.execute(
                "SELECT c.oid::regclass::text FROM pg_class c"
                " WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relname = ANY(%s)"
                " AND has_table_privilege('public', c.oid, 'SELECT')",
                (list(_PRIVATE_VIEWS),),
            )
            views = [str(row[0]) for row in await cur.fetchall()]
            cur = await conn.execute(_PRIVATE_FUNCTIONS)
            functions = [str(row[0]) for row in await cur.fetchall()]
            if not views and not functions:
                return
            async with conn.transaction():
                for view in views:
                    await conn.execute(
                        sql.SQL("REVOKE SELECT ON pg_catalog.{} FROM PUBLIC").format(
                            _ident(view.removeprefix("pg_catalog."))
                        )
                    )
                for function in functions:
                    # regprocedure's text is a qualified signature PostgreSQL itself printed.
                    await conn.execute(
                        sql.SQL("REVOKE EXECUTE ON FUNCTION pg_catalog.{} FROM PUBLIC").format(
                            sql.SQL(function.removeprefix("pg_catalog."))
                        )
                    )

    async def _exists(self, physical: str) -> bool:
        async with self._conn() as conn:
            cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (physical,))
            return await cur.fetchone() is not None

    async def _prepare_cluster(self) -> None:
        async with self._conn() as conn:
            # Every database is closed to PUBLIC; projects get CONNECT through their group role.
            for name in ("postgres", "template1"):
                await conn.execute(
                    sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(_ident(name))
                )
            cur = await conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname"
            )
            databases = [str(row[0]) for row in await cur.fetchall()]
        # New databases copy template1's catalog; the ones made before get the same here, a
        # few at a time (a cluster of many sessions has many databases). One dropped meanwhile
        # (a project deleted by the plane's jobs of another process) needs nothing.
        gate = asyncio.Semaphore(_PREPARE_CONCURRENCY)

        async def hide(name: str) -> None:
            async with gate:
                try:
                    await self.hide_other_tenants(name)
                except psycopg.OperationalError as error:
                    if await self._exists(name):
                        raise
                    log.info("localplane.database_gone", database=name, error=type(error).__name__)

        async with asyncio.TaskGroup() as group:
            for name in databases:
                group.create_task(hide(name))
        filesystem, self.clone_supported = await self._probe_clone()
        async with self._conn() as conn:
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
                self.walinspect = True
            except psycopg.Error as error:  # a server without it: every snapshot is a copy
                log.info("localplane.walinspect_unavailable", error=type(error).__name__)
        # What an operator needs to know about checkpoint cost, at every start.
        log.info(
            "localplane.cluster_ready",
            clone=self.clone_supported,
            filesystem=filesystem or "unknown",
            copy_method="clone (reflink): O(1) checkpoints"
            if self.clone_supported
            else "WAL_LOG up to 64 MiB, FILE_COPY above: each checkpoint copies the database; "
            "a data directory on XFS (reflink=1) or Btrfs makes them O(1)",
        )

    async def _probe_clone(self) -> tuple[str | None, bool]:
        """The data directory's filesystem (where it is local), and whether
        `file_copy_method = clone` makes copies O(1) there: the filesystem must support
        reflinks and the cluster accept the setting."""
        async with self._conn() as conn:
            cur = await conn.execute("SELECT current_setting('data_directory')")
            row = await cur.fetchone()
            filesystem = await asyncio.to_thread(_filesystem_of, str(row[0]) if row else "")
            if filesystem not in _REFLINK_FILESYSTEMS:
                return filesystem, False
            probe = "lp_clone_probe"
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(_ident(probe)))
            try:
                await conn.execute("SET file_copy_method = clone")
                await conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE template0 STRATEGY FILE_COPY").format(
                        _ident(probe)
                    )
                )
            except psycopg.Error:
                return filesystem, False
            finally:
                await conn.execute("RESET file_copy_method")
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(_ident(probe)))
            return filesystem, True

    # --- roles ---------------------------------------------------------------------------

    async def ensure_group_role(self, group: str) -> None:
        async with self._conn() as conn:
            if not await self._role_exists(conn, group):
                await conn.execute(
                    sql.SQL(
                        "CREATE ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT"
                    ).format(_ident(group))
                )

    async def ensure_role(
        self, physical: str, password: str | None, group: str, *, login: bool = True
    ) -> None:
        async with self._conn() as conn:
            if not await self._role_exists(conn, physical):
                await conn.execute(
                    sql.SQL(
                        "CREATE ROLE {} {} NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT "
                        "CONNECTION LIMIT {} PASSWORD {} IN ROLE {}"
                    ).format(
                        _ident(physical),
                        sql.SQL("LOGIN" if login else "NOLOGIN"),
                        sql.Literal(self.limits.role_connections),
                        sql.Literal(password),
                        _ident(group),
                    )
                )
            # Also when the role exists: a crash may have come between CREATE and the limits.
            await govern_roles(conn, self.limits, [physical])

    async def govern_roles(self, only: list[str] | None = None) -> list[str]:
        """Gives tenant login roles (all, or `only`) their connection limit and role defaults."""
        async with self._conn() as conn:
            return await govern_roles(conn, self.limits, only)

    async def reap(self) -> list[tuple[int, str]]:
        """Cancels or ends tenant backends past the statement or idle-in-transaction limit."""
        async with self._conn() as conn:
            return await reap(conn, self.limits)

    async def set_password(self, physical: str, password: str) -> None:
        async with self._conn() as conn:
            await conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(_ident(physical), sql.Literal(password))
            )
            # Neon drops connections when a password is reset.
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (physical,),
            )

    async def drop_roles(self, *physicals: str) -> None:
        async with self._conn() as conn:
            for physical in physicals:
                if await self._role_exists(conn, physical):
                    await conn.execute(
                        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                        " WHERE usename = %s",
                        (physical,),
                    )
                    await conn.execute(sql.SQL("DROP ROLE {}").format(_ident(physical)))

    @staticmethod
    async def _role_exists(conn: AsyncConnection, name: str) -> bool:
        cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        return await cur.fetchone() is not None

    # --- databases -----------------------------------------------------------------------

    async def exists(self, name: str) -> bool:
        async with self._conn() as conn:
            return await self._db_exists(conn, name)

    @staticmethod
    async def _db_exists(conn: AsyncConnection, name: str) -> bool:
        cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return await cur.fetchone() is not None

    async def create_database(self, physical: str, owner: str, group: str) -> str | None:
        """An empty database whose `public` schema belongs to the project's role. Returns the
        WAL position from which its content is that of any database made so (for
        `unchanged_since`), or None if it existed already (made by a run a crash cut short,
        and maybe used since)."""
        async with self._conn() as conn:
            made = not await self._db_exists(conn, physical)
            if made:
                await self._create_from_template(conn, physical, "template1")
                self.kill.point("create.made")
            # Open to superusers only while it is set up (see `_create_from_template`): nothing
            # but the plane can write before `empty_since`. Also when a run a crash cut short
            # made it: that run may have died before opening it, and setting up needs a way in.
            await conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(_ident(physical))
            )
            await self._set_allow(conn, physical, allowed=True)
        # The database itself stays owned by the superuser, so an agent's role cannot GRANT
        # CONNECT on it to PUBLIC; inside it the role owns `public` and everything it creates.
        async with self._inside(physical) as conn:
            await conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(_ident(owner)))
        await self.hide_other_tenants(physical)
        empty_since = await self.insert_lsn() if made else None
        async with self._conn() as conn:
            await self._grant(conn, physical, group)
        return empty_since

    async def unchanged_since(self, physical: str, since: str, upto: str) -> bool:
        """Whether no WAL record between `since` and `upto` touched a block of `physical`:
        then every transaction committed by `upto` left it as it was at `since`. Every change
        to a database's content (rows, catalog, sequences, large objects) writes a WAL record
        naming one of its blocks; what writes none (hint bits, statistics) changes no
        content. False when it cannot tell: no pg_walinspect, WAL already recycled, or more
        than `_WAL_INSPECT_MAX_BYTES` to read."""
        if not self.walinspect:
            return False
        async with self._conn() as conn:
            try:
                cur = await conn.execute(
                    """SELECT d.oid IS NOT NULL AND %(upto)s::pg_lsn >= %(since)s::pg_lsn
                              AND %(upto)s::pg_lsn - %(since)s::pg_lsn <= %(most)s
                              AND NOT EXISTS (
                                  SELECT 1 FROM pg_get_wal_block_info(
                                      %(since)s::pg_lsn, %(upto)s::pg_lsn, false) w
                                  WHERE w.reldatabase = d.oid)
                       FROM (SELECT (SELECT oid FROM pg_database WHERE datname = %(name)s)
                             AS oid) d""",
                    {
                        "since": since,
                        "upto": upto,
                        "most": _WAL_INSPECT_MAX_BYTES,
                        "name": physical,
                    },
                )
            except psycopg.Error as error:
                log.info("localplane.walinspect_failed", error=type(error).__name__)
                return False
            row = await cur.fetchone()
            return bool(row and row[0])

    async def copy_database(
        self,
        source: str,
        target: str,
        group: str,
        *,
        source_is_live: bool,
        allow_connections: bool = True,
        source_open: bool | None = None,
    ) -> None:
        """`target` becomes a copy of `source`. A live source is closed to clients for the copy
        and then left open when it was open before or `source_open` says it should be: a copy
        resumed after a crash finds the source closed by the run that died, and reopens it."""
        async with self._conn() as conn:
            if await self._db_exists(conn, target):
                await self._grant(conn, target, group, allow_connections=allow_connections)
                if source_is_live and source_open and await self._db_exists(conn, source):
                    await self._set_allow(conn, source, allowed=True)
            else:
                await self._copy(
                    conn,
                    source,
                    target,
                    group,
                    source_is_live=source_is_live,
                    allow_connections=allow_connections,
                    source_open=source_open,
                )
        if allow_connections:
            # A copy of a database made before catalog hygiene existed (an old snapshot).
            await self.hide_other_tenants(target)

    async def _copy(
        self,
        conn: AsyncConnection,
        source: str,
        target: str,
        group: str,
        *,
        source_is_live: bool,
        allow_connections: bool,
        source_open: bool | None,
    ) -> None:
        """`target` made from `source`; a live source is closed to clients meanwhile."""
        reopen = False
        if source_is_live:
            reopen = bool(source_open) or await self._allows_connections(conn, source)
            await self._block(conn, source)
            self.kill.point("copy.source_closed")
        try:
            await self._create_from_template(conn, target, source)
            self.kill.point("copy.created")
        finally:
            if reopen:
                await self._set_allow(conn, source, allowed=True)
        await self._grant(conn, target, group, allow_connections=allow_connections)

    async def swap(
        self, live: str, replacement: str, parked: str, *, allow_connections: bool
    ) -> float:
        """Puts `replacement` under the name `live`; the old `live` becomes `parked`.

        Clients keep their connection string (the database name does not change). Returns the
        seconds during which `live` refused connections.
        """
        async with self._conn() as conn:
            started = time.perf_counter()
            has_live = await self._db_exists(conn, live)
            try:
                if await self._db_exists(conn, replacement):
                    if has_live:
                        await self._block(conn, live)
                        self.kill.point("swap.live_closed")
                    await self._rename_pair(conn, live, replacement, parked, has_live=has_live)
                    self.kill.point("swap.renamed")
            except BaseException:
                # Whatever the failure, `live` keeps the door it had: the old content, reachable.
                if has_live and await self._db_exists(conn, live):
                    await self._set_allow(conn, live, allowed=allow_connections)
                raise
            await self._set_allow(conn, live, allowed=allow_connections)
            elapsed = time.perf_counter() - started
        if allow_connections:
            await self.hide_other_tenants(live)
        return elapsed

    async def _rename_pair(
        self, conn: AsyncConnection, live: str, replacement: str, parked: str, *, has_live: bool
    ) -> None:
        # Both renames in one transaction: no client ever sees `live` missing, and a crash
        # leaves either both names as they were or both swapped.
        for attempt in range(_IN_USE_RETRIES):
            try:
                async with conn.transaction():
                    if has_live:
                        await conn.execute(_rename(live, parked))
                    await conn.execute(_rename(replacement, live))
            except errors.ObjectInUse:
                if attempt == _IN_USE_RETRIES - 1:
                    raise
                await self._block(conn, live)
            else:
                return

    async def drop_database(self, physical: str) -> None:
        """Drops `physical` now (waiting for the checkpoint DROP DATABASE asks for): for
        background work, and before the roles owning objects in it are dropped."""
        async with self._conn() as conn:
            await conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(_ident(physical))
            )

    async def discard_database(self, physical: str) -> None:
        """Closes `physical`, ends its sessions and moves it to the trash, which a background
        task empties (module docstring): the name is gone when this returns, the files soon
        after. Roles owning objects in it can be dropped once `drain_trash` returns."""
        async with self._conn() as conn:
            if not await self._db_exists(conn, physical):
                return
            await self._block(conn, physical)
            trash = f"{TRASH_PREFIX}{secrets.token_hex(12)}"
            for attempt in range(_IN_USE_RETRIES):
                try:
                    await conn.execute(_rename(physical, trash))
                    break
                except errors.ObjectInUse:
                    # A client that was already authenticating slipped in: end it again.
                    if attempt == _IN_USE_RETRIES - 1:
                        raise
                    await self._block(conn, physical)
        self.empty_trash_soon()

    def empty_trash_soon(self) -> None:
        """Starts the background drop of the trash, or has the running one look again."""
        if self._trash_task is not None and not self._trash_task.done():
            self._trash_again = True
            return
        self._trash_task = asyncio.create_task(self._empty_trash_loop())

    async def _empty_trash_loop(self) -> None:
        while True:
            self._trash_again = False
            try:
                await self.empty_trash()
            except psycopg.Error as error:
                # The server is down or restarting: the next drop or start tries again.
                log.warning("localplane.trash_failed", error=type(error).__name__)
                return
            if not self._trash_again:
                return

    async def empty_trash(self) -> list[str]:
        """Drops every database in the trash, one at a time; returns their names."""
        dropped = []
        for name in await self.list_databases((TRASH_PREFIX,)):
            await self.drop_database(name)
            dropped.append(name)
        return dropped

    async def drain_trash(self) -> None:
        """Waits until the trash is empty (before dropping roles, when jobs are drained). With
        the server down it gives up: the trash is emptied at the next start."""
        while self._trash_task is not None and not self._trash_task.done():
            await asyncio.wait([self._trash_task])
        try:
            await self.empty_trash()
        except psycopg.OperationalError as error:
            log.warning("localplane.trash_failed", error=type(error).__name__)

    async def _stop_trash(self) -> None:
        # What is left is emptied at the next start (`collect_orphans`).
        if self._trash_task is not None and not self._trash_task.done():
            self._trash_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trash_task

    async def set_connections(self, physical: str, *, allowed: bool) -> None:
        """Opens or closes a database to clients; closing also ends their sessions."""
        async with self._conn() as conn:
            if not await self._db_exists(conn, physical):
                return
            if not allowed:
                await self._block(conn, physical)
                return
            await self._set_allow(conn, physical, allowed=True)
        await self.hide_other_tenants(physical)

    async def closed_databases(self, prefix: str) -> list[str]:
        """Databases named `prefix...` that refuse connections (ALLOW_CONNECTIONS false)."""
        async with self._conn() as conn:
            cur = await conn.execute(
                "SELECT datname FROM pg_database"
                " WHERE NOT datallowconn AND starts_with(datname, %s) ORDER BY datname",
                (prefix,),
            )
            return [str(row[0]) for row in await cur.fetchall()]

    async def list_databases(self, prefixes: tuple[str, ...]) -> list[str]:
        async with self._conn() as conn:
            cur = await conn.execute("SELECT datname FROM pg_database ORDER BY datname")
            return [str(row[0]) for row in await cur.fetchall() if str(row[0]).startswith(prefixes)]

    async def list_roles(self, prefix: str) -> list[str]:
        async with self._conn() as conn:
            cur = await conn.execute("SELECT rolname FROM pg_roles ORDER BY rolname")
            return [str(row[0]) for row in await cur.fetchall() if str(row[0]).startswith(prefix)]

    async def role_members(self, group: str) -> list[str]:
        async with self._conn() as conn:
            cur = await conn.execute(
                "SELECT m.rolname FROM pg_auth_members a"
                " JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member"
                " WHERE g.rolname = %s",
                (group,),
            )
            return [str(row[0]) for row in await cur.fetchall()]

    async def size(self, physical: str) -> int | None:
        async with self._conn() as conn:
            cur = await conn.execute(
                "SELECT pg_database_size(datname) FROM pg_database WHERE datname = %s", (physical,)
            )
            row = await cur.fetchone()
            return int(row[0]) if row else None

    async def dump_schema(self, physical: str) -> str:
        """The schema as `pg_dump --schema-only` prints it, minus comments and session noise."""
        out = await self._run(
            "pg_dump", "--schema-only", "--no-owner", "--no-privileges", "-d", physical
        )
        lines = []
        for line in out.decode().splitlines():
            # PostgreSQL 18's pg_dump wraps output in \restrict <random key>; it differs per run.
            if line.startswith(
                ("--", "\\restrict", "\\unrestrict", "SET ", "SELECT pg_catalog.set_config")
            ):
                continue
            lines.append(line)
        text = "\n".join(lines).strip()
        return text + "\n" if text else ""

    async def copy_schema(self, source: str, target: str, owner: str, password: str) -> None:
        """`target` gets `source`'s schema, restored by the database's owner `owner` (the
        tenant's own role, logging in with `password`), never by a superuser: even a schema-only
        restore runs code of the tenant's (`CREATE INDEX` folds an immutable function called
        with constants), and it runs with the tenant's rights only. Everything restored belongs
        to `owner` and no grants are carried (a
        tenant's role may not take on another role's objects or grants). The plane's own
        `neon_auth` and `auth` schemas are left out: they are set up per branch when enabled."""
        archive = await self._run(
            "pg_dump", "--schema-only", "-Fc", *_PLANE_SCHEMAS_EXCLUDED, "-d", source
        )
        env = self.server.subprocess_env()
        env.update(PGUSER=owner, PGPASSWORD=password)
        await self._run(
            "pg_restore",
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            "-d",
            target,
            stdin=archive,
            env=env,
        )

    async def _run(
        self,
        binary: str,
        *args: str,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            str(self.server.binary(binary)),
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env or self.server.subprocess_env(),
        )
        out, err = await proc.communicate(stdin)
        if proc.returncode != 0:
            raise EngineError(f"{binary} failed: {err.decode(errors='replace').strip()[:500]}")
        return out

    # --- helpers -------------------------------------------------------------------------

    async def _grant(
        self, conn: AsyncConnection, physical: str, group: str, *, allow_connections: bool = True
    ) -> None:
        # A database's ACL is not copied from its template, so each copy is closed again here.
        await conn.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(_ident(physical))
        )
        await conn.execute(
            sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(
                _ident(physical), _ident(group)
            )
        )
        await self._set_allow(conn, physical, allowed=allow_connections)

    async def _create_from_template(self, conn: AsyncConnection, target: str, source: str) -> None:
        """`CREATE DATABASE target TEMPLATE source` with the strategy the module docstring
        explains. The copy takes no connections until `_grant` opened it to its project's
        group only: a new database's ACL lets PUBLIC connect, so until then any tenant's role
        could reach a copy of another's data."""
        cur = await conn.execute("SELECT pg_database_size(%s)", (source,))
        row = await cur.fetchone()
        small = row is not None and int(row[0]) <= _WAL_LOG_MAX_BYTES
        if small:
            statement = sql.SQL(
                "CREATE DATABASE {} TEMPLATE {} STRATEGY WAL_LOG ALLOW_CONNECTIONS false"
            ).format(_ident(target), _ident(source))
            self.copies_started += 1
            try:
                await self._retry_in_use(conn, statement, terminate=source)
            finally:
                try:
                    # Reported now, not up to a second later.
                    await conn.execute("SELECT pg_stat_force_next_flush()")
                finally:
                    self.copies_finished += 1
            return
        clone = self.clone_supported
        if clone:
            await conn.execute("SET file_copy_method = clone")
        try:
            await self._retry_in_use(
                conn,
                sql.SQL(
                    "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY ALLOW_CONNECTIONS false"
                ).format(_ident(target), _ident(source)),
                terminate=source,
            )
        finally:
            if clone:
                await conn.execute("RESET file_copy_method")

    async def _block(self, conn: AsyncConnection, physical: str) -> None:
        """Closes `physical` to new clients and ends the sessions it has."""
        if self.before_block is not None:
            await self.before_block(physical)
        try:
            await self._close_and_end(conn, physical)
        finally:
            if self.after_block is not None:
                self.after_block(physical)

    async def _close_and_end(self, conn: AsyncConnection, physical: str) -> None:
        await self._set_allow(conn, physical, allowed=False)
        # pg_terminate_backend(pid, timeout) waits in 100 ms steps; signalling and polling
        # pg_stat_activity every 2 ms keeps a restore's downtime near 10 ms (benchmark).
        deadline = time.monotonic() + _TERMINATE_DEADLINE_S
        while True:
            cur = await conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (physical,),
            )
            row = await cur.fetchone()
            if not row or row[0] == 0:
                return
            if time.monotonic() > deadline:
                raise EngineError(f"sessions of database {physical} did not end in time")
            await asyncio.sleep(_TERMINATE_POLL_S)

    @staticmethod
    async def _allows_connections(conn: AsyncConnection, physical: str) -> bool:
        cur = await conn.execute(
            "SELECT datallowconn FROM pg_database WHERE datname = %s", (physical,)
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    @staticmethod
    async def _set_allow(conn: AsyncConnection, physical: str, *, allowed: bool) -> None:
        await conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                _ident(physical), sql.Literal(allowed)
            )
        )

    async def _retry_in_use(
        self, conn: AsyncConnection, statement: sql.Composed, *, terminate: str | None = None
    ) -> None:
        for attempt in range(_IN_USE_RETRIES):
            try:
                await conn.execute(statement)
            except errors.ObjectInUse:
                if attempt == _IN_USE_RETRIES - 1:
                    raise
                if terminate is not None:
                    await conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = %s AND pid <> pg_backend_pid()",
                        (terminate,),
                    )
                await asyncio.sleep(_IN_USE_PAUSE_S)
            else:
                return

    async def insert_lsn(self) -> str:
        """The WAL insert position: every record of a transaction committed so far is before it."""
        async with self._conn() as conn:
            cur = await conn.execute("SELECT pg_current_wal_insert_lsn()::text")
            row = await cur.fetchone()
            return str(row[0]) if row else "0/0"

    async def current_lsn(self) -> str:
        async with self._conn() as conn:
            cur = await conn.execute("SELECT pg_current_wal_lsn()::text")
            row = await cur.fetchone()
            return str(row[0]) if row else "0/0"

    async def ensure_state_database(self, name: str) -> None:
        async with self._conn() as conn:
            if not await self._db_exists(conn, name):
                # Another process may create it first.
                with contextlib.suppress(errors.DuplicateDatabase):
                    await conn.execute(sql.SQL("CREATE DATABASE {}").format(_ident(name)))
            await conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(_ident(name))
            )


def _filesystem_of(path: str) -> str | None:
    """The filesystem type of the mount holding `path`, from /proc/self/mounts (Linux)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:  # noqa: PTH123
            entries = [line.split() for line in mounts]
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for fields in entries:
        if len(fields) < 3:  # noqa: PLR2004
            continue
        mount_point, fs_type = fields[1], fields[2]
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) > best[0]):
            best = (len(mount_point), fs_type)
    return best[1] if best else None
