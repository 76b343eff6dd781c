"""Neon API v2 routes of the add-ons, Neon Auth and the Data API (under `/api/v2`, behind the API
key). The services they turn on are served outside `/api/v2`, without the API key:
`_auth_service` (`/neon-auth/...`) and `_data_api_service` (`/data-api/...`)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, patch, post
from litestar.params import FromPath

from ._data_api import DataApiCreateBody, DataApiUpdateBody
from ._neon_auth import (
    NeonAuthCreateBody,
    NeonAuthDeleteBody,
    OAuthProviderBody,
    OAuthProviderUpdateBody,
)
from ._routes import _body, _plane

JSON = dict[str, Any]
AnyRequest = Request[Any, Any, Any]
_AUTH = "/projects/{project_id:str}/branches/{branch_id:str}/auth"
_PROVIDER = _AUTH + "/oauth_providers/{provider_id:str}"
_DATA_API = "/projects/{project_id:str}/branches/{branch_id:str}/data-api/{database:str}"


def public_root(request: AnyRequest) -> str:
    """The base of the add-on URLs the plane hands out: `AGENTDB_PUBLIC_URL` (`agentdb serve`
    sets it to its own listener, which serves them), else the plane's URL as the client
    reached it."""
    configured: str | None = request.app.state.get("public_url")
    return (configured or str(request.base_url)).rstrip("/")


def _no_content() -> Response[bytes]:
    # Neon declares these 200 answers without a body.
    return Response(b"", status_code=200, media_type="application/json")


# --- Neon API: Neon Auth ----------------------------------------------------------------------


@post(_AUTH, status_code=201)
async def enable_neon_auth(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    body = await _body(request, NeonAuthCreateBody)
    return await _plane(request).enable_neon_auth(
        project_id, branch_id, body, root=public_root(request)
    )


@get(_AUTH)
async def get_neon_auth(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    return await _plane(request).get_neon_auth(project_id, branch_id, root=public_root(request))


@delete(_AUTH, status_code=200)
async def disable_neon_auth(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> Response[bytes]:
    body = await _body(request, NeonAuthDeleteBody, optional=True)
    await _plane(request).disable_neon_auth(project_id, branch_id, body)
    return _no_content()


@get(_AUTH + "/oauth_providers")
async def list_oauth_providers(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    return await _plane(request).list_oauth_providers(project_id, branch_id)


@post(_AUTH + "/oauth_providers", status_code=200)
async def add_oauth_provider(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    body = await _body(request, OAuthProviderBody)
    return await _plane(request).add_oauth_provider(project_id, branch_id, body)


@patch(_PROVIDER)
async def update_oauth_provider(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    provider_id: FromPath[str],
) -> JSON:
    body = await _body(request, OAuthProviderUpdateBody, optional=True)
    return await _plane(request).update_oauth_provider(project_id, branch_id, provider_id, body)


@delete(_PROVIDER, status_code=200)
async def delete_oauth_provider(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    provider_id: FromPath[str],
) -> Response[bytes]:
    await _plane(request).delete_oauth_provider(project_id, branch_id, provider_id)
    return _no_content()


# --- Neon API: Data API -----------------------------------------------------------------------


@post(_DATA_API, status_code=201)
async def create_data_api(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    database: FromPath[str],
) -> JSON:
    body = await _body(request, DataApiCreateBody, optional=True)
    return await _plane(request).create_data_api(
        project_id, branch_id, database, body, root=public_root(request)
    )


@get(_DATA_API)
async def get_data_api(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    database: FromPath[str],
) -> JSON:
    return await _plane(request).get_data_api(
        project_id, branch_id, database, root=public_root(request)
    )


@patch(_DATA_API, status_code=201)
async def update_data_api(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    database: FromPath[str],
) -> JSON:
    body = await _body(request, DataApiUpdateBody, optional=True)
    return await _plane(request).update_data_api(project_id, branch_id, database, body)


@delete(_DATA_API, status_code=200)
async def delete_data_api(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    database: FromPath[str],
) -> JSON:
    return await _plane(request).delete_data_api(project_id, branch_id, database)


NEON_ROUTES = [
    enable_neon_auth, get_neon_auth, disable_neon_auth, list_oauth_providers, add_oauth_provider,
    update_oauth_provider, delete_oauth_provider, create_data_api, get_data_api, update_data_api,
    delete_data_api,
]  # fmt: skip
