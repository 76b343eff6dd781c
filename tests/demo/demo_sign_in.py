"""Signing in to the demo in tests: the admin token the demo tests' agentdb is configured with,
and the sign-in form posted as a browser on the demo's own page posts it."""

from __future__ import annotations

import httpx

from demo import SIGN_IN_COOKIE

ADMIN_TOKEN = "adb_admin_demo_" + "x" * 40


async def sign_in(client: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> None:
    """Signs `client` in; it keeps sending the page's Origin, as a browser does."""
    client.headers["Origin"] = str(client.base_url).rstrip("/")
    response = await client.post("/demo/sign-in", data={"token": token})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/demo/"
    assert client.cookies.get(SIGN_IN_COOKIE)
