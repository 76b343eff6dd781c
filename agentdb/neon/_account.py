"""Account-wide calls: consumption history (its own 30/min limit), organizations, and moving
projects between organizations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from pydantic import Field

from ._base import ClientCore, Query, follow_cursor, rfc3339, segment_path
from ._models import NeonModel
from ._models_platform import (
    ConsumptionPage,
    LegacyConsumptionPage,
    Organization,
    ProjectConsumption,
)

#: Neon's caps: project ids per consumption query, and per transfer request.
MAX_CONSUMPTION_PROJECTS = 100
MAX_TRANSFER_PROJECTS = 400


class _Organizations(NeonModel):
    organizations: list[Organization] = Field(default_factory=list)


def _consumption_query(
    *,
    org_id: str | None,
    from_: datetime,
    to: datetime,
    granularity: str,
    metrics: Sequence[str] | None,
    project_ids: Sequence[str] | None,
    limit: int | None,
    cursor: str | None,
) -> Query:
    if project_ids is not None and len(project_ids) > MAX_CONSUMPTION_PROJECTS:
        raise ValueError(
            f"project_ids: at most {MAX_CONSUMPTION_PROJECTS} per query, got {len(project_ids)}"
        )
    # Lists go comma-separated, which Neon accepts as well as repeated parameters.
    return {
        "org_id": org_id,
        "from": rfc3339(from_),
        "to": rfc3339(to),
        "granularity": granularity,
        "metrics": ",".join(metrics) if metrics else None,
        "project_ids": ",".join(project_ids) if project_ids else None,
        "limit": limit,
        "cursor": cursor,
    }


class AccountMixin(ClientCore):
    async def consumption_history(
        self,
        *,
        org_id: str,
        from_: datetime,
        to: datetime,
        granularity: str,
        metrics: Sequence[str],
        project_ids: Sequence[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ConsumptionPage:
        """One page of `GET /consumption_history/v2/projects` (paid plans; 403 otherwise).

        `granularity`: hourly (last 168 h) | daily (60 d) | monthly (1 y). `metrics` among
        compute_unit_seconds, root_branch_bytes_month, child_branch_bytes_month,
        instant_restore_bytes_month, public_network_transfer_bytes,
        private_network_transfer_bytes, extra_branches_month, snapshot_storage_bytes_month.
        Data refreshes about every 15 min; calls count against the 30/min consumption limit.
        """
        if not metrics:
            raise ValueError("metrics: name at least one metric")
        return await self._call(
            ConsumptionPage,
            "GET",
            "/consumption_history/v2/projects",
            params=_consumption_query(
                org_id=org_id,
                from_=from_,
                to=to,
                granularity=granularity,
                metrics=metrics,
                project_ids=project_ids,
                limit=limit,
                cursor=cursor,
            ),
            consumption=True,
        )

    async def iter_consumption_history(
        self,
        *,
        org_id: str,
        from_: datetime,
        to: datetime,
        granularity: str,
        metrics: Sequence[str],
        project_ids: Sequence[str] | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[ProjectConsumption]:
        """Every project's consumption, following `pagination.cursor`."""

        async def fetch(cursor: str | None) -> tuple[list[ProjectConsumption], str | None]:
            page = await self.consumption_history(
                org_id=org_id,
                from_=from_,
                to=to,
                granularity=granularity,
                metrics=metrics,
                project_ids=project_ids,
                limit=page_size,
                cursor=cursor,
            )
            return page.projects, page.cursor

        async for project in follow_cursor(fetch, page_size=page_size):
            yield project

    async def legacy_consumption_history(
        self,
        *,
        from_: datetime,
        to: datetime,
        granularity: str,
        org_id: str | None = None,
        metrics: Sequence[str] | None = None,
        project_ids: Sequence[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> LegacyConsumptionPage:
        """One page of the legacy `GET /consumption_history/projects` (metrics among
        active_time_seconds, compute_time_seconds, written_data_bytes,
        synthetic_storage_size_bytes, data_storage_bytes_hour, logical_size_bytes(_hour))."""
        return await self._call(
            LegacyConsumptionPage,
            "GET",
            "/consumption_history/projects",
            params=_consumption_query(
                org_id=org_id,
                from_=from_,
                to=to,
                granularity=granularity,
                metrics=metrics,
                project_ids=project_ids,
                limit=limit,
                cursor=cursor,
            ),
            consumption=True,
        )

    async def list_organizations(self) -> list[Organization]:
        """The organizations of the key's user (`NeonUnauthorized` 403 for organization keys)."""
        return (await self._call(_Organizations, "GET", "/users/me/organizations")).organizations

    async def transfer_projects(
        self,
        *,
        source_org_id: str,
        destination_org_id: str,
        project_ids: Sequence[str],
    ) -> int:
        """Moves projects to another organization, at most 400 per request; returns how many
        requests it took. Batches go in order: if one fails (406 over the destination's limits,
        422 a project has a GitHub/Vercel integration; details in the error's `body`), the
        earlier batches have moved and the later ones have not."""
        ids = list(dict.fromkeys(project_ids))
        path = segment_path("organizations", source_org_id, "projects", "transfer")
        batches = 0
        for start in range(0, len(ids), MAX_TRANSFER_PROJECTS):
            batch = ids[start : start + MAX_TRANSFER_PROJECTS]
            await self._request(
                "POST",
                path,
                body={"destination_org_id": destination_org_id, "project_ids": batch},
            )
            batches += 1
        return batches
