"""Neon Auth itself (Better Auth's protocol) at the base URL `auth_base_url` hands out:
`/neon-auth/{endpoint or branch id}/{database}/auth/...`, outside `/api/v2` and without the
plane's API key."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get, post
from litestar.params import FromPath

from ._addon_routes import public_root
from ._neon_auth import SignInBody, SignUpBody
from ._routes import _body, _plane

JSON = dict[str, Any]
AnyRequest = Request[Any, Any, Any]
_BASE = "/neon-auth/{address:str}/{database:str}/auth"


@get(_BASE + "/.well-known/jwks.json")
async def jwks(request: AnyRequest, address: FromPath[str], database: FromPath[str]) -> JSON:
    return await _plane(request).auth_jwks(address, database)


@post(_BASE + "/sign-up/email", status_code=200)
async def sign_up(request: AnyRequest, address: FromPath[str], database: FromPath[str]) -> JSON:
    body = await _body(request, SignUpBody)
    return await _plane(request).sign_up(address, database, body, root=public_root(request))


@post(_BASE + "/sign-in/email", status_code=200)
async def sign_in(request: AnyRequest, address: FromPath[str], database: FromPath[str]) -> JSON:
    body = await _body(request, SignInBody)
    return await _plane(request).sign_in(address, database, body, root=public_root(request))


AUTH_SERVICE = Router(path="/", route_handlers=[jwks, sign_up, sign_in])
