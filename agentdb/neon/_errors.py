"""Errors of the Neon client: one tree, so callers catch exactly what they can handle.

NeonError
 ├── NeonHTTPError(status, code, message, request_id)   Neon answered with a 4xx/5xx status
 │    ├── NeonBadRequest       400, 406, 412, 422  the request cannot be done as it is
 │    ├── NeonUnauthorized     401, 403            the API key is missing, wrong or not allowed
 │    ├── NeonNotFound         404                 an unknown project, branch, role, ...
 │    ├── NeonConflict         409                 e.g. a name already taken
 │    ├── NeonLocked           423                 the project has running operations (retried)
 │    ├── NeonRateLimited      429                 over Neon's rate limit (retried)
 │    └── NeonServerError      5xx                 retried for GET only; 503 always
 ├── NeonTransportError                            no HTTP answer: connection refused, timeout
 ├── NeonUnexpectedResponse                        a success answer the client cannot read
 ├── NeonOperationFailed(operation)                an operation ended in `error` or `cancelled`
 └── NeonTimeout(pending)                          operations still running at the deadline

`maybe_applied` (on every error, true only for some HTTP and transport errors) says whether a
mutation may have taken effect even though it failed (a 5xx, or a timeout after the request was
sent): look before re-creating.
Nothing here holds the API key or a password; reprs are safe to log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import Operation

_SERVER_ERROR = 500


class NeonError(Exception):
    """Base of every error the Neon client raises."""

    @property
    def maybe_applied(self) -> bool:
        """Whether a failed mutation may have taken effect anyway: look before creating again.
        Only an HTTP error (a 5xx) or a transport error (sent, no answer) may say so."""
        return False


class NeonHTTPError(NeonError):
    """Neon answered with an error status; `code`, `message` and `request_id` come from its
    `{code, message, request_id}` body (or the `X-Request-ID` the client sent)."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        request_id: str | None,
        method: str,
        path: str,
        retry_after: float | None = None,
        body: object = None,
    ) -> None:
        super().__init__(f"{method} {path} -> {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.method = method
        self.path = path
        self.retry_after = retry_after
        #: The decoded JSON body, e.g. `limits` of a 406 or `projects` of a 422 on transfer.
        self.body = body

    @property
    def maybe_applied(self) -> bool:
        """A mutation answered with a 5xx may have run anyway."""
        return self.status >= _SERVER_ERROR and self.method not in {"GET", "HEAD", "OPTIONS"}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r}, "
            f"method={self.method!r}, path={self.path!r})"
        )


class NeonBadRequest(NeonHTTPError):  # noqa: N818 - the names the issue uses
    """400, 406, 412 or 422: invalid input, plan limits, passwords not stored, not ready."""


class NeonUnauthorized(NeonHTTPError):  # noqa: N818 - the names the issue uses
    """401 or 403: the API key is missing, revoked, or may not do this."""


class NeonNotFound(NeonHTTPError):  # noqa: N818 - the names the issue uses
    """404: the project, branch, endpoint, role, database, snapshot or operation is unknown."""


class NeonConflict(NeonHTTPError):  # noqa: N818 - the names the issue uses
    """409: the request conflicts with the current state, e.g. a name already taken."""


class NeonLocked(NeonHTTPError):  # noqa: N818 - the names the issue uses
    """423: the project has running conflicting operations; retried with backoff."""


class NeonRateLimited(NeonHTTPError):  # noqa: N818 - the names the issue uses
    """429: over Neon's request rate; retried with backoff (honouring `Retry-After`)."""


class NeonServerError(NeonHTTPError):
    """5xx: retried for GET; 503 is always retried; a mutation may or may not have run."""


class NeonTransportError(NeonError):
    """No HTTP answer (connection refused or reset, timeout). `sent` tells whether the request
    may have reached Neon; a mutation that may have is not retried blindly."""

    def __init__(self, *, method: str, path: str, sent: bool, reason: str) -> None:
        super().__init__(f"{method} {path}: {reason}")
        self.method = method
        self.path = path
        self.sent = sent
        self.reason = reason

    @property
    def maybe_applied(self) -> bool:
        return self.sent and self.method not in {"GET", "HEAD", "OPTIONS"}

    def __repr__(self) -> str:
        return (
            f"NeonTransportError(method={self.method!r}, path={self.path!r}, "
            f"sent={self.sent}, reason={self.reason!r})"
        )


class NeonUnexpectedResponse(NeonError):  # noqa: N818 - the names the issue uses
    """A success answer the client cannot read: not JSON, or missing what the call needs."""


class NeonOperationFailed(NeonError):  # noqa: N818 - the names the issue uses
    """An operation ended in `error` or `cancelled`; the message is Neon's error text."""

    def __init__(self, operation: Operation) -> None:
        text = operation.error or f"operation {operation.status}"
        super().__init__(
            f"operation {operation.id} ({operation.action}) {operation.status}: {text}"
        )
        self.operation = operation
        self.message = text


class NeonTimeout(NeonError):  # noqa: N818 - the names the issue uses
    """The deadline passed while some operations were still pending."""

    def __init__(self, pending: Sequence[Operation], timeout: float) -> None:
        listed = ", ".join(f"{op.id} ({op.action}: {op.status})" for op in pending)
        super().__init__(f"operations still pending after {timeout:g} s: {listed}")
        self.pending = list(pending)
        self.timeout = timeout


_BY_STATUS: dict[int, type[NeonHTTPError]] = {
    400: NeonBadRequest,
    401: NeonUnauthorized,
    403: NeonUnauthorized,
    404: NeonNotFound,
    406: NeonBadRequest,
    409: NeonConflict,
    412: NeonBadRequest,
    422: NeonBadRequest,
    423: NeonLocked,
    429: NeonRateLimited,
}


def error_class(status: int) -> type[NeonHTTPError]:
    """The exception class for an HTTP error status."""
    if status >= _SERVER_ERROR:
        return NeonServerError
    return _BY_STATUS.get(status, NeonHTTPError)
