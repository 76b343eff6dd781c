"""PostgreSQL's frontend/backend protocol 3.0, the parts the connection proxy reads and writes."""

from __future__ import annotations

import asyncio
import struct

INT32 = 4  # bytes in an Int32, the protocol's lengths
#: The longest message read whole during a handshake; afterwards the proxy relays bytes unread.
MAX_HANDSHAKE_MESSAGE = 1 << 20


class Refused(Exception):  # noqa: N818 - a refusal the client is told about, not a bug
    """The proxy refuses a client: `code` is the SQLSTATE it is told, `text` the message."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def message(kind: bytes, payload: bytes = b"") -> bytes:
    """A backend or frontend message: its type byte, its length, its payload."""
    return kind + struct.pack("!I", len(payload) + 4) + payload


def error_response(code: str, text: str) -> bytes:
    """A FATAL ErrorResponse: the connection ends after it."""
    fields = (("S", "FATAL"), ("V", "FATAL"), ("C", code), ("M", text))
    body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields) + b"\0"
    return message(b"E", body)


async def read_message(
    reader: asyncio.StreamReader, limit: int = MAX_HANDSHAKE_MESSAGE
) -> tuple[bytes, bytes]:
    """The next message's type and payload; `Refused` for one longer than `limit`."""
    header = await reader.readexactly(1 + INT32)
    (length,) = struct.unpack("!I", header[1:])
    if not INT32 <= length <= limit:
        raise Refused("08P01", "invalid message length")
    return header[:1], await reader.readexactly(length - INT32)


def error_fields(body: bytes) -> dict[str, str]:
    """An ErrorResponse's or NoticeResponse's fields by their code letter."""
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


def split_options(options: str) -> tuple[str, str | None]:
    """The options without Neon's `endpoint=<id>`, and that id. Options are separated by
    spaces, a backslash escapes the next character (as PostgreSQL reads them)."""
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for char in options:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    endpoint = None
    kept = []
    for word in words:
        if word.startswith("endpoint="):
            endpoint = word.removeprefix("endpoint=") or None
        else:
            kept.append(word)
    return " ".join(kept), endpoint


def endpoint_from_host(host: str | None) -> str | None:
    """`ep-cool-name-123456` (or `...-pooler`) from `ep-cool-name-123456(-pooler).<anything>`."""
    if not host:
        return None
    label = host.split(".", 1)[0]
    return label if label.startswith("ep-") else None
