"""What the routes receive through Litestar's dependency injection: each service by its name
(a handler declares `checkpoints: NamedDependency[CheckpointService]`, never the whole
`Runtime`), the caller's principal and the actor the audit log records, and the renderer that
adds secrets for the tokens that may see them.

A dependency's name must not be a request body's field name: Litestar reports a validation
error whose key is a dependency's name as a 500 (so the SQL service is `sql_service`, the body
has `sql`)."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from agentdb.services import (
    Actor,
    BranchService,
    BranchView,
    Principal,
    SessionService,
    SessionView,
)
from agentdb.wire import BranchOut, SessionOut

from ._auth import actor_of, principal_of, sees_secrets

AnyRequest = Request[Any, Any, Any]

#: The runtime's services the routes use: the name a handler declares, the runtime's field.
SERVICES = {
    "users": "users",
    "tokens": "tokens",
    "sessions": "sessions",
    "checkpoints": "checkpoints",
    "branches": "branches",
    "catalog": "catalog",
    "sql_service": "sql",
    "addons": "addons",
    "events": "events",
    "usage": "usage",
    "tier_changes": "tier_changes",
    "fleet": "fleet",
    "jobs": "jobs",
    "readiness": "readiness",
}


def _service(field: str) -> Provide:
    def provide(state: State) -> object:
        return getattr(state.runtime, field)

    return Provide(provide, sync_to_thread=False)


def _actor(request: AnyRequest) -> Actor:
    return actor_of(request)


class Render:
    """Turns service views into API answers: a session's and a branch's connection URI go only
    to admin and user tokens (`sees_secrets`)."""

    def __init__(self, sessions: SessionService, branches: BranchService, *, secrets: bool) -> None:
        self._sessions = sessions
        self._branches = branches
        self._secrets = secrets

    async def session(self, view: SessionView) -> SessionOut:
        uri = None
        if self._secrets and view.status.value in {"ready", "checkpointing", "restoring"}:
            uri = await self._sessions.connection_uri(view.id)
        return SessionOut(**view.model_dump(), connection_uri=uri)

    async def branch(self, view: BranchView) -> BranchOut:
        uri = None
        if self._secrets and view.status.value == "ready":
            uri = await self._branches.connection_uri(view.session_id, view.id)
        return BranchOut(**view.model_dump(), connection_uri=uri)


def _principal(request: AnyRequest) -> Principal:
    return principal_of(request)


def _render(
    request: AnyRequest,
    sessions: NamedDependency[SessionService],
    branches: NamedDependency[BranchService],
) -> Render:
    return Render(sessions, branches, secrets=sees_secrets(request))


DEPENDENCIES: dict[str, Provide] = {
    **{name: _service(field) for name, field in SERVICES.items()},
    "actor": Provide(_actor, sync_to_thread=False),
    "principal": Provide(_principal, sync_to_thread=False),
    "render": Provide(_render, sync_to_thread=False),
}

__all__ = ["DEPENDENCIES", "Render"]
