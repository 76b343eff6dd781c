"""Every error the REST API answers is RFC 9457 problem+json: `type`, `title`, `status`,
`detail`, plus `errors` (one `{field, message}` per bad value) and the request id. Domain errors
of the services map to statuses here, in one table; nothing a caller sends yields a 500."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_502_BAD_GATEWAY,
)

from agentdb.services import (
    AlreadyExists,
    Conflict,
    ControlPlaneFailed,
    InvalidInput,
    LimitExceeded,
    NotFound,
    QuotaExceeded,
    SecretDecryptionFailed,
    ServiceError,
    SessionBusy,
    SqlFailed,
)

log = structlog.get_logger("agentdb.api")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://agentdb.dev/problems/"
AnyRequest = Request[Any, Any, Any]

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class Unauthorized(HTTPException):
    status_code = HTTP_401_UNAUTHORIZED


class Forbidden(HTTPException):
    status_code = HTTP_403_FORBIDDEN


class TooManyRequests(HTTPException):
    status_code = HTTP_429_TOO_MANY_REQUESTS


class BadRequest(HTTPException):
    """A request-level mistake outside the body (a header, a query parameter)."""

    status_code = HTTP_400_BAD_REQUEST

    def __init__(self, field: str, message: str) -> None:
        super().__init__(detail=f"{field}: {message}")
        self.field = field
        self.message = message


class ApiRequest(Request[Any, Any, Any]):
    """The API's requests: a JSON body nested deeper than the decoder follows is a 400 naming
    the body, not a RecursionError."""

    async def json(self) -> Any:  # noqa: ANN401 - any JSON document
        try:
            return await super().json()
        except RecursionError:
            raise BadRequest("body", "the JSON nests too deeply") from None


def request_id(request: AnyRequest) -> str:
    state = request.scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        rid = state["request_id"] = uuid.uuid4().hex
    return str(rid)


def problem(
    request: AnyRequest,
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: str | int | None,
) -> Response[dict[str, Any]]:
    title = _TITLES.get(status, "Error")
    body: dict[str, Any] = {
        "type": TYPE_BASE + (kind or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": request_id(request),
    }
    if errors:
        body["errors"] = errors
    body.update(extra)
    return Response(
        body,
        status_code=status,
        media_type=PROBLEM_JSON,
        headers={"X-Request-ID": body["request_id"], **(headers or {})},
    )


def _validation(request: AnyRequest, exc: ValidationException) -> Response[dict[str, Any]]:
    if str(exc.detail).startswith("JSON is malformed"):
        return problem(request, 400, f"the body is not valid JSON ({exc.detail})", kind="bad-json")
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        key = str(item.get("key") or "body")
        message = str(item.get("message", "invalid"))
        if key == "data":  # Litestar's name for a missing body
            key, message = "body", "a JSON object is required"
        errors.append({"field": key, "message": message})
    if not errors:
        errors = [{"field": "body", "message": "must be a JSON object"}]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(request, 400, detail, kind="invalid-request", errors=errors)


def _service_error(request: AnyRequest, exc: ServiceError) -> Response[dict[str, Any]]:  # noqa: PLR0911
    if isinstance(exc, InvalidInput):
        return problem(
            request,
            400,
            str(exc),
            kind="invalid-request",
            errors=[{"field": exc.field, "message": exc.message}],
        )
    if isinstance(exc, AlreadyExists):
        return problem(
            request,
            HTTP_409_CONFLICT,
            str(exc),
            kind="already-exists",
            errors=[{"field": exc.field, "message": exc.message}],
        )
    if isinstance(exc, LimitExceeded | QuotaExceeded):
        return _limit_problem(request, exc)
    if isinstance(exc, NotFound):
        return problem(request, HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, SessionBusy):
        return problem(
            request, HTTP_409_CONFLICT, str(exc), kind="session-busy", headers={"Retry-After": "1"}
        )
    if isinstance(exc, Conflict):
        return problem(request, HTTP_409_CONFLICT, str(exc))
    if isinstance(exc, SqlFailed):
        return problem(
            request,
            HTTP_422_UNPROCESSABLE_ENTITY,
            str(exc),
            kind="sql-failed",
            sqlstate=exc.sqlstate,
            position=exc.position,
            hint=exc.hint,
        )
    if isinstance(exc, ControlPlaneFailed):
        return problem(request, HTTP_502_BAD_GATEWAY, str(exc), kind="control-plane-failed")
    if isinstance(exc, SecretDecryptionFailed):
        log.error("api.secret_decryption_failed", path=request.url.path)
        return problem(
            request, HTTP_500_INTERNAL_SERVER_ERROR, "a stored secret cannot be read (server key)"
        )
    log.error("api.unmapped_service_error", error_type=type(exc).__name__, exc_info=exc)
    return problem(request, HTTP_500_INTERNAL_SERVER_ERROR, "internal error")


def _limit_problem(
    request: AnyRequest, exc: LimitExceeded | QuotaExceeded
) -> Response[dict[str, Any]]:
    if isinstance(exc, LimitExceeded):
        # 409 like every Conflict: the request is fine, the user's current state refuses it.
        return problem(
            request,
            HTTP_409_CONFLICT,
            str(exc),
            kind="limit-exceeded",
            limit=exc.limit,
            allowed=exc.allowed,
        )
    # 403: understood, and refused for this session until the quota is raised or the billing
    # period ends; retrying does not help.
    return problem(
        request,
        HTTP_403_FORBIDDEN,
        str(exc),
        kind="quota-exceeded",
        quota=exc.metric,
        used=exc.used,
        limit=exc.limit,
    )


def _http_error(request: AnyRequest, exc: HTTPException) -> Response[dict[str, Any]]:
    if isinstance(exc, BadRequest):
        return problem(
            request,
            400,
            str(exc.detail),
            kind="invalid-request",
            errors=[{"field": exc.field, "message": exc.message}],
        )
    headers = dict(exc.headers or {})
    if exc.status_code == HTTP_401_UNAUTHORIZED:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="agentdb"')
    detail = str(exc.detail) if exc.detail else _TITLES.get(exc.status_code, "Error")
    if isinstance(exc, TooManyRequests) and "Retry-After" in headers:
        retry_after = int(headers["Retry-After"])
        return problem(request, 429, detail, headers=headers, retry_after=retry_after)
    return problem(request, exc.status_code, detail, headers=headers)


def _unexpected(request: AnyRequest, exc: Exception) -> Response[dict[str, Any]]:
    log.error(
        "api.unexpected_error", path=request.url.path, error_type=type(exc).__name__, exc_info=exc
    )
    return problem(request, HTTP_500_INTERNAL_SERVER_ERROR, "internal error")


def _dispatch(request: AnyRequest, exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, ValidationException):
        return _validation(request, exc)
    if isinstance(exc, ServiceError):
        return _service_error(request, exc)
    if isinstance(exc, HTTPException):
        return _http_error(request, exc)
    return _unexpected(request, exc)


EXCEPTION_HANDLERS = {Exception: _dispatch}

__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_JSON",
    "ApiRequest",
    "BadRequest",
    "Forbidden",
    "TooManyRequests",
    "Unauthorized",
    "problem",
    "request_id",
]
