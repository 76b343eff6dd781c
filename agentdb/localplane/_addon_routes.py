"""HTTP face of the add-ons: Neon API v2 routes for Neon Auth and the Data API (under `/api/v2`,
behind the API key), and the services they turn on, outside `/api/v2` and without the API key:
`/auth/{project}/{branch}/...` (JWKS, sign-up, sign-in) and
`/data-api/{project}/{branch}/{database}/rest/v1/{table}` (PostgREST-compatible)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from litestar import Request, Response, Router, delete, get, patch, post, route
from litestar.params import FromPath

from ._data_api import DataApiCreateBody, DataApiUpdateBody
from ._errors import LocalPlaneError
from ._neon_auth import (
    NeonAuthCreateBody,
    NeonAuthDeleteBody,
    OAuthProviderBody,
    OAuthProviderUpdateBody,
    SignInBody,
    SignUpBody,
)
from ._rest import RestRequest, serve
from ._rest_sql import PostgrestError
from ._routes import _body, _plane

JSON = dict[str, Any]
AnyRequest = Request[Any, Any, Any]
_AUTH = "/projects/{project_id:str}/branches/{branch_id:str}/auth"
_PROVIDER = _AUTH + "/oauth_providers/{provider_id:str}"
_DATA_API = "/projects/{project_id:str}/branches/{branch_id:str}/data-api/{database:str}"


def _root(request: AnyRequest) -> str:
    """The plane's own URL as the client reached it: the base of the URLs it hands out."""
    return str(request.base_url).rstrip("/")


def _no_content() -> Response[bytes]:
    # Neon declares these 200 answers without a body.
    return Response(b"", status_code=200, media_type="application/json")


# --- Neon API: Neon Auth ----------------------------------------------------------------------


@post(_AUTH, status_code=201)
async def enable_neon_auth(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    body = await _body(request, NeonAuthCreateBody)
    return await _plane(request).enable_neon_auth(project_id, branch_id, body, root=_root(request))


@get(_AUTH)
async def get_neon_auth(
    request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]
) -> JSON:
    return await _plane(request).get_neon_auth(project_id, branch_id, root=_root(request))


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
        project_id, branch_id, database, body, root=_root(request)
    )


@get(_DATA_API)
async def get_data_api(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    database: FromPath[str],
) -> JSON:
    return await _plane(request).get_data_api(project_id, branch_id, database, root=_root(request))


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


# --- the auth service -------------------------------------------------------------------------

_SERVICE = "/auth/{project_id:str}/{branch_id:str}"


@get(_SERVICE + "/.well-known/jwks.json")
async def jwks(request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]) -> JSON:
    return await _plane(request).auth_jwks(project_id, branch_id)


@post(_SERVICE + "/sign-up/email", status_code=200)
async def sign_up(request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]) -> JSON:
    body = await _body(request, SignUpBody)
    return await _plane(request).sign_up(project_id, branch_id, body, root=_root(request))


@post(_SERVICE + "/sign-in/email", status_code=200)
async def sign_in(request: AnyRequest, project_id: FromPath[str], branch_id: FromPath[str]) -> JSON:
    body = await _body(request, SignInBody)
    return await _plane(request).sign_in(project_id, branch_id, body, root=_root(request))


# --- the Data API -----------------------------------------------------------------------------


@route(
    "/data-api/{project_id:str}/{branch_id:str}/{database:str}/rest/v1/{table:str}",
    http_method=["GET", "POST", "PATCH", "DELETE"],
)
async def data_api(
    request: AnyRequest,
    project_id: FromPath[str],
    branch_id: FromPath[str],
    database: FromPath[str],
    table: FromPath[str],
) -> Response[bytes]:
    try:
        target = await _plane(request).data_api_target(project_id, branch_id, database)
    except LocalPlaneError as exc:
        raise PostgrestError(exc.status, exc.code, exc.message) from None
    reply = await serve(
        target,
        RestRequest(
            method=request.method,
            table=table,
            query=parse_qsl(request.url.query, keep_blank_values=True),
            headers={key.lower(): value for key, value in request.headers.items()},
            body=await request.body(),
        ),
    )
    return Response(
        reply.body,
        status_code=reply.status,
        media_type="application/json; charset=utf-8",
        headers=reply.headers,
    )


def _on_postgrest_error(_: AnyRequest, exc: PostgrestError) -> Response[bytes]:
    return Response(
        json.dumps(exc.body).encode(),
        status_code=exc.status,
        media_type="application/json; charset=utf-8",
    )


SERVICES = Router(
    path="/",
    route_handlers=[jwks, sign_up, sign_in, data_api],
    exception_handlers={PostgrestError: _on_postgrest_error},
)
