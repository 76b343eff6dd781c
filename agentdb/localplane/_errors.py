"""Errors of the local control plane, answered in Neon's shape: `{code, message, request_id}`.

LocalPlaneError(status, code, message)
 ├── BadRequest        400  the request names something impossible or invalid
 ├── NotFound          404  an unknown project, branch, endpoint, role, database, snapshot...
 ├── Conflict          409  a name already taken
 ├── Locked            423  the project has running operations (as on Neon)
 └── PreconditionFailed 412 passwords are not stored for this project
"""

from __future__ import annotations


class LocalPlaneError(Exception):
    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(LocalPlaneError):
    status = 400
    code = "BAD_REQUEST"


class NotFound(LocalPlaneError):
    status = 404
    code = "NOT_FOUND"


class Conflict(LocalPlaneError):
    status = 409
    code = "CONFLICT"


class PreconditionFailed(LocalPlaneError):
    status = 412
    code = "PRECONDITION_FAILED"


class Locked(LocalPlaneError):
    status = 423
    code = "LOCKED"

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "project already has running conflicting operations, "
            "scheduling of new ones is prohibited"
        )
