"""What every operator command shares: the options that reach a running agentdb (`--url`,
`--token`, `--json`), the SDK client opened with them, SDK errors turned into one line and an
exit code, the spinner of long operations, and the two ways of printing a result.

Exit codes: 0 done; 1 the operation failed (agentdb answered with an error: unknown id, a
conflict, SQL that PostgreSQL refused, a rejected token, a control-plane failure; or agentdb
could not be reached); 2 the command itself is wrong (unknown option, missing argument,
malformed id, no token, a value agentdb refuses as invalid input: fix the command line).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

import cyclopts
import httpx
from cyclopts import Parameter
from pydantic import BaseModel, ValidationError
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from agentdb.sdk import AgentDB, AgentDBError, AuthError, InvalidRequestError
from agentdb.settings import Settings

from ._base import FAILED, USAGE, WHERE_TOKENS_COME_FROM, ClientError

DEFAULT_URL = "http://127.0.0.1:8000"
#: What stands in for a connection URI that was not asked for (`--secrets` shows it).
SECRET_FIELDS = frozenset({"connection_uri"})
COMMON = cyclopts.Group("Connection and output", sort_key=100)


@Parameter(name="*", group=COMMON)
@dataclass(frozen=True)
class Remote:
    """How to reach agentdb and how to print the answer; every operator command takes these."""

    url: Annotated[str | None, Parameter(show_default=False)] = None
    """URL of a running `agentdb serve` (default: AGENTDB_URL, else http://127.0.0.1:8000)."""

    token: Annotated[str | None, Parameter(show_default=False)] = None
    """Bearer token (default: AGENTDB_TOKEN, which keeps it out of the process list): the admin
    token `agentdb serve` printed on its first start, a user token (`agentdb users token`) or a
    session token (`agentdb sessions token`)."""

    json: Annotated[bool, Parameter(negative="", show_default=False)] = False
    """Print the result as one JSON document (the SDK's model) instead of tables."""


#: The options' defaults, as one shared (frozen) value.
NO_OPTIONS = Remote()

Secrets = Annotated[bool, Parameter(negative="", show_default=False)]


def usage_error(message: str) -> ClientError:
    return ClientError(message, USAGE)


# --- the client ------------------------------------------------------------------------------


@asynccontextmanager
async def connected(options: Remote) -> AsyncIterator[AgentDB]:
    """The SDK's remote client for `options`; any failure inside becomes a `ClientError`."""
    url, token = _target(options)
    where = _without_credentials(url)
    try:
        async with AgentDB.connect(url, token) as db:
            yield db
    except AgentDBError as exc:
        raise _refused(exc, where) from None
    except httpx.TimeoutException:
        raise ClientError(f"agentdb at {where} did not answer in time", FAILED) from None
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise ClientError(
            f"cannot reach agentdb at {where} ({reason}); is `agentdb serve` running there?",
            FAILED,
        ) from None
    except ValueError as exc:  # not JSON, or not the SDK's models: not agentdb, or another version
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise ClientError(
            f"{where} did not answer as agentdb does ({first}); is --url right?", FAILED
        ) from None


def _target(options: Remote) -> tuple[str, str]:
    try:
        settings = Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "AGENTDB_" + ".".join(str(part) for part in err["loc"]).upper()
        raise usage_error(f"{name}: {err['msg']}") from None
    url = options.url or settings.url or DEFAULT_URL
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise usage_error(f"--url: {exc}") from None
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        raise usage_error(f"--url: {_without_credentials(url)!r} is not an http:// or https:// URL")
    # `agentdb serve` prints its API as .../v1; the SDK adds /v1 itself.
    url = url.rstrip("/").removesuffix("/v1")
    token = options.token or (settings.token.get_secret_value() if settings.token else "")
    if not token:
        raise usage_error(
            f"no token: pass --token or set AGENTDB_TOKEN to {WHERE_TOKENS_COME_FROM}"
        )
    return url, token


def _without_credentials(url: str) -> str:
    """`url` fit to print: a password in it stays out of messages."""
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None))
    except httpx.InvalidURL:
        return "the --url given"


def _refused(exc: AgentDBError, where: str) -> ClientError:
    message = str(exc) or exc.title or f"HTTP {exc.status}"
    if not exc.type:  # every answer of agentdb's is problem+json with a type
        return ClientError(
            f"{where} answered HTTP {exc.status} ({message}), not as agentdb does; is --url right?",
            FAILED,
        )
    if isinstance(exc, InvalidRequestError):
        if exc.errors:
            message = "; ".join(
                f"{_OPTION_OF.get(e.get('field', ''), e.get('field', ''))}: {e.get('message', '')}"
                for e in exc.errors
            )
        return ClientError(message, USAGE)
    if isinstance(exc, AuthError):
        return ClientError(f"{message}; check --token or AGENTDB_TOKEN", FAILED)
    return ClientError(message, FAILED)


#: The REST API's field names as the commands spell them, for its "field: message" errors.
_OPTION_OF = {
    "user_id": "--user",
    "checkpoint_id": "--from",
    "ttl_seconds": "--ttl",
    "max_rows": "--max-rows",
    "timeout_seconds": "--timeout",
    "params": "--param",
    "after": "--after",
    "limit": "--limit",
    "against": "--against",
    "name": "--name",
    "tier": "--tier",
    "label": "--label",
    "message": "--message",
    "metadata": "--metadata",
    "code_ref": "--code-ref",
    "mode": "--mode",
    "email": "EMAIL",
    "sql": "SQL",
}


@contextmanager
def working(what: str) -> Iterator[None]:
    """A spinner on stderr while a long operation runs (only on a terminal; never on stdout,
    which scripts read)."""
    with Console(stderr=True).status(f"{what}..."):
        yield


# --- output ----------------------------------------------------------------------------------


def _stdout() -> Console:
    # Not a terminal: lines as long as they need to be, so ids are never wrapped for grep/awk.
    # Values are data: never read as rich markup, emoji codes or highlighted.
    return Console(
        width=None if sys.stdout.isatty() else 10_000, markup=False, emoji=False, highlight=False
    )


def emit(
    options: Remote,
    result: BaseModel | Sequence[BaseModel],
    human: Callable[[], RenderableType | str],
    *,
    secrets: bool = False,
) -> None:
    """Prints `result`: as its JSON (one document) with `--json`, else as `human()` draws it.
    Connection URIs are left out unless `secrets`."""
    if options.json:
        if isinstance(result, BaseModel):
            document: object = jsonable(result, secrets=secrets)
        else:
            document = [jsonable(item, secrets=secrets) for item in result]
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    shown_as = human()
    if isinstance(shown_as, str):  # a token: exactly the text, never wrapped
        sys.stdout.write(shown_as + "\n")
        return
    console = _stdout()
    if console.is_terminal:
        console.print(shown_as)
        return
    with console.capture() as captured:
        console.print(shown_as)
    # Tables pad every cell; trailing blanks are noise in files and pipes.
    sys.stdout.writelines(line.rstrip() + "\n" for line in captured.get().splitlines())


def jsonable(model: BaseModel, *, secrets: bool) -> dict[str, Any]:
    data = model.model_dump(mode="json")
    if not secrets:
        for name in SECRET_FIELDS:
            data.pop(name, None)
    return data


def details(model: BaseModel, *, secrets: bool = False, title: str | None = None) -> RenderableType:
    """A model as `field  value` lines, in the model's field order, under `title`."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name in type(model).model_fields:
        if name in SECRET_FIELDS and not secrets:
            continue
        grid.add_row(name, shown(getattr(model, name)))
    return grid if title is None else Group(Text(title, style="bold"), grid)


def listing(rows: Sequence[BaseModel], columns: Sequence[str], *, empty: str) -> Table | Text:
    """Models as a table of the named fields."""
    if not rows:
        return Text(empty, style="dim")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        table.add_column(name, no_wrap=name == "id" or name.endswith("_id"))
    for row in rows:
        table.add_row(*(shown(getattr(row, name)) for name in columns))
    return table


def shown(value: object) -> str:
    """A value as a person reads it in a table cell."""
    if value is None:
        return "-"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)
