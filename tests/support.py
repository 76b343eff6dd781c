"""Test support shared across packages: run an app's lifespan, build a validating client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from contract.openapi import NeonSpec
from litestar import Litestar


@asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[Litestar]:
    """Runs the app's lifespan in a task of its own: Litestar's lifespan holds an anyio cancel
    scope, which must be left by the task that entered it (fixture teardown runs in another)."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def life() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(life())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        await task  # raises the startup error
    try:
        yield app
    finally:
        stop.set()
        await task


def client_for(
    app: Litestar,
    spec: NeonSpec,
    token: str | None = "test-key",  # noqa: S107
    *,
    validate_requests: bool = True,
) -> httpx.AsyncClient:
    """A client of the in-process local plane that checks every response against Neon's
    OpenAPI document, and every request too unless the test sends bad requests on purpose."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    hooks = {
        "request": [spec.request_hook()] if validate_requests else [],
        "response": [spec.response_hook()],
    }
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://localplane/api/v2",
        headers=headers,
        timeout=60,
        event_hooks=hooks,
    )
