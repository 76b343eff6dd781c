"""Projects of the local control plane: one group role, roles and databases per project."""

from __future__ import annotations

from typing import Any

from . import _render as render
from . import _steps as step
from ._base import check_cu
from ._consumption import period_usage
from ._errors import BadRequest
from ._meter import UsageMixin
from ._models import (
    BranchRecord,
    DatabaseRecord,
    EndpointRecord,
    OperationRecord,
    ProjectCreateBody,
    ProjectRecord,
    ProjectUpdateBody,
    RoleRecord,
    SnapshotRecord,
    neon_id,
    new_password,
    now,
    physical_key,
)
from ._organizations import DEFAULT_ORG, ensure_organization

JSON = dict[str, Any]
# Physical role names append "_<10-char project key>" and PostgreSQL caps names at 63 bytes.
MAX_ROLE_NAME = 52


class PlaneProjects(UsageMixin):
    async def create_project(self, body: ProjectCreateBody) -> JSON:
        spec = body.project
        project_id = neon_id()
        key = physical_key()
        branch_spec = spec.branch
        db_name = (branch_spec.database_name if branch_spec else None) or "neondb"
        role_name = (branch_spec.role_name if branch_spec else None) or f"{db_name}_owner"
        if len(role_name) > MAX_ROLE_NAME:
            raise BadRequest(
                "project.branch.role_name: at most 52 bytes on the local control plane"
            )
        endpoint_settings = (
            spec.default_endpoint_settings.model_dump(exclude_none=True)
            if (spec.default_endpoint_settings)
            else {}
        )
        for legacy in ("autoscaling_limit_min_cu", "autoscaling_limit_max_cu"):
            value = getattr(spec, legacy)
            if value is not None:
                endpoint_settings.setdefault(legacy, value)
        check_cu(endpoint_settings, "project.default_endpoint_settings")
        settings = spec.settings.model_dump(exclude_none=True) if spec.settings else {}
        p = ProjectRecord(
            id=project_id,
            project_id=project_id,
            name=spec.name or project_id,
            key=key,
            region_id=spec.region_id or "local",
            org_id=spec.org_id or DEFAULT_ORG,
            pg_version=spec.pg_version or 18,
            history_retention_seconds=spec.history_retention_seconds
            if spec.history_retention_seconds is not None
            else 86400,
            store_passwords=spec.store_passwords if spec.store_passwords is not None else True,
            settings=settings,
            default_endpoint_settings=endpoint_settings,
        )
        b = BranchRecord(
            id=neon_id("br"),
            project_id=project_id,
            name=(branch_spec.name if branch_spec else None) or "main",
            default=True,
            annotations=(branch_spec.annotations if branch_spec else None) or {},
        )
        e = EndpointRecord(
            id=neon_id("ep"),
            project_id=project_id,
            branch_id=b.id,
            autoscaling_limit_min_cu=endpoint_settings.get("autoscaling_limit_min_cu", 0.25),
            autoscaling_limit_max_cu=endpoint_settings.get("autoscaling_limit_max_cu", 0.25),
            suspend_timeout_seconds=endpoint_settings.get("suspend_timeout_seconds", 0),
        )
        r = RoleRecord(
            id=f"{project_id}/{role_name}",
            project_id=project_id,
            name=role_name,
            physical=f"{role_name}_{key}",
            password=new_password(),
        )
        d = DatabaseRecord(
            id=f"{b.id}/{db_name}",
            project_id=project_id,
            branch_id=b.id,
            name=db_name,
            owner_name=role_name,
            physical=f"lpd_{key}_{physical_key()}",
        )
        ops = [
            OperationRecord.new(project_id, "create_timeline", branch_id=b.id),
            OperationRecord.new(project_id, "start_compute", branch_id=b.id, endpoint_id=e.id),
        ]
        async with self._mutation(project_id) as m:
            await ensure_organization(m.tx, p.org_id or DEFAULT_ORG)
            await m.tx.put(p, b, e, r, d)
            await m.start(ops, "create_project", project_id=project_id)
        return {
            "project": render.project(p, host=self.host),
            "connection_uris": [self._details(r, d, e.id)],
            "roles": [render.role(r, branch_id=b.id, with_password=True)],
            "databases": [render.database(d)],
            "operations": [render.operation(o) for o in ops],
            "branch": render.branch(b),
            "endpoints": [self._endpoint_json(e, p)],
        }

    async def _job_create_project(self, args: JSON) -> None:
        project_id = args["project_id"]
        async with self._store.tx() as tx:
            p = await self._project(tx, project_id)
            roles = await tx.list(RoleRecord, project_id)
            dbs = await tx.list(DatabaseRecord, project_id)
        await self._engine.ensure_group_role(p.group_role)
        for r in roles:
            await self._engine.ensure_role(
                r.physical, r.password, p.group_role, login=not r.no_login
            )
        for d in dbs:
            owner = next(r.physical for r in roles if r.name == d.owner_name)
            await self._create_database(project_id, step.Create(d.physical, owner, p.group_role))
        await self._mark_ready(project_id)

    async def list_projects(
        self, *, org_id: str | None, limit: int, cursor: str | None, search: str | None
    ) -> JSON:
        async with self._store.tx() as tx:
            projects = await tx.list(ProjectRecord)
        if org_id is not None:
            projects = [p for p in projects if p.org_id == org_id]
        if search:
            projects = [p for p in projects if search in p.name or search in p.id]
        if cursor:
            ids = [p.id for p in projects]
            projects = projects[ids.index(cursor) + 1 :] if cursor in ids else []
        page = projects[:limit]
        async with self._store.tx() as tx:
            usage = await period_usage(tx, page)
        result: JSON = {
            "projects": [
                render.project_list_item(p, host=self.host, usage=usage[p.id]) for p in page
            ],
            "applications": {},
            "integrations": {},
        }
        # The spec wants a non-empty cursor or no pagination at all.
        next_cursor = page[-1].id if page else cursor
        if next_cursor:
            result["pagination"] = {"cursor": next_cursor}
        return result

    async def list_shared_projects(self) -> JSON:
        """Projects other accounts shared with this one: the local plane has one account, so
        none (Neon's answer for an account nobody shared a project with)."""
        return {"projects": []}

    async def get_project(self, project_id: str) -> JSON:
        async with self._store.tx() as tx:
            p = await self._project(tx, project_id)
            usage = await period_usage(tx, [p])
        return {"project": render.project(p, host=self.host, usage=usage[p.id])}

    async def update_project(self, project_id: str, body: ProjectUpdateBody) -> JSON:
        spec = body.project
        async with self._store.tx(project_id) as tx:
            p = await self._project(tx, project_id)
            if spec.name is not None:
                p.name = spec.name
            if spec.settings is not None:
                p.settings = {**p.settings, **spec.settings.model_dump(exclude_none=True)}
            if spec.default_endpoint_settings is not None:
                merged = {
                    **p.default_endpoint_settings,
                    **spec.default_endpoint_settings.model_dump(exclude_none=True),
                }
                check_cu(merged, "project.default_endpoint_settings")
                p.default_endpoint_settings = merged
            if spec.history_retention_seconds is not None:
                p.history_retention_seconds = spec.history_retention_seconds
            p.updated_at = now()
            await tx.put(p)
        if spec.settings is not None:
            await self.enforce_quotas(project_id)
        return await self.get_project(project_id) | {"operations": []}

    async def delete_project(self, project_id: str) -> JSON:
        async with self._store.tx(project_id) as tx:
            p = await self._project(tx, project_id)
            physicals = [d.physical for d in await tx.list(DatabaseRecord, project_id)]
            for s in await tx.list(SnapshotRecord, project_id):
                physicals.extend(phys for _owner, phys in s.databases.values())
            roles = [r.physical for r in await tx.list(RoleRecord, project_id)]
            await tx.delete_project(project_id)
        # The records are gone at once (as on Neon); the databases go in the background.
        self._schedule_cleanup(project_id, physicals, [*roles, p.group_role])
        await self._project_deleted(p)
        return {"project": render.project(p, host=self.host)}
