"""Computes and what lives on a branch: endpoints, roles, databases, connection URIs."""

from __future__ import annotations

from pydantic import Field, SecretStr

from ._base import ClientCore, drop_none, segment_path
from ._models import (
    Database,
    DatabaseChanged,
    Endpoint,
    EndpointChanged,
    EndpointSettings,
    NeonModel,
    Role,
    RoleChanged,
)


class _Endpoints(NeonModel):
    endpoints: list[Endpoint] = Field(default_factory=list)


class _EndpointEnvelope(NeonModel):
    endpoint: Endpoint


class _Roles(NeonModel):
    roles: list[Role] = Field(default_factory=list)


class _Databases(NeonModel):
    databases: list[Database] = Field(default_factory=list)


class _Password(NeonModel):
    password: SecretStr


class _URI(NeonModel):
    uri: SecretStr


class ComputeMixin(ClientCore):
    # --- endpoints -------------------------------------------------------------------------------

    async def list_endpoints(
        self, project_id: str, *, branch_id: str | None = None
    ) -> list[Endpoint]:
        """A project's computes, or one branch's."""
        path = (
            segment_path("projects", project_id, "branches", branch_id, "endpoints")
            if branch_id
            else segment_path("projects", project_id, "endpoints")
        )
        return (await self._call(_Endpoints, "GET", path)).endpoints

    async def get_endpoint(self, project_id: str, endpoint_id: str) -> Endpoint:
        path = segment_path("projects", project_id, "endpoints", endpoint_id)
        return (await self._call(_EndpointEnvelope, "GET", path)).endpoint

    async def update_endpoint(
        self,
        project_id: str,
        endpoint_id: str,
        *,
        autoscaling_limit_min_cu: float | None = None,
        autoscaling_limit_max_cu: float | None = None,
        suspend_timeout_seconds: int | None = None,
        disabled: bool | None = None,
        name: str | None = None,
        settings: EndpointSettings | None = None,
        wait: bool = True,
    ) -> EndpointChanged:
        """Changes a compute; an idle one wakes briefly to apply it. `suspend_timeout_seconds`:
        0 = Neon's default (300 s), -1 = never suspend."""
        endpoint = drop_none(
            autoscaling_limit_min_cu=autoscaling_limit_min_cu,
            autoscaling_limit_max_cu=autoscaling_limit_max_cu,
            suspend_timeout_seconds=suspend_timeout_seconds,
            disabled=disabled,
            name=name,
            settings=settings,
        )
        return await self._mutate(
            EndpointChanged,
            "PATCH",
            segment_path("projects", project_id, "endpoints", endpoint_id),
            project_id=project_id,
            wait=wait,
            body={"endpoint": endpoint},
        )

    async def start_endpoint(
        self, project_id: str, endpoint_id: str, *, wait: bool = True
    ) -> EndpointChanged:
        return await self._mutate(
            EndpointChanged,
            "POST",
            segment_path("projects", project_id, "endpoints", endpoint_id, "start"),
            project_id=project_id,
            wait=wait,
        )

    async def suspend_endpoint(
        self, project_id: str, endpoint_id: str, *, wait: bool = True
    ) -> EndpointChanged:
        return await self._mutate(
            EndpointChanged,
            "POST",
            segment_path("projects", project_id, "endpoints", endpoint_id, "suspend"),
            project_id=project_id,
            wait=wait,
        )

    # --- roles -----------------------------------------------------------------------------------

    async def list_roles(self, project_id: str, branch_id: str) -> list[Role]:
        path = segment_path("projects", project_id, "branches", branch_id, "roles")
        return (await self._call(_Roles, "GET", path)).roles

    async def create_role(
        self,
        project_id: str,
        branch_id: str,
        name: str,
        *,
        no_login: bool | None = None,
        wait: bool = True,
    ) -> RoleChanged:
        """Creates a role (name at most 63 bytes); its password is in the answer. Neon drops
        the open connections of the branch's compute."""
        return await self._mutate(
            RoleChanged,
            "POST",
            segment_path("projects", project_id, "branches", branch_id, "roles"),
            project_id=project_id,
            wait=wait,
            body={"role": drop_none(name=name, no_login=no_login)},
        )

    async def reveal_password(self, project_id: str, branch_id: str, role_name: str) -> SecretStr:
        """A role's password (`NeonBadRequest` with status 412 if the project does not store
        passwords). A GET, as the spec says; neon-api 0.3.0 wrongly POSTs."""
        path = segment_path(
            "projects", project_id, "branches", branch_id, "roles", role_name, "reveal_password"
        )
        return (await self._call(_Password, "GET", path)).password

    async def reset_password(
        self, project_id: str, branch_id: str, role_name: str, *, wait: bool = True
    ) -> RoleChanged:
        """A new password (in the answer); the old one works until the operations finish."""
        return await self._mutate(
            RoleChanged,
            "POST",
            segment_path(
                "projects", project_id, "branches", branch_id, "roles", role_name, "reset_password"
            ),
            project_id=project_id,
            wait=wait,
        )

    # --- databases -------------------------------------------------------------------------------

    async def list_databases(self, project_id: str, branch_id: str) -> list[Database]:
        path = segment_path("projects", project_id, "branches", branch_id, "databases")
        return (await self._call(_Databases, "GET", path)).databases

    async def create_database(
        self,
        project_id: str,
        branch_id: str,
        name: str,
        *,
        owner_name: str,
        wait: bool = True,
    ) -> DatabaseChanged:
        return await self._mutate(
            DatabaseChanged,
            "POST",
            segment_path("projects", project_id, "branches", branch_id, "databases"),
            project_id=project_id,
            wait=wait,
            body={"database": {"name": name, "owner_name": owner_name}},
        )

    async def delete_database(
        self, project_id: str, branch_id: str, name: str, *, wait: bool = True
    ) -> DatabaseChanged | None:
        """Drops a database; None when Neon answers 204 (already gone)."""
        path = segment_path("projects", project_id, "branches", branch_id, "databases", name)
        return await self._delete(DatabaseChanged, path, project_id=project_id, wait=wait)

    # --- connection URI --------------------------------------------------------------------------

    async def connection_uri(
        self,
        project_id: str,
        *,
        database_name: str,
        role_name: str,
        branch_id: str | None = None,
        endpoint_id: str | None = None,
        pooled: bool | None = None,
    ) -> SecretStr:
        """A `postgresql://` URI with the password (needs stored passwords). `branch_id`
        defaults to the default branch, `endpoint_id` to its read_write compute; `pooled`
        gives the `-pooler` host."""
        found = await self._call(
            _URI,
            "GET",
            segment_path("projects", project_id, "connection_uri"),
            params={
                "database_name": database_name,
                "role_name": role_name,
                "branch_id": branch_id,
                "endpoint_id": endpoint_id,
                "pooled": pooled,
            },
        )
        return found.uri
