"""The add-on URLs of the in-process local control plane (Neon Auth, the Data API), served on
agentdb's own listener beside the API, so the URLs a session's `auth` and `data-api` hand out
answer from the app an agent builds. They are not routes of the API app: they carry the app's
own JWTs (or none), not agentdb tokens, and the plane checks those."""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from agentdb.localplane import ADDON_PATHS


def with_addons(api: ASGIApp, plane_app: ASGIApp | None) -> ASGIApp:
    """One ASGI app: HTTP requests under `ADDON_PATHS` to `plane_app` (already running: its
    lifespan is the runtime's), everything else, lifespan included, to `api`."""
    if plane_app is None:  # Neon cloud: Neon serves them
        return api

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == ScopeType.HTTP and path.startswith(ADDON_PATHS):
            await plane_app(scope, receive, send)
        else:
            await api(scope, receive, send)

    return app
