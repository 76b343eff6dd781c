"""Per-branch add-ons: Neon Auth (managed Better Auth) and the Data API (REST over a database)."""

from __future__ import annotations

from pydantic import Field

from ._base import ClientCore, drop_none, segment_path
from ._models import NeonModel
from ._models_platform import DataAPI, DataAPISettings, NeonAuth, NeonAuthCreated, OAuthProvider


class _Providers(NeonModel):
    providers: list[OAuthProvider] = Field(default_factory=list)


class _DataAPICreated(NeonModel):
    url: str


class AuthMixin(ClientCore):
    # --- Neon Auth ---------------------------------------------------------------------------

    async def enable_neon_auth(
        self,
        project_id: str,
        branch_id: str,
        *,
        auth_provider: str = "better_auth",
        database_name: str | None = None,
    ) -> NeonAuthCreated:
        """Turns on Neon Auth for a branch; its data lives in the branch database's `neon_auth`
        schema and follows branches and snapshots."""
        return await self._call(
            NeonAuthCreated,
            "POST",
            segment_path("projects", project_id, "branches", branch_id, "auth"),
            body=drop_none(auth_provider=auth_provider, database_name=database_name),
        )

    async def get_neon_auth(self, project_id: str, branch_id: str) -> NeonAuth:
        path = segment_path("projects", project_id, "branches", branch_id, "auth")
        return await self._call(NeonAuth, "GET", path)

    async def disable_neon_auth(
        self, project_id: str, branch_id: str, *, delete_data: bool = False
    ) -> None:
        """Turns Neon Auth off; `delete_data` also drops the `neon_auth` schema."""
        await self._request(
            "DELETE",
            segment_path("projects", project_id, "branches", branch_id, "auth"),
            body={"delete_data": delete_data},
        )

    async def list_oauth_providers(self, project_id: str, branch_id: str) -> list[OAuthProvider]:
        path = segment_path(
            "projects", project_id, "branches", branch_id, "auth", "oauth_providers"
        )
        return (await self._call(_Providers, "GET", path)).providers

    async def add_oauth_provider(
        self,
        project_id: str,
        branch_id: str,
        provider_id: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        microsoft_tenant_id: str | None = None,
    ) -> OAuthProvider:
        """Adds google | github | microsoft | vercel; without credentials Neon's shared keys."""
        return await self._call(
            OAuthProvider,
            "POST",
            segment_path("projects", project_id, "branches", branch_id, "auth", "oauth_providers"),
            body=drop_none(
                id=provider_id,
                client_id=client_id,
                client_secret=client_secret,
                microsoft_tenant_id=microsoft_tenant_id,
            ),
        )

    async def update_oauth_provider(
        self,
        project_id: str,
        branch_id: str,
        provider_id: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        microsoft_tenant_id: str | None = None,
    ) -> OAuthProvider:
        return await self._call(
            OAuthProvider,
            "PATCH",
            segment_path(
                "projects",
                project_id,
                "branches",
                branch_id,
                "auth",
                "oauth_providers",
                provider_id,
            ),
            body=drop_none(
                client_id=client_id,
                client_secret=client_secret,
                microsoft_tenant_id=microsoft_tenant_id,
            ),
        )

    async def delete_oauth_provider(
        self, project_id: str, branch_id: str, provider_id: str
    ) -> None:
        await self._request(
            "DELETE",
            segment_path(
                "projects",
                project_id,
                "branches",
                branch_id,
                "auth",
                "oauth_providers",
                provider_id,
            ),
        )

    # --- Data API ----------------------------------------------------------------------------

    async def create_data_api(
        self,
        project_id: str,
        branch_id: str,
        database_name: str,
        *,
        auth_provider: str | None = None,
        jwks_url: str | None = None,
        provider_name: str | None = None,
        jwt_audience: str | None = None,
        add_default_grants: bool | None = None,
        skip_auth_schema: bool | None = None,
        settings: DataAPISettings | None = None,
    ) -> str:
        """Serves `database_name` over REST; returns the Data API's URL. `auth_provider`:
        neon_auth | external (then `jwks_url`)."""
        created = await self._call(
            _DataAPICreated,
            "POST",
            segment_path("projects", project_id, "branches", branch_id, "data-api", database_name),
            body=drop_none(
                auth_provider=auth_provider,
                jwks_url=jwks_url,
                provider_name=provider_name,
                jwt_audience=jwt_audience,
                add_default_grants=add_default_grants,
                skip_auth_schema=skip_auth_schema,
                settings=settings,
            ),
        )
        return created.url

    async def get_data_api(self, project_id: str, branch_id: str, database_name: str) -> DataAPI:
        path = segment_path(
            "projects", project_id, "branches", branch_id, "data-api", database_name
        )
        return await self._call(DataAPI, "GET", path)

    async def update_data_api(
        self,
        project_id: str,
        branch_id: str,
        database_name: str,
        *,
        settings: DataAPISettings | None = None,
    ) -> None:
        """Changes settings and always refreshes the schema cache: call it after DDL."""
        await self._request(
            "PATCH",
            segment_path("projects", project_id, "branches", branch_id, "data-api", database_name),
            body=drop_none(settings=settings),
        )

    async def delete_data_api(self, project_id: str, branch_id: str, database_name: str) -> None:
        await self._request(
            "DELETE",
            segment_path("projects", project_id, "branches", branch_id, "data-api", database_name),
        )
