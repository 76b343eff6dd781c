"""The embedded cluster's files on disk: layout, checks, password, remembered port, postmaster.pid.

Everything here is synchronous file work; `_embedded` calls it through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from agentdb.pg._errors import DataDirError, PostgresStartError

if TYPE_CHECKING:
    from agentdb.pg._process import RunAs

# Only loopback TCP with SCRAM: no trust lines, no unix-socket lines (sockets are disabled).
PG_HBA = """\
# Written by agentdb: loopback TCP only, SCRAM passwords for every role.
# TYPE  DATABASE  USER  ADDRESS       METHOD
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


@dataclass(frozen=True)
class Layout:
    """Paths inside the data directory given to `EmbeddedPostgres`."""

    root: Path

    @property
    def cluster(self) -> Path:
        return self.root / "cluster"

    @property
    def password_file(self) -> Path:
        return self.root / "superuser.password"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def pid_file(self) -> Path:
        return self.cluster / "postmaster.pid"


@dataclass(frozen=True)
class PidFile:
    """What a postmaster wrote about itself (see PostgreSQL's pidfile.h for the line order)."""

    pid: int
    data_dir: Path
    port: int | None
    status: str


def prepare_root(layout: Layout) -> None:
    """Create the data directory, or explain in one line why it cannot be used."""
    root = layout.root
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataDirError(
            f"{root} or one of its parents is a file, not a directory: "
            "move it away or choose another data directory (AGENTDB_DATA_DIR)"
        ) from None
    except OSError as exc:
        raise DataDirError(
            f"cannot create {root} ({exc.strerror}): "
            "fix its permissions or choose another data directory (AGENTDB_DATA_DIR)"
        ) from None
    if not root.is_dir():
        raise DataDirError(
            f"{root} is not a directory: move it away or choose another data directory "
            "(AGENTDB_DATA_DIR)"
        )
    if not os.access(root, os.W_OK | os.X_OK):
        raise DataDirError(
            f"{root} is not writable by this user: fix its permissions or choose another "
            "data directory (AGENTDB_DATA_DIR)"
        )


def is_initialized(layout: Layout, version: int) -> bool:
    """Whether the cluster directory holds a cluster of `version`; raise if it holds junk."""
    cluster = layout.cluster
    if not cluster.exists():
        return False
    if not cluster.is_dir():
        raise DataDirError(f"{cluster} is not a directory: move it away so a cluster can be made")
    pg_version = cluster / "PG_VERSION"
    if pg_version.is_file():
        found = pg_version.read_text(encoding="ascii").strip()
        if found != str(version):
            raise DataDirError(
                f"{cluster} was created by PostgreSQL {found}, this is PostgreSQL {version}: "
                "upgrade it with pg_upgrade or move it away"
            )
        if not layout.password_file.is_file():
            raise DataDirError(
                f"{layout.password_file} is missing, so the superuser cannot log in: "
                f"restore it, or move {cluster} away to create a new cluster"
            )
        return True
    if any(cluster.iterdir()):
        raise DataDirError(
            f"{cluster} is not empty and not a PostgreSQL cluster: move its contents away"
        )
    return False


def prepare_cluster_dir(layout: Layout, run_as: RunAs | None) -> None:
    """An empty 0700 cluster directory and a log file, both owned by the server's account."""
    layout.cluster.mkdir(mode=0o700, exist_ok=True)
    layout.cluster.chmod(0o700)
    if run_as is not None:
        os.chown(layout.cluster, run_as.uid, run_as.gid)
    prepare_log_file(layout, run_as)


def prepare_log_file(layout: Layout, run_as: RunAs | None) -> None:
    """pg_ctl opens the log as the server's account, which cannot create files in `root`."""
    if run_as is None:
        return
    fd = os.open(layout.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchown(fd, run_as.uid, run_as.gid)
    finally:
        os.close(fd)


def new_password() -> str:
    return secrets.token_urlsafe(32)


def write_password(layout: Layout, password: str) -> None:
    """Store the superuser password, readable only by agentdb's own user (0600)."""
    _write_private(layout.password_file, password + "\n")


def read_password(layout: Layout) -> str:
    return layout.password_file.read_text(encoding="utf-8").strip()


def write_initdb_pwfile(layout: Layout, password: str, run_as: RunAs | None) -> Path:
    """A 0600 copy of the password for `initdb --pwfile`, readable by the server's account."""
    fd, name = tempfile.mkstemp(prefix=".initdb-pw-", dir=layout.root)
    try:
        os.write(fd, password.encode() + b"\n")
        if run_as is not None:
            os.fchown(fd, run_as.uid, run_as.gid)
    finally:
        os.close(fd)
    return Path(name)


def write_pg_hba(layout: Layout, run_as: RunAs | None) -> None:
    path = layout.cluster / "pg_hba.conf"
    _write_private(path, PG_HBA)
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def read_remembered_port(layout: Layout) -> int | None:
    try:
        state = json.loads(layout.state_file.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    port = state.get("port") if isinstance(state, dict) else None
    return port if isinstance(port, int) and 0 < port < 65536 else None  # noqa: PLR2004


def remember_port(layout: Layout, port: int) -> None:
    _write_private(layout.state_file, json.dumps({"port": port}) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600, so no reader ever sees a partial or world-readable file."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    Path(name).replace(path)


def read_pid_file(layout: Layout) -> PidFile | None:
    try:
        lines = layout.pid_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    # A postmaster fills the file in steps; a partial one means it is still starting.
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None
    data_dir = Path(lines[1]) if len(lines) > 1 else layout.cluster
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None  # noqa: PLR2004
    status = lines[7].strip() if len(lines) > 7 else "starting"  # noqa: PLR2004
    return PidFile(pid=pid, data_dir=data_dir, port=port, status=status)


def is_our_postmaster(layout: Layout, pid_file: PidFile) -> bool:
    """Whether `pid_file.pid` is a live postgres serving this cluster (not a reused pid)."""
    if pid_file.data_dir.resolve() != layout.cluster.resolve():
        return False
    try:
        process = psutil.Process(pid_file.pid)
        if process.status() == psutil.STATUS_ZOMBIE or process.name() != "postgres":
            return False
        # The postmaster chdirs into its data directory, which tells it apart from another
        # cluster's postmaster that got the same pid after a reboot.
        return Path(process.cwd()).resolve() == layout.cluster.resolve()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def orphan_backends(layout: Layout) -> list[psutil.Process]:
    """Live postgres processes still running in this cluster after its postmaster died."""
    cluster = layout.cluster.resolve()
    found = []
    for process in psutil.process_iter():
        try:
            if (
                process.name() == "postgres"
                and process.status() != psutil.STATUS_ZOMBIE
                and Path(process.cwd()).resolve() == cluster
            ):
                found.append(process)
        except psutil.Error:
            continue
    return found


def clear_stale_server(layout: Layout, timeout: float = 5.0) -> list[int]:
    """Clear what a crashed postmaster left: backends (they pin shared memory), its pid file.

    Backends notice the postmaster's death within a second or so and exit by themselves; the
    ones that don't get SIGKILL, which is safe because crash recovery replays the WAL anyway.
    Returns the pids of the backends that were still there.
    """
    orphans = orphan_backends(layout)
    if orphans:
        _, alive = psutil.wait_procs(orphans, timeout=timeout)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)
        _, alive = psutil.wait_procs(alive, timeout=timeout)
        if alive:
            pids = ", ".join(str(p.pid) for p in alive)
            raise PostgresStartError(
                f"old server processes of {layout.cluster} will not exit (pids {pids}): kill them"
            )
    layout.pid_file.unlink(missing_ok=True)
    return [process.pid for process in orphans]


def port_is_free(port: int) -> bool:
    """Whether PostgreSQL could listen on 127.0.0.1:`port` (it sets SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def log_tail(layout: Layout, lines: int = 20) -> str:
    try:
        text = layout.log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def log_file_size(layout: Layout) -> int:
    try:
        return layout.log_file.stat().st_size
    except FileNotFoundError:
        return 0


def read_log_since(layout: Layout, offset: int) -> str:
    try:
        with layout.log_file.open("rb") as file:
            file.seek(offset)
            return file.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
