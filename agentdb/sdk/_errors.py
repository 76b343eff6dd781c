"""The REST API's problem+json answers as exceptions, by status. Embedded and remote clients
raise the same ones, since both go through the same API."""

from __future__ import annotations

from typing import Any

import httpx


class AgentDBError(Exception):
    """A request agentdb refused or could not do; `str()` is the problem's detail, which says
    what to fix. `errors` names the offending fields of a 400."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str = "",
        type: str = "",  # noqa: A002 - RFC 9457's member name
        errors: list[dict[str, str]] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.type = type
        self.errors = errors or []
        self.body = body or {}

    @property
    def fields(self) -> list[str]:
        return [e.get("field", "") for e in self.errors]


class InvalidRequestError(AgentDBError):
    """400: a value is wrong; `errors` says which and why."""


class AuthError(AgentDBError):
    """401 (no or bad token) or 403 (the token's scope does not allow this)."""


class NotFoundError(AgentDBError):
    """404: no such thing, or not one the token reaches."""


class ConflictError(AgentDBError):
    """409: the state does not allow it now (busy session, head checkpoint, taken email...)."""


class SqlError(AgentDBError):
    """422: the SQL failed; nothing of the call was committed."""

    @property
    def sqlstate(self) -> str | None:
        value = self.body.get("sqlstate")
        return None if value is None else str(value)

    @property
    def position(self) -> int | None:
        value = self.body.get("position")
        return None if value is None else int(value)

    @property
    def hint(self) -> str | None:
        """PostgreSQL's hint, or agentdb's for a statement a session runs another way."""
        value = self.body.get("hint")
        return None if value is None else str(value)


class QuotaExceededError(AuthError):
    """403 `quota-exceeded`: the session used up a quota of its tier (its compute is suspended,
    or its database is over its size and refuses writes); `quota`, `used` and `limit` say which
    and how much. Raising the quota (a higher tier for the user) lifts it."""

    @property
    def quota(self) -> str:
        return str(self.body.get("quota", ""))

    @property
    def used(self) -> int | None:
        value = self.body.get("used")
        return None if value is None else int(value)

    @property
    def limit(self) -> int | None:
        value = self.body.get("limit")
        return None if value is None else int(value)


class TooManyRequestsError(AgentDBError):
    """429: this address sent too many wrong tokens; `retry_after` says how many seconds to
    wait."""

    @property
    def retry_after(self) -> int | None:
        value = self.body.get("retry_after")
        return None if value is None else int(value)


class ControlPlaneError(AgentDBError):
    """502: Neon (or the local control plane) failed the operation; retrying may work."""


_BY_STATUS: dict[int, type[AgentDBError]] = {
    400: InvalidRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    422: SqlError,
    429: TooManyRequestsError,
    502: ControlPlaneError,
}


def error_from(response: httpx.Response) -> AgentDBError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    detail = str(body.get("detail") or response.reason_phrase or f"HTTP {response.status_code}")
    kind = _BY_STATUS.get(response.status_code, AgentDBError)
    if str(body.get("type", "")).endswith("/quota-exceeded"):
        kind = QuotaExceededError
    return kind(
        response.status_code,
        detail,
        title=str(body.get("title", "")),
        type=str(body.get("type", "")),
        errors=list(body.get("errors") or []),
        body=body,
    )
