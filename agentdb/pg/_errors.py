"""Errors of the PostgreSQL layer: each message is one line that says what to fix.

PostgresError                  anything this layer cannot do (also: a missing binary, a bad version)
 ├── PostgresStartError        the server could not be started or reached; `log_tail` holds the
 │    │                        last lines of the server log when there is one
 │    ├── DataDirError         the data directory is unusable (a file, not writable, not a cluster)
 │    └── PortInUseError       the configured port is taken by another program
 └── NotSuperuserError         AGENTDB_DATABASE_URL connects as a role without SUPERUSER
"""

from __future__ import annotations


class PostgresError(Exception):
    """Base of every error raised by `agentdb.pg`."""


class PostgresStartError(PostgresError):
    """The server could not be started, attached to or reached."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class DataDirError(PostgresStartError):
    """The data directory cannot hold a cluster."""


class PortInUseError(PostgresStartError):
    """The configured port is already bound by another program."""

    def __init__(self, port: int) -> None:
        super().__init__(
            f"port {port} on 127.0.0.1 is in use by another program: free it, "
            "or set AGENTDB_PG_PORT to another port (unset it to pick a free one)"
        )
        self.port = port


class NotSuperuserError(PostgresError):
    """The external server's role lacks SUPERUSER, which the local control plane needs."""
