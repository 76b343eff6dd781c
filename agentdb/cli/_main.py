"""The `agentdb` command (cyclopts). Commands are thin: parse, call, print; failures are one
line on stderr and a non-zero exit code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import cyclopts
import structlog
import uvicorn
from litestar import Litestar
from pydantic import ValidationError

from agentdb.api import create_app as create_api
from agentdb.localplane import Faults, create_app
from agentdb.pg import PostgresError, open_server
from agentdb.runtime import StartupError, open_runtime
from agentdb.settings import Settings

app = cyclopts.App(
    name="agentdb",
    help="Isolated, checkpointable Postgres for every AI-agent session.",
)
localplane = cyclopts.App(
    name="localplane",
    help="The local, Neon-compatible control plane over an embedded PostgreSQL.",
)
app.command(localplane)


class CommandError(Exception):
    """A failure to report as one line and exit code 2."""


Port = Annotated[int, cyclopts.Parameter(validator=cyclopts.validators.Number(gte=0, lte=65535))]


@app.command(name="serve")
async def serve_api(
    *,
    host: str = "127.0.0.1",
    port: Port = 8000,
    data_dir: Path | None = None,
) -> None:
    """Run agentdb: the REST API at http://HOST:PORT/v1 over the embedded PostgreSQL and the
    local control plane (or Neon cloud with AGENTDB_NEON_API_KEY).

    Parameters
    ----------
    host
        Interface to listen on.
    port
        TCP port; 0 picks a free one.
    data_dir
        Where the embedded PostgreSQL and the generated secret key live
        (default: AGENTDB_DATA_DIR or a per-user folder).
    """
    settings = _settings(data_dir)
    with _listen(host, port) as listener:
        try:
            async with open_runtime(settings) as runtime:
                if runtime.new_admin_token is not None:
                    token = runtime.new_admin_token.get_secret_value()
                    print(f"agentdb admin token (shown once, keep it): {token}", flush=True)  # noqa: T201
                await _serve(
                    create_api(runtime),
                    host,
                    listener,
                    what="agentdb API",
                    path="/v1 (OpenAPI: /schema)",
                )
        except StartupError as exc:
            raise CommandError(str(exc)) from None


def _settings(data_dir: Path | None) -> Settings:
    try:
        settings = Settings(data_dir=data_dir) if data_dir is not None else Settings()
        Faults.parse(settings.localplane_faults)
    except (ValidationError, ValueError) as exc:
        raise CommandError(_first_line(exc)) from exc
    return settings


@contextlib.contextmanager
def _listen(host: str, port: int) -> Iterator[socket.socket]:
    # The socket is bound and PostgreSQL started before uvicorn runs, so their failures reach
    # the user as one line instead of a server traceback.
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    with listener:
        yield listener


@localplane.command
async def serve(
    *,
    host: str = "127.0.0.1",
    port: Port = 4010,
    data_dir: Path | None = None,
) -> None:
    """Serve the Neon API v2 subset at http://HOST:PORT/api/v2 (port 0 picks a free one).

    Parameters
    ----------
    host
        Interface to listen on.
    port
        TCP port; 0 picks a free one.
    data_dir
        Where the embedded PostgreSQL keeps its data
        (default: AGENTDB_DATA_DIR or a per-user folder).
    """
    settings = _settings(data_dir)
    with _listen(host, port) as listener:
        async with open_server(settings) as info:
            await _serve(
                create_app(settings, server=info),
                host,
                listener,
                what="agentdb local control plane",
                path="/api/v2",
            )


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


async def _serve(
    asgi: Litestar, host: str, listener: socket.socket, *, what: str, path: str
) -> None:
    server = _Server(uvicorn.Config(asgi, log_level="warning", lifespan="on"))
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


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        field = ".".join(str(part) for part in err["loc"])
        return f"AGENTDB_{field.upper()}: {err['msg']}"
    return str(exc).strip().splitlines()[0]


def _log_level() -> int:
    try:
        name = Settings().log_level
    except ValidationError:
        name = "info"  # the command itself reports the bad setting
    return logging.getLevelNamesMapping()[name.upper()]


def main() -> None:
    # Logs go to stderr: stdout carries what scripts read (the served URL). Debug lines (every
    # control-plane request, every SQL call) only with AGENTDB_LOG_LEVEL=debug.
    level = _log_level()
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr)
    try:
        result = app(exit_on_error=False, print_error=False, help_on_error=False)
    except cyclopts.CycloptsError as exc:
        print(f"agentdb: error: {_first_line(exc)}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    except (CommandError, PostgresError) as exc:
        print(f"agentdb: error: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    if isinstance(result, int):
        sys.exit(result)
