"""Errors of the local control plane, answered in Neon's shape: `{code, message, request_id}`.

LocalPlaneError(status, code, message)
 ├── BadRequest        400  the request names something impossible or invalid
 ├── QuotaExceeded     403  the project is over a quota, so its computes cannot start
 ├── NotFound          404  an unknown project, branch, endpoint, role, database, snapshot...
 ├── NotAcceptable     406  a consumption range outside what its granularity allows
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


class QuotaExceeded(LocalPlaneError):
    """403: the project is over a quota, so its computes cannot start."""

    status = 403
    code = "QUOTA_EXCEEDED"


class NotAcceptable(LocalPlaneError):
    """406: a consumption range outside what its granularity allows."""

    status = 406
    code = "NOT_ACCEPTABLE"


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
