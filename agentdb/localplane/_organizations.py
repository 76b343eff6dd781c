"""Organizations of the local control plane, and moving projects between them.

Every project belongs to one: `org-local` unless it was created with another `org_id`, which
then comes into being on the fly (Neon would answer 404; agentdb's tiers and tests rely on it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._base import PlaneBase
from ._errors import NotFound
from ._models import OrganizationRecord, ProjectRecord, TransferBody, now
from ._render import ts
from ._store import Tx

JSON = dict[str, Any]
DEFAULT_ORG = "org-local"
_DEFAULT_ORG_NAME = "local"
# Organizations are not tied to a project; this lock serializes their creation and transfers.
_ORG_LOCK = "organizations"


def render_organization(o: OrganizationRecord) -> JSON:
    return {
        "id": o.id,
        "name": o.name,
        "handle": o.id,
        "plan": o.plan,
        "created_at": ts(o.created_at),
        "updated_at": ts(o.updated_at),
        "managed_by": "console",
        "allow_hipaa_projects": False,
        "require_mfa": False,
    }


async def ensure_organization(tx: Tx, org_id: str) -> OrganizationRecord:
    """The organization `org_id`, created if it does not exist yet."""
    found = await tx.get(OrganizationRecord, org_id)
    if found is not None:
        return found
    name = _DEFAULT_ORG_NAME if org_id == DEFAULT_ORG else org_id
    created = OrganizationRecord(id=org_id, project_id="", name=name)
    await tx.put(created)
    return created


class OrganizationsMixin(PlaneBase):
    async def ensure_organizations(self, org_ids: Iterable[str]) -> None:
        """Creates the default organization and `org_ids` unless they exist."""
        async with self._store.tx(_ORG_LOCK) as tx:
            for org_id in dict.fromkeys([DEFAULT_ORG, *org_ids]):
                await ensure_organization(tx, org_id)

    async def list_organizations(self) -> JSON:
        async with self._store.tx() as tx:
            orgs = await tx.list(OrganizationRecord)
        return {"organizations": [render_organization(o) for o in orgs]}

    async def get_organization(self, org_id: str) -> JSON:
        async with self._store.tx() as tx:
            found = await tx.get(OrganizationRecord, org_id)
        if found is None:
            raise NotFound(f"organization {org_id} not found")
        return render_organization(found)

    async def transfer_projects(self, source_org_id: str, body: TransferBody) -> JSON:
        """Moves every listed project to `destination_org_id`, or none of them."""
        ids = list(dict.fromkeys(body.project_ids))
        async with self._store.tx(_ORG_LOCK) as tx:
            if await tx.get(OrganizationRecord, source_org_id) is None:
                raise NotFound(f"source_org_id: organization {source_org_id} not found")
            destination = body.destination_org_id
            if await tx.get(OrganizationRecord, destination) is None:
                raise NotFound(f"destination_org_id: organization {destination} not found")
            projects = []
            for project_id in ids:
                p = await tx.get(ProjectRecord, project_id)
                if p is None:
                    raise NotFound(f"project_ids: project {project_id} not found")
                if (p.org_id or DEFAULT_ORG) != source_org_id:
                    raise NotFound(
                        f"project_ids: project {project_id} not found in organization "
                        f"{source_org_id}"
                    )
                projects.append(p)
            # All checks passed; rows are locked per project so a concurrent PATCH is not lost.
            # In id order, as every holder of several project locks takes them (the meter too):
            # two such holders can then never deadlock.
            for p in sorted(projects, key=lambda found: found.id):
                await tx.lock(p.id)
                fresh = await tx.get(ProjectRecord, p.id)
                if fresh is not None:
                    fresh.org_id, fresh.updated_at = destination, now()
                    await tx.put(fresh)
        return {}
