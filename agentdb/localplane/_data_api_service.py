"""The Data API itself, PostgREST-compatible (`_rest`), at the URL `data_api_url` hands out:
`/data-api/{endpoint or branch id}/{database}/rest/v1/...`, outside `/api/v2` and without the
plane's API key (requests carry the app's JWT, or none for the anonymous role)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from litestar import Request, Response, Router, route
from litestar.enums import HttpMethod
from litestar.params import FromPath

from ._errors import LocalPlaneError
from ._rest import RestRequest, serve
from ._rest_sql import PostgrestError
from ._routes import _plane

AnyRequest = Request[Any, Any, Any]
_BASE = "/data-api/{address:str}/{database:str}/rest/v1"
_METHODS = [m for m in HttpMethod if m is not HttpMethod.TRACE]


async def _serve(request: AnyRequest, address: str, database: str, path: str) -> Response[bytes]:
    try:
        target = await _plane(request).data_api_target(address, database)
    except LocalPlaneError as exc:
        raise PostgrestError(exc.status, exc.code, exc.message) from None
    reply = await serve(
        target,
        RestRequest(
            method=request.method,
            path=path.strip("/"),
            query=parse_qsl(request.url.query, keep_blank_values=True),
            headers={key.lower(): value for key, value in request.headers.items()},
            body=await request.body(),
        ),
    )
    headers = {"content-type": "application/json; charset=utf-8", **reply.headers}
    return Response(
        reply.body,
        status_code=reply.status,
        media_type=headers.pop("content-type"),
        headers=headers,
    )


@route(_BASE, http_method=_METHODS)
async def data_api_root(
    request: AnyRequest, address: FromPath[str], database: FromPath[str]
) -> Response[bytes]:
    return await _serve(request, address, database, "")


@route(_BASE + "/{path:path}", http_method=_METHODS)
async def data_api(
    request: AnyRequest, address: FromPath[str], database: FromPath[str], path: FromPath[str]
) -> Response[bytes]:
    return await _serve(request, address, database, path)


def _on_postgrest_error(_: AnyRequest, exc: PostgrestError) -> Response[bytes]:
    return Response(
        json.dumps(exc.body).encode(),
        status_code=exc.status,
        media_type="application/json; charset=utf-8",
    )


DATA_API = Router(
    path="/",
    route_handlers=[data_api_root, data_api],
    exception_handlers={PostgrestError: _on_postgrest_error},
)
