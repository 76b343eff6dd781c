"""The `/v1` routes of a session's add-ons: Neon Auth (`/auth`, its users and OAuth providers)
and the Data API (`/data-api`). Any token that reaches the session may use them, except that
only admin and user tokens turn them off (which can drop the app's users); Neon Auth's server
key is shown to admin and user tokens only."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from agentdb.services import Actor, AddonService, AuthView, DataApiView, OAuthProviderView
from agentdb.wire import (
    AddOAuthProvider,
    AuthOut,
    AuthUserList,
    EnableDataApi,
    OAuthProviderList,
    TokenMode,
    UpdateDataApi,
)

from ._auth import owner_guard, sees_secrets, session_guard

AnyRequest = Request[Any, Any, Any]
Addons = NamedDependency[AddonService]
ActorOf = NamedDependency[Actor]


async def _auth_out(request: AnyRequest, addons: AddonService, view: AuthView) -> AuthOut:
    key = None
    if view.enabled and sees_secrets(request):
        key = await addons.auth_secret_key(view.session_id)
    return AuthOut(**view.model_dump(), secret_server_key=key)


class SessionAuth(Controller):
    path = "/v1/sessions/{session_id:uuid}/auth"
    tags = ["auth"]  # noqa: RUF012 - Litestar's declaration style
    guards = [session_guard]  # noqa: RUF012

    @post("/", status_code=200, summary="Turn on Neon Auth for the session's database")
    async def enable(
        self,
        *,
        request: AnyRequest,
        addons: Addons,
        actor: ActorOf,
        session_id: FromPath[uuid.UUID],
    ) -> AuthOut:
        view = await addons.enable_auth(session_id, actor=actor)
        return await _auth_out(request, addons, view)

    @get("/", summary="Neon Auth's state and URLs")
    async def show(
        self, *, request: AnyRequest, addons: Addons, session_id: FromPath[uuid.UUID]
    ) -> AuthOut:
        return await _auth_out(request, addons, await addons.get_auth(session_id))

    @delete(
        "/",
        status_code=200,
        summary="Turn off Neon Auth",
        guards=[owner_guard],
        opt={"mode": TokenMode.FULL},
    )
    async def disable(
        self,
        *,
        request: AnyRequest,
        addons: Addons,
        actor: ActorOf,
        session_id: FromPath[uuid.UUID],
        delete_data: Annotated[
            bool, QueryParameter(description="Also drop the app's users (neon_auth schema).")
        ] = False,
    ) -> AuthOut:
        view = await addons.disable_auth(session_id, delete_data=delete_data, actor=actor)
        return await _auth_out(request, addons, view)

    @get("/users", summary="The app's signed-up users")
    async def users(
        self,
        *,
        addons: Addons,
        session_id: FromPath[uuid.UUID],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> AuthUserList:
        return AuthUserList(users=await addons.list_auth_users(session_id, limit=limit))

    @get("/oauth-providers", summary="Sign-in providers")
    async def providers(
        self, *, addons: Addons, session_id: FromPath[uuid.UUID]
    ) -> OAuthProviderList:
        return OAuthProviderList(providers=await addons.list_oauth_providers(session_id))

    @post("/oauth-providers", summary="Add a sign-in provider")
    async def add_provider(
        self,
        *,
        addons: Addons,
        actor: ActorOf,
        session_id: FromPath[uuid.UUID],
        data: JSONBody[AddOAuthProvider],
    ) -> OAuthProviderView:
        return await addons.add_oauth_provider(
            session_id,
            data.provider,
            client_id=data.client_id,
            client_secret=data.client_secret,
            actor=actor,
        )

    @delete("/oauth-providers/{provider:str}", status_code=200, summary="Remove a provider")
    async def remove_provider(
        self,
        *,
        addons: Addons,
        actor: ActorOf,
        session_id: FromPath[uuid.UUID],
        provider: FromPath[str],
    ) -> OAuthProviderList:
        await addons.delete_oauth_provider(session_id, provider, actor=actor)
        return OAuthProviderList(providers=await addons.list_oauth_providers(session_id))


class SessionDataApi(Controller):
    path = "/v1/sessions/{session_id:uuid}/data-api"
    tags = ["data-api"]  # noqa: RUF012
    guards = [session_guard]  # noqa: RUF012

    @post("/", status_code=200, summary="Serve the database over REST (with Neon Auth)")
    async def enable(
        self,
        *,
        addons: Addons,
        actor: ActorOf,
        session_id: FromPath[uuid.UUID],
        data: JSONBody[EnableDataApi | None] = None,
    ) -> DataApiView:
        data = data or EnableDataApi()
        return await addons.enable_data_api(
            session_id,
            add_default_grants=data.add_default_grants,
            cors_allowed_origins=data.cors_allowed_origins,
            actor=actor,
        )

    @get("/", summary="The Data API's state and URL")
    async def show(self, *, addons: Addons, session_id: FromPath[uuid.UUID]) -> DataApiView:
        return await addons.get_data_api(session_id)

    @patch("/", summary="Refresh the Data API's schema cache; change its browser origins")
    async def refresh(
        self,
        *,
        addons: Addons,
        actor: ActorOf,
        session_id: FromPath[uuid.UUID],
        data: JSONBody[UpdateDataApi | None] = None,
    ) -> DataApiView:
        origins = data.cors_allowed_origins if data else None
        return await addons.refresh_data_api(session_id, cors_allowed_origins=origins, actor=actor)

    @delete(
        "/",
        status_code=200,
        summary="Stop serving the database over REST",
        guards=[owner_guard],
        opt={"mode": TokenMode.FULL},
    )
    async def disable(
        self, *, addons: Addons, actor: ActorOf, session_id: FromPath[uuid.UUID]
    ) -> DataApiView:
        return await addons.disable_data_api(session_id, actor=actor)


ADDON_ROUTES = [SessionAuth, SessionDataApi]
