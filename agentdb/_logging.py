"""How agentdb logs: structlog lines on a stream, tracebacks without local variables, and every
secret redacted wherever it appears (bearer tokens, agentdb's tokens, passwords in connection
URIs and conninfo strings, `PASSWORD '...'` in SQL), in agentdb's own lines and in those of the
libraries it runs (uvicorn, httpx, Litestar) alike.

Redaction is a last line of defence: code never puts a secret in a log line on purpose, but an
exception's message may quote one (libpq echoes connection strings, PostgreSQL echoes SQL).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

MASK = "[redacted]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # agentdb's own tokens, whatever carries them.
    (re.compile(r"\badb_(?:admin|user|sess)_[A-Za-z0-9]+"), MASK),
    # Authorization headers and the like.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {MASK}"),
    # user:password@ in any URI (postgresql://, https://).
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*):[^\s@/]*@"), rf"\1:{MASK}@"),
    # password=... in conninfo strings, query strings and key=value lines.
    (
        re.compile(
            r"(?i)\b(password|passwd|secret|api_key|apikey)(\s*[=:]\s*)('[^']*'|\"[^\"]*\"|[^\s&,;]+)"
        ),
        rf"\1\2{MASK}",
    ),
    # PASSWORD '...' in SQL (CREATE/ALTER ROLE).
    (re.compile(r"(?i)\b(password)\s+('(?:[^']|'')*'|\$[^$]*\$.*?\$[^$]*\$)"), rf"\1 {MASK}"),
    # Neon API keys.
    (re.compile(r"\bnapi_[A-Za-z0-9]+"), MASK),
)


def redact(text: str) -> str:
    """`text` with every secret this module recognises replaced by `[redacted]`."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """A structlog processor: redacts every string in the event, the formatted traceback
    included (so it must run after `format_exc_info`)."""
    return {key: _redact_value(value) for key, value in event_dict.items()}


class RedactingFormatter(logging.Formatter):
    """The stdlib's formatter (its tracebacks never show locals), with secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # uvicorn's duplicate of the message with ANSI codes.
    event_dict.pop("color_message", None)
    return event_dict


def configure_logging(
    level: int, stream: TextIO, *, structured: bool = True, json: bool = False
) -> None:
    """Logs of agentdb and of the libraries it runs go to `stream` at `level` (libraries that
    log every request at INFO stay at WARNING), redacted, with plain tracebacks. Without
    `structured`, only the standard library's logging is set up: a client command, which
    runs none of agentdb's structlog lines, starts without loading structlog. With `json`,
    every line (the libraries' too) is one JSON object."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    if json and structured:
        handler.setFormatter(_json_formatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    for noisy in ("httpx", "mcp", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if not structured:
        return
    import structlog  # noqa: PLC0415 - loaded only where agentdb's own lines run

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Plain text tracebacks: a rich traceback shows local variables (request headers,
            # connection URIs).
            structlog.processors.format_exc_info,
            redact_secrets,
            structlog.processors.JSONRenderer()
            if json
            else structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=structlog.PrintLoggerFactory(stream),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )


def _json_formatter() -> logging.Formatter:
    """The libraries' lines (uvicorn, psycopg's pool) as JSON objects like agentdb's own,
    redacted, with the request's ids when logged inside one."""
    import structlog  # noqa: PLC0415

    return structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ],
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_color_message,
        ],
    )


def configure_library_logging() -> None:
    """For agentdb inside another program (the embedded SDK): unless the host configured
    structlog itself, agentdb's lines go to the standard library's `logging`, under their
    modules' names, redacted, so the host's logging settings decide what is shown and where.
    A host that configured nothing sees warnings and errors on stderr (Python's last-resort
    handler) and nothing on stdout."""
    import structlog  # noqa: PLC0415 - loaded only where agentdb's own lines run

    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            redact_secrets,
            # The event and its keys: the host's formatter adds the time, level and name.
            structlog.dev.ConsoleRenderer(
                colors=False, pad_event_to=0, exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's logging, through the root handler above (redacted) instead of its own."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"level": "INFO", "propagate": True},
            "uvicorn.error": {"level": "INFO", "propagate": True},
            "uvicorn.access": {"level": "WARNING", "propagate": True},
        },
    }


__all__ = [
    "MASK",
    "RedactingFormatter",
    "configure_library_logging",
    "configure_logging",
    "redact",
    "redact_secrets",
    "uvicorn_log_config",
]
