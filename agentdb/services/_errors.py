"""Domain errors of the services; the REST, MCP and CLI edges translate them.

ServiceError
 ├── NotFound                  an unknown (or someone else's) id
 │    ├── UserNotFound
 │    ├── SessionNotFound
 │    ├── CheckpointNotFound
 │    ├── BranchNotFound
 │    └── TokenNotFound
 ├── Conflict                  the request clashes with the current state (e.g. a deleted session)
 │    ├── AlreadyExists(field, message)   a unique value (an email) is taken
 │    └── LimitExceeded(limit, allowed)   the user's tier allows no more (sessions, ...)
 ├── InvalidInput(field, message)
 ├── SessionBusy               a workflow on the session is unfinished (a reconciler's job)
 ├── ControlPlaneFailed        Neon (or the local plane) failed; what was done is recorded
 ├── SqlFailed                 PostgreSQL refused a caller's SQL (sqlstate, message, position)
 ├── QuotaExceeded             the session used up a quota of its tier (suspended, or writes fail)
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


class BranchNotFound(NotFound):
    """No dev or preview branch with this id in this session."""

    def __init__(self, branch_id: uuid.UUID) -> None:
        super().__init__(f"no branch {branch_id}")
        self.branch_id = branch_id


class AlreadyExists(Conflict):
    """Something with this value exists already; `field` names the value (e.g. "email")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TokenNotFound(NotFound):
    def __init__(self, token_id: uuid.UUID) -> None:
        super().__init__(f"no token {token_id}")
        self.token_id = token_id


class SqlFailed(ServiceError):  # noqa: N818
    """PostgreSQL refused the caller's SQL, with what an agent needs to fix it: the SQLSTATE
    (class "08" means the database could not be reached), PostgreSQL's message, detail and
    hint, and the 1-based character position in the SQL text it points at."""

    def __init__(
        self,
        sqlstate: str | None,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        position: int | None = None,
    ) -> None:
        text = f"{sqlstate}: {message}" if sqlstate else message
        if position is not None:
            text += f" (at character {position})"
        super().__init__(text)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint
        self.position = position


class JobNotFound(NotFound):
    """No background job of this name is registered with the runner."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no job named {name!r}")
        self.name = name


class JobBusy(ServiceError):  # noqa: N818
    """Another process (sharing the meta DB) kept running the job past the wait's deadline."""

    def __init__(self, name: str) -> None:
        super().__init__(f"job {name!r} is running in another process")
        self.name = name


class LimitExceeded(Conflict):
    """The user's tier allows no more of something; `limit` names the tier's limit (e.g.
    "max_sessions_per_user") and `allowed` its value."""

    def __init__(self, limit: str, allowed: int, message: str) -> None:
        super().__init__(f"{limit}: {message}")
        self.limit = limit
        self.allowed = allowed
        self.message = message


class QuotaExceeded(ServiceError):  # noqa: N818
    """The session is over a quota of its project: `metric` names it (a Neon quota field such
    as "active_time_seconds" or "logical_size_bytes"), `used` and `limit` are in its unit.
    Over a time, written-data or transfer quota the compute is suspended until the billing
    period ends or the quota is raised; over the logical size, writes fail."""

    def __init__(self, metric: str, used: int, limit: int, message: str) -> None:
        super().__init__(f"{metric}: {message}")
        self.metric = metric
        self.used = used
        self.limit = limit
        self.message = message
