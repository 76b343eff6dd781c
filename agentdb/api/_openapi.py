"""The error answers of every `/v1` operation in the OpenAPI document at `/schema`: each status
a route can answer, as RFC 9457 problem+json (`Problem`). Litestar has no app-wide `responses`,
so `declare_problems` gives each route handler its own list before the document is first built.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from pydantic import BaseModel, ConfigDict, Field

from ._problems import PROBLEM_JSON


class FieldError(BaseModel):
    field: str = Field(description="The offending field, query parameter or header.")
    message: str = Field(description="What is wrong with it.")


class Problem(BaseModel):
    """An error, as RFC 9457 problem details. Some kinds carry more members: `sqlstate` and
    `position` (sql-failed), `limit` and `allowed` (limit-exceeded), `quota`, `used` and
    `limit` (quota-exceeded), `retry_after` (429, also the Retry-After header)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem.")
    title: str
    status: int
    detail: str = Field(description="What went wrong and what to change.")
    instance: str = Field(description="The request's path.")
    request_id: str = Field(description="Also in the X-Request-ID header and the logs.")
    errors: list[FieldError] | None = Field(
        default=None, description="One entry per bad value (400 and 409 already-exists)."
    )


_MEANINGS = {
    400: "Invalid input: `errors` names each bad field (body, query parameter or header).",
    401: "No token, or one that is unknown, revoked or expired.",
    403: "The token's scope does not allow this (e.g. a session token deleting its session: "
    "it needs a user or admin token), or a quota of the session's tier is used up.",
    404: "No such resource, or one the token does not reach.",
    409: "The current state refuses it (busy session, a limit of the tier, a taken name); "
    "busy answers carry Retry-After.",
    413: "The request body is too large.",
    422: "PostgreSQL refused the SQL (`sqlstate`, `position`); nothing of the call was kept.",
    429: "Too many requests: this token's rate or requests in flight, its user's requests in "
    "flight, or wrong tokens from this address; see Retry-After.",
    502: "The control plane (Neon or the local plane) failed the operation; retrying may work.",
}
#: Methods that carry a body (and so may answer 413).
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def statuses_of(path: str, methods: set[str]) -> list[int]:
    """The error statuses an operation of agentdb's API can answer."""
    if not path.startswith("/v1/"):
        return []
    found = {400, 401, 403, 404, 409, 429}
    if methods & _WITH_BODY:
        found.add(413)
    if path.startswith("/v1/sessions") or path.endswith("/tier"):
        # Everything about a session can reach its database or the control plane.
        found |= {422, 502}
    return sorted(found)


def problem_responses(statuses: list[int]) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description=_MEANINGS[status],
            generate_examples=False,
        )
        for status in statuses
    }


def declare_problems(app: Litestar) -> None:
    """Gives every `/v1` route handler of `app` its error answers (kept when a handler
    declares a status itself)."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not isinstance(handler, HTTPRouteHandler) or not handler.include_in_schema:
                continue
            methods = {str(m).upper() for m in handler.http_methods}
            declared = problem_responses(statuses_of(route.path, methods))
            handler.responses = {**declared, **(handler.responses or {})}
