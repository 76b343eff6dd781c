"""agentdb's domain services: agent sessions and their checkpoints, over the meta DB and the
Neon client. The REST API, MCP tools and CLI call these; none of them talk to Neon directly."""

from ._common import Actor, Clock, SessionLocks, system_clock
from ._errors import (
    CheckpointNotFound,
    Conflict,
    ControlPlaneFailed,
    InvalidInput,
    NotFound,
    ServiceError,
    SessionBusy,
    SessionNotFound,
    UserNotFound,
)
from ._secrets import SecretDecryptionFailed, Secrets
from ._views import CheckpointTree, CheckpointView, SessionView
from .checkpoints import CheckpointService
from .sessions import SessionService

__all__ = [
    "Actor",
    "CheckpointNotFound",
    "CheckpointService",
    "CheckpointTree",
    "CheckpointView",
    "Clock",
    "Conflict",
    "ControlPlaneFailed",
    "InvalidInput",
    "NotFound",
    "SecretDecryptionFailed",
    "Secrets",
    "ServiceError",
    "SessionBusy",
    "SessionLocks",
    "SessionNotFound",
    "SessionService",
    "SessionView",
    "UserNotFound",
    "system_clock",
]
