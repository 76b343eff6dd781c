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
    QuotaExceededError,
    SqlError,
)
from ._models import (
    Auth,
    AuthUser,
    Branch,
    Checkpoint,
    CheckpointTree,
    DataApi,
    Diff,
    Event,
    OAuthProvider,
    Session,
    SqlResult,
    TierChange,
    Token,
    Usage,
    User,
)

__all__ = [
    "AgentDB",
    "AgentDBError",
    "Auth",
    "AuthError",
    "AuthUser",
    "Branch",
    "Checkpoint",
    "CheckpointTree",
    "ConflictError",
    "ControlPlaneError",
    "DataApi",
    "Diff",
    "Event",
    "InvalidRequestError",
    "NotFoundError",
    "OAuthProvider",
    "QuotaExceededError",
    "Session",
    "SqlError",
    "SqlResult",
    "TierChange",
    "Token",
    "Usage",
    "User",
]
