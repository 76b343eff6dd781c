"""Projects and their operation log: `/projects`, `/projects/{id}/operations`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from ._base import ClientCore, drop_none, follow_cursor, segment_path
from ._models import (
    CreatedProject,
    DefaultEndpointSettings,
    Operation,
    OperationsPage,
    Project,
    ProjectSettings,
    ProjectsPage,
    ProjectUpdated,
)


class _ProjectEnvelope(ProjectUpdated):
    """`{project}` alone (get, delete): `operations` stays empty."""


class ProjectsMixin(ClientCore):
    async def create_project(
        self,
        *,
        name: str | None = None,
        region_id: str | None = None,
        pg_version: int | None = None,
        org_id: str | None = None,
        branch_name: str | None = None,
        role_name: str | None = None,
        database_name: str | None = None,
        branch_annotations: Mapping[str, str] | None = None,
        default_endpoint_settings: DefaultEndpointSettings | None = None,
        settings: ProjectSettings | None = None,
        history_retention_seconds: int | None = None,
        store_passwords: bool | None = None,
        wait: bool = True,
    ) -> CreatedProject:
        """Creates a project with its default branch, compute, owner role and database.

        The owner's password is only ever returned here. `org_id` is needed with a personal
        API key. Creation is not idempotent: after a failure with `maybe_applied`, look with
        `find_project(name)` before creating again.
        """
        branch = drop_none(
            name=branch_name,
            role_name=role_name,
            database_name=database_name,
            annotations=dict(branch_annotations) if branch_annotations else None,
        )
        project = drop_none(
            name=name,
            region_id=region_id,
            pg_version=pg_version,
            org_id=org_id,
            branch=branch or None,
            default_endpoint_settings=default_endpoint_settings,
            settings=settings,
            history_retention_seconds=history_retention_seconds,
            store_passwords=store_passwords,
        )
        # The project's id is only known from the answer: wait after reading it.
        created = await self._call(CreatedProject, "POST", "/projects", body={"project": project})
        return await self._settle(created, created.project.id, wait=wait)

    async def get_project(self, project_id: str) -> Project:
        found = await self._call(_ProjectEnvelope, "GET", segment_path("projects", project_id))
        return found.project

    async def list_projects(
        self,
        *,
        org_id: str | None = None,
        search: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        recoverable: bool | None = None,
    ) -> ProjectsPage:
        """One page (`limit` 1..400, Neon's default 10); see `iter_projects` for all."""
        return await self._call(
            ProjectsPage,
            "GET",
            "/projects",
            params={
                "org_id": org_id,
                "search": search,
                "limit": limit,
                "cursor": cursor,
                "recoverable": recoverable,
            },
        )

    async def iter_projects(
        self,
        *,
        org_id: str | None = None,
        search: str | None = None,
        page_size: int = 100,
        recoverable: bool | None = None,
    ) -> AsyncIterator[Project]:
        """Every project, page by page, following `pagination.cursor`."""

        async def fetch(cursor: str | None) -> tuple[list[Project], str | None]:
            page = await self.list_projects(
                org_id=org_id,
                search=search,
                limit=page_size,
                cursor=cursor,
                recoverable=recoverable,
            )
            return page.projects, page.cursor

        async for project in follow_cursor(fetch, page_size=page_size):
            yield project

    async def find_project(self, name: str, *, org_id: str | None = None) -> Project | None:
        """The project named exactly `name` (the oldest if several), or None: what to look for
        before creating again after an unknown outcome."""
        found = [p async for p in self.iter_projects(org_id=org_id, search=name) if p.name == name]
        return min(found, key=lambda p: (p.created_at is None, p.created_at)) if found else None

    async def update_project(
        self,
        project_id: str,
        *,
        name: str | None = None,
        settings: ProjectSettings | None = None,
        default_endpoint_settings: DefaultEndpointSettings | None = None,
        history_retention_seconds: int | None = None,
        wait: bool = True,
    ) -> ProjectUpdated:
        body = drop_none(
            name=name,
            settings=settings,
            default_endpoint_settings=default_endpoint_settings,
            history_retention_seconds=history_retention_seconds,
        )
        return await self._mutate(
            ProjectUpdated,
            "PATCH",
            segment_path("projects", project_id),
            project_id=project_id,
            wait=wait,
            body={"project": body},
        )

    async def delete_project(self, project_id: str) -> Project:
        """Deletes a project (Neon keeps it recoverable for 7 days). Raises `NeonNotFound` if it
        is already gone: callers that retry treat that as done."""
        deleted = await self._call(_ProjectEnvelope, "DELETE", segment_path("projects", project_id))
        return deleted.project

    # --- operations ------------------------------------------------------------------------------

    async def list_operations(
        self, project_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> OperationsPage:
        """One page of a project's operations, newest first (`limit` 1..1000)."""
        return await self._call(
            OperationsPage,
            "GET",
            segment_path("projects", project_id, "operations"),
            params={"limit": limit, "cursor": cursor},
        )

    async def wait_for_project_operations(
        self,
        project_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
        scan: int = 100,
    ) -> list[Operation]:
        """Waits for whatever the project still has running (among its newest `scan`
        operations). Use it after finding something a lost call created (its operations are
        unknown) and before connecting to it or changing it."""
        page = await self.list_operations(project_id, limit=scan)
        running = [op for op in page.operations if not op.succeeded and not op.failed_for_good]
        return await self.wait_for_operations(project_id, running, timeout=timeout)
