"""Domain errors of the services; the REST, MCP and CLI edges translate them.

ServiceError
 ├── NotFound                  an unknown (or someone else's) id
 │    ├── UserNotFound
 │    ├── SessionNotFound
 │    └── CheckpointNotFound
 ├── Conflict                  the request clashes with the current state (e.g. a deleted session)
 ├── InvalidInput(field, message)
 ├── SessionBusy               a workflow on the session is unfinished (a reconciler's job)
 ├── ControlPlaneFailed        Neon (or the local plane) failed; what was done is recorded
 └── SecretDecryptionFailed    a stored secret does not open with the configured key
"""

from __future__ import annotations

import uuid


class ServiceError(Exception):
    """Base of every error a service raises."""


class NotFound(ServiceError):  # noqa: N818 - the domain's word, like HTTP's
    """Nothing with this id (foreign ids look the same, so existence never leaks)."""


class UserNotFound(NotFound):
    def __init__(self, user_id: uuid.UUID) -> None:
        super().__init__(f"no user {user_id}")
        self.user_id = user_id


class SessionNotFound(NotFound):
    def __init__(self, session_id: uuid.UUID) -> None:
        super().__init__(f"no session {session_id}")
        self.session_id = session_id


class CheckpointNotFound(NotFound):
    def __init__(self, checkpoint_id: uuid.UUID) -> None:
        super().__init__(f"no checkpoint {checkpoint_id}")
        self.checkpoint_id = checkpoint_id


class Conflict(ServiceError):  # noqa: N818
    """The session or checkpoint is not in a state that allows this."""


class InvalidInput(ServiceError):  # noqa: N818
    """A caller's value is not acceptable; `field` names it, `message` says what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SessionBusy(ServiceError):  # noqa: N818
    """Another workflow left the session mid-way (provisioning, restoring, ...)."""

    def __init__(self, session_id: uuid.UUID, status: str) -> None:
        super().__init__(f"session {session_id} is {status}")
        self.session_id = session_id
        self.status = status


class ControlPlaneFailed(ServiceError):  # noqa: N818
    """The control plane refused or failed a call; the meta DB records the outcome."""
