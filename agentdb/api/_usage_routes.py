"""The `/v1` routes of tiers and usage: moving a user to another tier (admin), following the
move, and the usage of a session or a user per billing period and metric."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler

from agentdb.services import TierChangeView, UsageReport
from agentdb.services.usage import MAX_PERIODS
from agentdb.wire import ChangeTier, TierChangeList

from ._auth import actor_of, reachable_session, require_admin, require_user, runtime_of

AnyRequest = Request[Any, Any, Any]
Periods = Annotated[
    int, QueryParameter(ge=1, le=MAX_PERIODS, description="How many billing periods, newest first.")
]


class UserTiers(Controller):
    path = "/v1/users/{user_id:uuid}"
    tags = ["tiers"]  # noqa: RUF012 - Litestar's declaration style

    @post(
        "/tier",
        status_code=202,
        summary="Move a user to another tier (admin)",
        description="Sets the user's tier at once (new sessions start in it) and moves their "
        "sessions' projects to the tier's organization, in batches of at most 400, then "
        "applies its limits. The work runs in the background: follow it at the Location.",
    )
    async def change(
        self, request: AnyRequest, user_id: FromPath[uuid.UUID], data: JSONBody[ChangeTier]
    ) -> Response[TierChangeView]:
        require_admin(request)
        runtime = runtime_of(request.scope)
        view = await runtime.tier_changes.request(user_id, data.tier, actor=actor_of(request))
        runtime.jobs.kick("tier_changes")
        return Response(
            view,
            status_code=202,
            headers={"Location": f"/v1/users/{user_id}/tier-changes/{view.id}"},
        )

    @get("/tier-changes", summary="The user's tier changes, newest first")
    async def changes(self, request: AnyRequest, user_id: FromPath[uuid.UUID]) -> TierChangeList:
        require_user(request, user_id)
        changes = await runtime_of(request.scope).tier_changes.list(user_id)
        return TierChangeList(tier_changes=changes)

    @get("/tier-changes/{change_id:uuid}", summary="One tier change and how far it got")
    async def change_status(
        self, request: AnyRequest, user_id: FromPath[uuid.UUID], change_id: FromPath[uuid.UUID]
    ) -> TierChangeView:
        require_user(request, user_id)
        return await runtime_of(request.scope).tier_changes.get(user_id, change_id)

    @get("/usage", summary="The user's usage over all their sessions, per period and metric")
    async def usage(
        self, request: AnyRequest, user_id: FromPath[uuid.UUID], periods: Periods = 3
    ) -> UsageReport:
        require_user(request, user_id)
        return await runtime_of(request.scope).usage.user_usage(user_id, periods=periods)


@get(
    "/v1/sessions/{session_id:uuid}/usage",
    tags=["usage"],
    summary="The session's usage and its tier's quotas, per period and metric",
)
async def session_usage(
    request: AnyRequest, session_id: FromPath[uuid.UUID], periods: Periods = 3
) -> UsageReport:
    await reachable_session(request, session_id)
    return await runtime_of(request.scope).usage.session_usage(session_id, periods=periods)


USAGE_ROUTES: list[ControllerRouterHandler] = [UserTiers, session_usage]
