"""Running the local plane's app in-process: its lifespan, without an ASGI server, so it can be
reached through `httpx.ASGITransport` (which does not send lifespan events)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
