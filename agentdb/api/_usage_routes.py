"""The `/v1` routes of tiers and usage: moving a user to another tier (admin), following the
move, and the usage of a session or a user per billing period and metric."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler

from agentdb.services import (
    Actor,
    JobRunner,
    TierChangeService,
    TierChangeView,
    UsageReport,
    UsageService,
)
from agentdb.services.usage import MAX_PERIODS
from agentdb.wire import ChangeTier, TierChangeList

from ._auth import admin_guard, session_guard, user_guard

Periods = Annotated[
    int, QueryParameter(ge=1, le=MAX_PERIODS, description="How many billing periods, newest first.")
]
TierChanges = NamedDependency[TierChangeService]
Usage = NamedDependency[UsageService]


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
        guards=[admin_guard],
    )
    async def change(
        self,
        *,
        tier_changes: TierChanges,
        jobs: NamedDependency[JobRunner],
        actor: NamedDependency[Actor],
        user_id: FromPath[uuid.UUID],
        data: JSONBody[ChangeTier],
    ) -> Response[TierChangeView]:
        view = await tier_changes.request(user_id, data.tier, actor=actor)
        jobs.kick("tier_changes")
        return Response(
            view,
            status_code=202,
            headers={"Location": f"/v1/users/{user_id}/tier-changes/{view.id}"},
        )

    @get("/tier-changes", summary="The user's tier changes, newest first", guards=[user_guard])
    async def changes(
        self, *, tier_changes: TierChanges, user_id: FromPath[uuid.UUID]
    ) -> TierChangeList:
        return TierChangeList(tier_changes=await tier_changes.list(user_id))

    @get(
        "/tier-changes/{change_id:uuid}",
        summary="One tier change and how far it got",
        guards=[user_guard],
    )
    async def change_status(
        self,
        *,
        tier_changes: TierChanges,
        user_id: FromPath[uuid.UUID],
        change_id: FromPath[uuid.UUID],
    ) -> TierChangeView:
        return await tier_changes.get(user_id, change_id)

    @get(
        "/usage",
        summary="The user's usage over all their sessions, per period and metric",
        guards=[user_guard],
    )
    async def usage(
        self, *, usage: Usage, user_id: FromPath[uuid.UUID], periods: Periods = 3
    ) -> UsageReport:
        return await usage.user_usage(user_id, periods=periods)


@get(
    "/v1/sessions/{session_id:uuid}/usage",
    tags=["usage"],
    summary="The session's usage and its tier's quotas, per period and metric",
    guards=[session_guard],
)
async def session_usage(
    *, usage: Usage, session_id: FromPath[uuid.UUID], periods: Periods = 3
) -> UsageReport:
    return await usage.session_usage(session_id, periods=periods)


USAGE_ROUTES: list[ControllerRouterHandler] = [UserTiers, session_usage]
