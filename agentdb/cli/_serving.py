"""Serving an ASGI app with uvicorn on a socket the command bound itself: imported only by the
commands that serve, so the client commands start quickly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn
from litestar.types import ASGIApp

from agentdb._logging import uvicorn_log_config

from ._main import CommandError


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown, which would kill the
    process before the embedded PostgreSQL is stopped; this one just returns."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def serve(asgi: ASGIApp, host: str, listener: socket.socket, *, what: str, path: str) -> None:
    server = _Server(
        uvicorn.Config(asgi, log_level="warning", lifespan="on", log_config=uvicorn_log_config())
    )
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started and not serving.done():
        await asyncio.wait([serving], timeout=0.05)
    if serving.done():
        # uvicorn raises SystemExit when the app's startup fails; report it as one line.
        with contextlib.suppress(SystemExit):
            await serving
        raise CommandError(f"the {what} could not start; see the messages above")
    bound = listener.getsockname()[1]
    print(f"{what}: http://{host}:{bound}{path}", flush=True)  # noqa: T201
    await serving
