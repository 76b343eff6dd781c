"""The `agentdb` command (cyclopts). Commands are thin: parse, call, print; failures are one
line on stderr and a non-zero exit code."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import cyclopts

from agentdb._logging import configure_logging

from ._base import HELP, WHERE_TOKENS_COME_FROM, ClientError

if TYPE_CHECKING:
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

# The operator commands: clients of `agentdb serve`, each loaded when called.
app.help = (
    f"{app.help}\n\nThe operator commands (users, sessions, tokens, sql, checkpoints, branches, "
    f"migrations) "
    f"talk to a running `agentdb serve` (--url / AGENTDB_URL) with a token "
    f"(--token / AGENTDB_TOKEN): {WHERE_TOKENS_COME_FROM}. Exit codes: 1 when the operation "
    f"fails, 2 when the command line is wrong."
)
for _name in ("users", "sessions", "tokens", "sql", "checkpoints", "branches"):
    app.command(f"agentdb.cli._commands:{_name}", name=_name, help=HELP[_name])
app.command("agentdb.cli._migrations:migrations", name="migrations", help=HELP["migrations"])
# The chat demo alone (agentdb/cli/_demo.py), loaded when called.
app.command(
    "agentdb.cli._demo:run_demo",
    name="demo",
    help="Run the chat demo alone at http://HOST:PORT/demo/ on the embedded PostgreSQL.",
)


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
    # Imported here, not at the top: the client commands start without the server's modules.
    from agentdb.api import create_app as create_api  # noqa: PLC0415
    from agentdb.api import with_addons  # noqa: PLC0415
    from agentdb.pg import PostgresError  # noqa: PLC0415
    from agentdb.runtime import StartupError, open_runtime  # noqa: PLC0415
    from agentdb.tools.mcp_http import McpHttp  # noqa: PLC0415
    from demo import create_demo_app, listen_refusal, open_demo, with_demo  # noqa: PLC0415

    from ._serving import serve  # noqa: PLC0415

    settings = _settings(data_dir)
    # The chat demo at /demo/, beside the API (not inside it: it has its own sign-in). By
    # default it is off where sessions cost money (Neon cloud) and where listen_refusal says
    # it must not listen; asked for there, the command refuses.
    serve_demo = settings.demo if settings.demo is not None else not settings.uses_neon_cloud
    refusal = listen_refusal(host, settings) if serve_demo else None
    if refusal is not None and settings.demo:
        raise CommandError(f"{refusal}, or unset AGENTDB_DEMO to serve the API alone")
    if refusal is not None:
        serve_demo = False
        print(f"agentdb: {refusal}; serving the API without it", flush=True)  # noqa: T201
    with _listen(host, port) as listener:
        if settings.public_url is None:  # the add-on URLs the plane hands out name this listener
            public_url = f"http://{_url_host(host)}:{listener.getsockname()[1]}"
            settings = settings.model_copy(update={"public_url": public_url})
        try:
            async with open_runtime(settings) as runtime:
                if runtime.new_admin_token is not None:
                    token = runtime.new_admin_token.get_secret_value()
                    print(f"agentdb admin token (shown once, keep it): {token}", flush=True)  # noqa: T201
                api = create_api(runtime)
                mcp = McpHttp(api)  # MCP over streamable HTTP, each request with its own token
                api.register(mcp.route)
                async with (
                    mcp.running(),
                    open_demo(runtime, api) if serve_demo else contextlib.nullcontext() as demo,
                ):
                    served = with_addons(api, runtime.plane_app)
                    addons = ", Neon Auth: /neon-auth, Data API: /data-api"
                    await serve(
                        served if demo is None else with_demo(served, create_demo_app(demo)),
                        host,
                        listener,
                        what="agentdb API",
                        path="/v1 (OpenAPI: /schema, MCP: /mcp"
                        + (addons if runtime.plane_app else "")
                        + (", demo: /demo/)" if demo is not None else ")"),
                    )
        except (StartupError, PostgresError) as exc:
            raise CommandError(str(exc)) from None


@app.command(name="mcp")
async def mcp_stdio(
    *,
    url: str | None = None,
    token: str | None = None,
    data_dir: Path | None = None,
) -> None:
    """Serve agentdb's tools to an MCP client (Claude Desktop, an IDE agent...) over stdio.
    stdout is the MCP channel; logs go to stderr.

    Parameters
    ----------
    url
        A running `agentdb serve` to call (default: AGENTDB_URL). Without one, agentdb runs
        embedded in this process and every tool takes a `session_id`.
    token
        Bearer token for URL (default: AGENTDB_TOKEN, which keeps it out of the process
        list). A session token scopes the tools to its one session.
    data_dir
        Where the embedded PostgreSQL lives when no URL is given
        (default: AGENTDB_DATA_DIR or a per-user folder).
    """
    import httpx  # noqa: PLC0415 - the MCP server's modules load only for this command

    from agentdb.sdk import AgentDB  # noqa: PLC0415
    from agentdb.tools import ToolError, serve_stdio  # noqa: PLC0415

    settings = _settings(data_dir, server=False)
    url = url or settings.url
    if url is None:
        if token is not None:
            raise CommandError("--token needs --url (without a URL agentdb mcp runs embedded)")
        _settings(data_dir)  # embedded: the server's settings count too
        # Embedded: the server's modules load, and so may its errors.
        from agentdb.pg import PostgresError  # noqa: PLC0415
        from agentdb.runtime import StartupError  # noqa: PLC0415

        client, secret = AgentDB.local(settings=settings), None
        failures: tuple[type[Exception], ...] = (ToolError, StartupError, PostgresError)
    else:
        secret = token or (settings.token.get_secret_value() if settings.token else None)
        if not secret:
            raise CommandError("AGENTDB_TOKEN (or --token) is required with a URL")
        client, failures = AgentDB.connect(url, secret), (ToolError,)
    try:
        await serve_stdio(client, token=secret)
    except failures as exc:
        raise CommandError(str(exc)) from None
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach agentdb at {url}: {exc!r}") from None


def _settings(data_dir: Path | None, *, server: bool = True) -> Settings:
    """The settings, refused as one line when invalid; with `server`, also the settings only
    a server reads (whose parsers load the server's modules: a client skips them)."""
    from pydantic import ValidationError  # noqa: PLC0415 - the settings load when a command needs them

    from agentdb.settings import Settings  # noqa: PLC0415

    try:
        settings = Settings(data_dir=data_dir) if data_dir is not None else Settings()
        if server:
            _check_server_settings(settings)
    except (ValidationError, ValueError) as exc:
        raise CommandError(_first_line(exc)) from exc
    return settings


def _check_server_settings(settings: Settings) -> None:
    from agentdb.localplane._faults import Faults  # noqa: PLC0415
    from agentdb.services import WorkflowKillSwitch  # noqa: PLC0415

    Faults.parse(settings.localplane_faults)
    WorkflowKillSwitch(settings.kill_at)


@contextlib.contextmanager
def _listen(host: str, port: int) -> Iterator[socket.socket]:
    # The socket is bound and PostgreSQL started before uvicorn runs, so their failures reach
    # the user as one line instead of a server traceback.
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family)
        # Answers go out at once, not after the client's delayed ACK (about 40 ms a request on
        # a kept-open connection). asyncio sets TCP_NODELAY only on sockets created with
        # IPPROTO_TCP, which `create_server`'s are not; accepted sockets inherit it from here.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
    from agentdb.localplane import create_app  # noqa: PLC0415
    from agentdb.pg import PostgresError, open_server  # noqa: PLC0415

    from ._serving import serve  # noqa: PLC0415

    settings = _settings(data_dir)
    with _listen(host, port) as listener:
        try:
            async with open_server(settings) as info:
                await serve(
                    create_app(settings, server=info),
                    host,
                    listener,
                    what="agentdb local control plane",
                    path="/api/v2",
                )
        except PostgresError as exc:
            raise CommandError(str(exc)) from None


@localplane.command
def ca(*, data_dir: Path | None = None) -> None:
    """Print the path of the certificate authority that signs the connection proxy's
    certificate (made on first use), for `sslmode=verify-full&sslrootcert=PATH` or
    `NODE_EXTRA_CA_CERTS=PATH`.

    Parameters
    ----------
    data_dir
        The local plane's data directory (default: AGENTDB_DATA_DIR or a per-user folder).
    """
    from agentdb.localplane import tls_files  # noqa: PLC0415

    settings = _settings(data_dir)
    try:
        files = tls_files(settings)
    except OSError as exc:
        raise CommandError(f"cannot make the CA under {settings.data_dir}: {exc}") from None
    print(files.ca_cert)  # noqa: T201 - the command's answer


def _url_host(host: str) -> str:
    """`host` as a URL names it; a wildcard address becomes the loopback one, which a browser
    on the same machine reaches."""
    if host in {"", "0.0.0.0"}:  # noqa: S104 - compared, not bound
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _first_line(exc: BaseException) -> str:
    from pydantic import ValidationError  # noqa: PLC0415

    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        field = ".".join(str(part) for part in err["loc"])
        return f"AGENTDB_{field.upper()}: {err['msg']}"
    return str(exc).strip().splitlines()[0]


def _log_settings() -> tuple[int, bool]:
    """The log level, and whether lines are JSON."""
    from pydantic import ValidationError  # noqa: PLC0415

    from agentdb.settings import Settings  # noqa: PLC0415

    try:
        settings = Settings()
        name, json = settings.log_level, settings.log_format == "json"
    except ValidationError:
        name, json = "info", False  # the command itself reports the bad setting
    return logging.getLevelNamesMapping()[name.upper()], json


#: The commands that run agentdb's server parts (the others are clients of `agentdb serve`).
SERVER_COMMANDS = frozenset({"serve", "demo", "localplane", "mcp"})
#: The connection and output options every client command takes, which may also come before
#: the command (`agentdb --token T sessions ls`); True when the option takes a value.
GLOBAL_OPTIONS = {"--url": True, "--token": True, "--json": False}


def hoisted(argv: list[str]) -> list[str]:
    """`argv` with the global options written before the command moved after it, where the
    command reads them: `--token T users ls` is `users ls --token T`."""
    moved: list[str] = []
    rest = list(argv)
    while rest and rest[0].split("=", 1)[0] in GLOBAL_OPTIONS:
        option = rest.pop(0)
        moved.append(option)
        if GLOBAL_OPTIONS[option.split("=", 1)[0]] and "=" not in option and rest:
            moved.append(rest.pop(0))  # `--url X`
    return rest + moved if rest else argv


def main() -> None:
    # Logs go to stderr: stdout carries what scripts read (the served URL). Debug lines (every
    # control-plane request, every SQL call) only with AGENTDB_LOG_LEVEL=debug.
    argv = hoisted(sys.argv[1:])
    # agentdb's own (structlog) lines run only in the server commands and `mcp`.
    if argv and argv[0] in SERVER_COMMANDS:
        level, json = _log_settings()
        configure_logging(level, sys.stderr, json=json)
    else:  # a client: warnings and errors only, and no settings read before the command's
        configure_logging(logging.WARNING, sys.stderr, structured=False)
    try:
        result = app(argv, exit_on_error=False, print_error=False, help_on_error=False)
    except cyclopts.CycloptsError as exc:
        print(f"agentdb: error: {_first_line(exc)}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    except CommandError as exc:
        print(f"agentdb: error: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    except ClientError as exc:
        print(f"agentdb: error: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    if isinstance(result, int):
        sys.exit(result)
