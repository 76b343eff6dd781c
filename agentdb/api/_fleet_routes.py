"""The `/v1/migrations` routes (admin only): start a fleet migration, follow it (as JSON, per
session, or as a server-sent event stream), resume, cancel and roll it back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.types import ControllerRouterHandler

from agentdb.services import MAX_PAGE, Actor, FleetMigrationService
from agentdb.wire import (
    TERMINAL_MIGRATION_STATUSES,
    CreateMigration,
    FleetMigrationList,
    FleetMigrationResultList,
    FleetMigrationResultStatus,
    FleetMigrationView,
    ResumeMigration,
)

from ._auth import admin_guard

Fleet = NamedDependency[FleetMigrationService]
PageSize = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="At most this many.")]
#: How often the event stream looks at the migration; it sends only what changed.
STREAM_POLL_S = 0.5
#: A comment line this often keeps proxies from closing a quiet stream.
STREAM_KEEPALIVE_S = 15.0


class Migrations(Controller):
    path = "/v1/migrations"
    tags = ["fleet migrations"]  # noqa: RUF012 - Litestar's declaration style
    guards = [admin_guard]  # noqa: RUF012

    @post(
        "/",
        status_code=201,
        summary="Start a fleet migration (admin)",
        description="Applies `up` to every target session: a checkpoint first, then `up` in "
        "one transaction, the canary first, then waves, halting by the rollout's rule. A "
        "session that already carries it is skipped. `dry_run` applies it on a short-lived "
        "branch of each target instead; `tested_by` requires that a finished dry run tested "
        "this very SQL. Follow it at the Location, or its `/events` stream.",
    )
    async def create(
        self, *, fleet: Fleet, actor: NamedDependency[Actor], data: JSONBody[CreateMigration]
    ) -> Response[FleetMigrationView]:
        view = await fleet.create(data, actor=actor)
        return Response(view, status_code=201, headers={"Location": f"/v1/migrations/{view.id}"})

    @get("/", summary="Fleet migrations, newest first")
    async def list_migrations(self, *, fleet: Fleet, limit: PageSize = 50) -> FleetMigrationList:
        return FleetMigrationList(migrations=await fleet.list(limit=limit))

    @get("/{migration_id:uuid}", summary="A fleet migration with its counts per status")
    async def get_migration(
        self, *, fleet: Fleet, migration_id: FromPath[uuid.UUID]
    ) -> FleetMigrationView:
        return await fleet.get(migration_id)

    @get(
        "/{migration_id:uuid}/sessions",
        summary="The migration on each session, by session id",
        description="Filter by `status` (e.g. `failed`); page with `after` (the last session "
        "id of the previous page).",
    )
    async def sessions(
        self,
        *,
        fleet: Fleet,
        migration_id: FromPath[uuid.UUID],
        status: Annotated[FleetMigrationResultStatus | None, QueryParameter()] = None,
        limit: PageSize = 100,
        after: Annotated[uuid.UUID | None, QueryParameter()] = None,
    ) -> FleetMigrationResultList:
        return FleetMigrationResultList(
            results=await fleet.results(migration_id, status=status, limit=limit, after=after)
        )

    @post(
        "/{migration_id:uuid}/resume",
        status_code=202,
        summary="Resume a halted migration",
        description="Without `continue`, the failed sessions are tried again; with it, the "
        "migration rolls on past them (the halt rule counts only later failures).",
    )
    async def resume(
        self,
        *,
        fleet: Fleet,
        actor: NamedDependency[Actor],
        migration_id: FromPath[uuid.UUID],
        data: JSONBody[ResumeMigration | None] = None,
    ) -> FleetMigrationView:
        go_on = data.continue_ if data is not None else False
        return await fleet.resume(migration_id, go_on=go_on, actor=actor)

    @post(
        "/{migration_id:uuid}/cancel",
        status_code=202,
        summary="Cancel a migration",
        description="Sessions not yet started are left untouched; those under way finish.",
    )
    async def cancel(
        self, *, fleet: Fleet, actor: NamedDependency[Actor], migration_id: FromPath[uuid.UUID]
    ) -> FleetMigrationView:
        return await fleet.cancel(migration_id, actor=actor)

    @post(
        "/{migration_id:uuid}/rollback",
        status_code=202,
        summary="Roll a migration back",
        description="Runs `down` on each session that took it; without `down`, restores the "
        "checkpoint taken before it where nothing was written after the migration, and lists "
        "the others as `not_rolled_back`.",
    )
    async def rollback(
        self, *, fleet: Fleet, actor: NamedDependency[Actor], migration_id: FromPath[uuid.UUID]
    ) -> FleetMigrationView:
        return await fleet.rollback(migration_id, actor=actor)

    @get(
        "/{migration_id:uuid}/events",
        summary="The migration's progress as server-sent events",
        description="A `progress` event with the migration (as `GET` answers it) each time it "
        "changes, and a last `done` event once it is finished, halted, cancelled or rolled "
        "back.",
    )
    async def events(self, *, fleet: Fleet, migration_id: FromPath[uuid.UUID]) -> ServerSentEvent:
        first = await fleet.get(migration_id)  # an unknown id is a 404, not an empty stream
        return ServerSentEvent(_progress(fleet, first))


async def _progress(
    fleet: FleetMigrationService, view: FleetMigrationView
) -> AsyncIterator[ServerSentEventMessage | str]:
    last = None
    quiet = 0.0
    while True:
        body = view.model_dump_json()
        done = view.status in TERMINAL_MIGRATION_STATUSES
        if done:
            yield ServerSentEventMessage(data=body, event="done")
            return
        if body != last:
            yield ServerSentEventMessage(data=body, event="progress")
            last, quiet = body, 0.0
        elif quiet >= STREAM_KEEPALIVE_S:
            yield ServerSentEventMessage(comment="keep-alive")
            quiet = 0.0
        await asyncio.sleep(STREAM_POLL_S)
        quiet += STREAM_POLL_S
        view = await fleet.get(view.id)


FLEET_ROUTES: list[ControllerRouterHandler] = [Migrations]
