"""Branches: `/projects/{id}/branches` (create, get, list, update, delete, restore,
set-as-default, schema comparison)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime

from ._base import ClientCore, drop_none, follow_cursor, rfc3339, segment_path
from ._models import Branch, BranchChanged, BranchCreated, BranchesPage, EndpointOptions, NeonModel


class _BranchEnvelope(NeonModel):
    branch: Branch


class _SchemaDiff(NeonModel):
    diff: str = ""


class BranchesMixin(ClientCore):
    async def create_branch(
        self,
        project_id: str,
        *,
        name: str | None = None,
        parent_id: str | None = None,
        parent_lsn: str | None = None,
        parent_timestamp: datetime | None = None,
        protected: bool | None = None,
        init_source: str | None = None,
        expires_at: datetime | None = None,
        endpoints: Sequence[EndpointOptions] | None = None,
        annotation: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> BranchCreated:
        """Creates a branch of `parent_id` (default: the project's default branch).

        Without `endpoints` the branch has no compute and cannot be connected to.
        `init_source="schema-only"` makes a new root branch with the parent's schema only.
        `annotation` is free-form key/values, e.g. an idempotency key to look for later.
        """
        branch = drop_none(
            name=name,
            parent_id=parent_id,
            parent_lsn=parent_lsn,
            parent_timestamp=parent_timestamp,
            protected=protected,
            init_source=init_source,
            expires_at=expires_at,
        )
        body = drop_none(
            branch=branch or None,
            endpoints=[e.model_dump(mode="json", exclude_none=True) for e in endpoints]
            if endpoints
            else None,
            annotation_value=dict(annotation) if annotation else None,
        )
        return await self._mutate(
            BranchCreated,
            "POST",
            segment_path("projects", project_id, "branches"),
            project_id=project_id,
            wait=wait,
            body=body or None,
        )

    async def get_branch(self, project_id: str, branch_id: str) -> Branch:
        found = await self._call(
            _BranchEnvelope, "GET", segment_path("projects", project_id, "branches", branch_id)
        )
        return found.branch

    async def list_branches(
        self,
        project_id: str,
        *,
        search: str | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> BranchesPage:
        """One page of branches (`sort_by` name | created_at | updated_at, `sort_order`
        asc | desc); without `limit` Neon answers all of them."""
        return await self._call(
            BranchesPage,
            "GET",
            segment_path("projects", project_id, "branches"),
            params={
                "search": search,
                "sort_by": sort_by,
                "sort_order": sort_order,
                "limit": limit,
                "cursor": cursor,
            },
        )

    async def iter_branches(
        self,
        project_id: str,
        *,
        search: str | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Branch]:
        """Every branch, page by page, following `pagination.next`."""

        async def fetch(cursor: str | None) -> tuple[list[Branch], str | None]:
            page = await self.list_branches(
                project_id,
                search=search,
                sort_by=sort_by,
                sort_order=sort_order,
                limit=page_size,
                cursor=cursor,
            )
            return page.branches, page.next

        async for branch in follow_cursor(fetch):
            yield branch

    async def find_branch(self, project_id: str, name: str) -> Branch | None:
        """The branch named exactly `name`, or None (look before re-creating)."""
        async for branch in self.iter_branches(project_id, search=name):
            if branch.name == name:
                return branch
        return None

    async def update_branch(
        self,
        project_id: str,
        branch_id: str,
        *,
        name: str | None = None,
        protected: bool | None = None,
        expires_at: datetime | None = None,
        clear_expires_at: bool = False,
        wait: bool = True,
    ) -> BranchChanged:
        """Renames, (un)protects or sets the expiry of a branch; `clear_expires_at` removes it."""
        branch = drop_none(name=name, protected=protected, expires_at=expires_at)
        if clear_expires_at:
            branch["expires_at"] = None
        return await self._mutate(
            BranchChanged,
            "PATCH",
            segment_path("projects", project_id, "branches", branch_id),
            project_id=project_id,
            wait=wait,
            body={"branch": branch},
        )

    async def delete_branch(
        self,
        project_id: str,
        branch_id: str,
        *,
        hard_delete: bool | None = None,
        wait: bool = True,
    ) -> BranchChanged | None:
        """Deletes a branch; None when Neon answers 204 (already gone). The default branch and
        branches with children cannot be deleted."""
        return await self._delete(
            BranchChanged,
            segment_path("projects", project_id, "branches", branch_id),
            project_id=project_id,
            wait=wait,
            params={"hard_delete": hard_delete},
        )

    async def restore_branch(
        self,
        project_id: str,
        branch_id: str,
        *,
        source_branch_id: str,
        source_lsn: str | None = None,
        source_timestamp: datetime | None = None,
        preserve_under_name: str | None = None,
        wait: bool = True,
    ) -> BranchChanged:
        """Point-in-time restore of `branch_id` from `source_branch_id` (its head without a time
        or LSN). "Reset from parent" is this call with `source_branch_id = parent_id`."""
        return await self._mutate(
            BranchChanged,
            "POST",
            segment_path("projects", project_id, "branches", branch_id, "restore"),
            project_id=project_id,
            wait=wait,
            body=drop_none(
                source_branch_id=source_branch_id,
                source_lsn=source_lsn,
                source_timestamp=source_timestamp,
                preserve_under_name=preserve_under_name,
            ),
        )

    async def set_default_branch(
        self, project_id: str, branch_id: str, *, wait: bool = True
    ) -> BranchChanged:
        return await self._mutate(
            BranchChanged,
            "POST",
            segment_path("projects", project_id, "branches", branch_id, "set_as_default"),
            project_id=project_id,
            wait=wait,
        )

    async def compare_schema(
        self,
        project_id: str,
        branch_id: str,
        *,
        db_name: str,
        base_branch_id: str | None = None,
        lsn: str | None = None,
        timestamp: datetime | None = None,
        base_lsn: str | None = None,
        base_timestamp: datetime | None = None,
    ) -> str:
        """A unified diff of `db_name`'s schema on `branch_id` against `base_branch_id` (default:
        its parent); empty when they match."""
        found = await self._call(
            _SchemaDiff,
            "GET",
            segment_path("projects", project_id, "branches", branch_id, "compare_schema"),
            params={
                "db_name": db_name,
                "base_branch_id": base_branch_id,
                "lsn": lsn,
                "timestamp": rfc3339(timestamp) if timestamp else None,
                "base_lsn": base_lsn,
                "base_timestamp": rfc3339(base_timestamp) if base_timestamp else None,
            },
        )
        return found.diff
