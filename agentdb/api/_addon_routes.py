"""The `/v1` routes of a session's add-ons: Neon Auth (`/auth`, its users and OAuth providers)
and the Data API (`/data-api`). Any token that reaches the session may use them, except that
only admin and user tokens turn them off (which can drop the app's users); Neon Auth's server
key is shown to admin and user tokens only."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter

from agentdb.services import AuthView, DataApiView, OAuthProviderView
from agentdb.wire import (
    AddOAuthProvider,
    AuthOut,
    AuthUserList,
    EnableDataApi,
    OAuthProviderList,
)

from ._auth import actor_of, reachable_session, require_owner, runtime_of, sees_secrets

AnyRequest = Request[Any, Any, Any]


async def _auth_out(request: AnyRequest, view: AuthView) -> AuthOut:
    key = None
    if view.enabled and sees_secrets(request):
        key = await runtime_of(request.scope).addons.auth_secret_key(view.session_id)
    return AuthOut(**view.model_dump(), secret_server_key=key)


class SessionAuth(Controller):
    path = "/v1/sessions/{session_id:uuid}/auth"
    tags = ["auth"]  # noqa: RUF012 - Litestar's declaration style

    @post("/", status_code=200, summary="Turn on Neon Auth for the session's database")
    async def enable(self, request: AnyRequest, session_id: FromPath[uuid.UUID]) -> AuthOut:
        await reachable_session(request, session_id)
        addons = runtime_of(request.scope).addons
        return await _auth_out(
            request, await addons.enable_auth(session_id, actor=actor_of(request))
        )

    @get("/", summary="Neon Auth's state and URLs")
    async def show(self, request: AnyRequest, session_id: FromPath[uuid.UUID]) -> AuthOut:
        await reachable_session(request, session_id)
        return await _auth_out(request, await runtime_of(request.scope).addons.get_auth(session_id))

    @delete("/", status_code=200, summary="Turn off Neon Auth")
    async def disable(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        delete_data: Annotated[
            bool, QueryParameter(description="Also drop the app's users (neon_auth schema).")
        ] = False,
    ) -> AuthOut:
        await reachable_session(request, session_id)
        require_owner(request)
        view = await runtime_of(request.scope).addons.disable_auth(
            session_id, delete_data=delete_data, actor=actor_of(request)
        )
        return await _auth_out(request, view)

    @get("/users", summary="The app's signed-up users")
    async def users(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> AuthUserList:
        await reachable_session(request, session_id)
        addons = runtime_of(request.scope).addons
        return AuthUserList(users=await addons.list_auth_users(session_id, limit=limit))

    @get("/oauth-providers", summary="Sign-in providers")
    async def providers(
        self, request: AnyRequest, session_id: FromPath[uuid.UUID]
    ) -> OAuthProviderList:
        await reachable_session(request, session_id)
        addons = runtime_of(request.scope).addons
        return OAuthProviderList(providers=await addons.list_oauth_providers(session_id))

    @post("/oauth-providers", summary="Add a sign-in provider")
    async def add_provider(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        data: JSONBody[AddOAuthProvider],
    ) -> OAuthProviderView:
        await reachable_session(request, session_id)
        return await runtime_of(request.scope).addons.add_oauth_provider(
            session_id,
            data.provider,
            client_id=data.client_id,
            client_secret=data.client_secret,
            actor=actor_of(request),
        )

    @delete("/oauth-providers/{provider:str}", status_code=200, summary="Remove a provider")
    async def remove_provider(
        self, request: AnyRequest, session_id: FromPath[uuid.UUID], provider: FromPath[str]
    ) -> OAuthProviderList:
        await reachable_session(request, session_id)
        addons = runtime_of(request.scope).addons
        await addons.delete_oauth_provider(session_id, provider, actor=actor_of(request))
        return OAuthProviderList(providers=await addons.list_oauth_providers(session_id))


class SessionDataApi(Controller):
    path = "/v1/sessions/{session_id:uuid}/data-api"
    tags = ["data-api"]  # noqa: RUF012

    @post("/", status_code=200, summary="Serve the database over REST (with Neon Auth)")
    async def enable(
        self,
        request: AnyRequest,
        session_id: FromPath[uuid.UUID],
        data: JSONBody[EnableDataApi | None] = None,
    ) -> DataApiView:
        await reachable_session(request, session_id)
        data = data or EnableDataApi()
        return await runtime_of(request.scope).addons.enable_data_api(
            session_id, add_default_grants=data.add_default_grants, actor=actor_of(request)
        )

    @get("/", summary="The Data API's state and URL")
    async def show(self, request: AnyRequest, session_id: FromPath[uuid.UUID]) -> DataApiView:
        await reachable_session(request, session_id)
        return await runtime_of(request.scope).addons.get_data_api(session_id)

    @patch("/", summary="Refresh the Data API's schema cache")
    async def refresh(self, request: AnyRequest, session_id: FromPath[uuid.UUID]) -> DataApiView:
        await reachable_session(request, session_id)
        return await runtime_of(request.scope).addons.refresh_data_api(
            session_id, actor=actor_of(request)
        )

    @delete("/", status_code=200, summary="Stop serving the database over REST")
    async def disable(self, request: AnyRequest, session_id: FromPath[uuid.UUID]) -> DataApiView:
        await reachable_session(request, session_id)
        require_owner(request)
        return await runtime_of(request.scope).addons.disable_data_api(
            session_id, actor=actor_of(request)
        )


ADDON_ROUTES = [SessionAuth, SessionDataApi]
