"""`agentdb demo`: the chat demo alone, on the embedded default, with one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import cyclopts

Port = Annotated[int, cyclopts.Parameter(validator=cyclopts.validators.Number(gte=0, lte=65535))]


async def run_demo(
    *,
    host: str = "127.0.0.1",
    port: Port = 8000,
    data_dir: Path | None = None,
) -> None:
    """Run the chat demo alone at http://HOST:PORT/demo/ on the embedded PostgreSQL: chat
    with an agent that builds its session's database, checkpoint by checkpoint. With
    ANTHROPIC_API_KEY or OPENAI_API_KEY set a real model drives it; without, an offline agent
    that understands a small command language (listed on the page). The page asks for the
    admin token (or a user token) once; on an address other than loopback the demo runs only
    with AGENTDB_ADMIN_TOKEN set.

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
    # Imported here: the client commands start without the server's modules.
    from agentdb.api import create_app as create_api  # noqa: PLC0415
    from agentdb.pg import PostgresError  # noqa: PLC0415
    from agentdb.runtime import StartupError, open_runtime  # noqa: PLC0415
    from demo import create_demo_app, listen_refusal, open_demo  # noqa: PLC0415

    from ._main import CommandError, _listen, _settings  # noqa: PLC0415
    from ._serving import serve  # noqa: PLC0415

    settings = _settings(data_dir)
    # Every route needs a sign-in; beyond loopback, also a token the operator chose.
    refusal = listen_refusal(host, settings)
    if refusal is not None:
        raise CommandError(refusal)
    with _listen(host, port) as listener:
        try:
            async with open_runtime(settings) as runtime:
                if runtime.new_admin_token is not None:
                    token = runtime.new_admin_token.get_secret_value()
                    # The demo serves no API: this token is what its sign-in page asks for.
                    print(  # noqa: T201
                        f"agentdb admin token (shown once, keep it; sign in to the demo with it): "
                        f"{token}",
                        flush=True,
                    )
                # The API app is reached in-process by the demo only; nothing else is served.
                async with open_demo(runtime, create_api(runtime)) as demo:
                    await serve(
                        create_demo_app(demo), host, listener, what="agentdb demo", path="/demo/"
                    )
        except (StartupError, PostgresError) as exc:
            raise CommandError(str(exc)) from None
