"""agentdb's async Python SDK: one client, embedded (`AgentDB.local()`) or remote
(`AgentDB.connect(url, token)`), with the same methods and the same typed results and errors."""

from ._client import AgentDB
from ._errors import (
    AgentDBError,
    AuthError,
    ConflictError,
    ControlPlaneError,
    InvalidRequestError,
    NotFoundError,
    SqlError,
)
from ._models import (
    Branch,
    Checkpoint,
    CheckpointTree,
    Diff,
    Event,
    Session,
    SqlResult,
    Token,
    User,
)

__all__ = [
    "AgentDB",
    "AgentDBError",
    "AuthError",
    "Branch",
    "Checkpoint",
    "CheckpointTree",
    "ConflictError",
    "ControlPlaneError",
    "Diff",
    "Event",
    "InvalidRequestError",
    "NotFoundError",
    "Session",
    "SqlError",
    "SqlResult",
    "Token",
    "User",
]
