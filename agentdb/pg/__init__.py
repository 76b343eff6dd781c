"""agentdb's PostgreSQL: the embedded cluster (or an external server) and how to reach it."""

from agentdb.pg._embedded import EmbeddedPostgres
from agentdb.pg._errors import (
    DataDirError,
    NotSuperuserError,
    PortInUseError,
    PostgresError,
    PostgresStartError,
)
from agentdb.pg._server import open_server
from agentdb.pg._server_info import ServerInfo
from agentdb.pg._supervisor import PostgresSupervisor, ServerHealth, probe_server

__all__ = [
    "DataDirError",
    "EmbeddedPostgres",
    "NotSuperuserError",
    "PortInUseError",
    "PostgresError",
    "PostgresStartError",
    "PostgresSupervisor",
    "ServerHealth",
    "ServerInfo",
    "open_server",
    "probe_server",
]
