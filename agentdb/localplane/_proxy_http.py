"""HTTP on the connection proxy's port, for Neon's serverless driver (`@neondatabase/serverless`).

Over TLS on the same port as PostgreSQL's protocol (the proxy tells them apart by the TLS
handshake's ALPN), two things are served, as Neon's proxy serves them:

- `POST /sql`: SQL over HTTP. The `Neon-Connection-String` header names the role, password,
  database and endpoint; the JSON body is one `{query, params}` or a batch `{queries: [...]}`
  run in one transaction (`Neon-Batch-Isolation-Level`, `-Read-Only`, `-Deferrable`). Values
  come back as PostgreSQL's text with each field's type OID (`Neon-Raw-Text-Output`), as rows
  of arrays (`Neon-Array-Mode: true`) or of objects. Errors answer 400 with PostgreSQL's fields.
- A WebSocket upgrade (the driver asks for `/v2`): its binary messages carry PostgreSQL's
  protocol, so `Pool` and `Client` work as over TCP; the password is asked for in cleartext
  inside the TLS tunnel, which the driver pipelines with its startup message.

h11 parses HTTP/1.1 and wsproto frames the WebSocket; the SQL runs on a backend connection the
proxy logs in itself, with the extended query protocol and text results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import h11
from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping
from wsproto.utilities import generate_accept_token

from ._pgwire import (
    Refused,
    endpoint_from_host,
    error_fields,
    error_response,
    message,
    read_message,
    split_options,
)

if TYPE_CHECKING:
    from ._compute import Route
    from ._proxy import Backend, Sink

_MAX_BODY = 10 << 20  # bytes of one request body
_MAX_RESULT = 10 << 20  # bytes of rows in one answer, Neon's limit too
_MAX_HEAD = 64 << 10
_CHUNK = 1 << 16
_ISOLATION = {
    "Serializable": "SERIALIZABLE",
    "RepeatableRead": "REPEATABLE READ",
    "ReadCommitted": "READ COMMITTED",
    "ReadUncommitted": "READ UNCOMMITTED",
}
_CORS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, OPTIONS"),
    (
        "Access-Control-Allow-Headers",
        (
            "Authorization, Content-Type, Neon-Connection-String, Neon-Raw-Text-Output, "
            "Neon-Array-Mode, Neon-Batch-Isolation-Level, Neon-Batch-Read-Only, "
            "Neon-Batch-Deferrable"
        ),
    ),
    ("Access-Control-Max-Age", "86400"),
]
# ErrorResponse field letters and the names Neon's /sql answers them under.
_ERROR_FIELDS = {
    "S": "severity",
    "C": "code",
    "D": "detail",
    "H": "hint",
    "P": "position",
    "p": "internalPosition",
    "q": "internalQuery",
    "W": "where",
    "s": "schema",
    "t": "table",
    "c": "column",
    "d": "dataType",
    "n": "constraint",
    "F": "file",
    "L": "line",
    "R": "routine",
}

JSON = dict[str, Any]


class Gateway(Protocol):
    """What HTTP asks of the proxy (`_proxy.Proxy`)."""

    async def route(self, endpoint: str, user: str, database: str) -> Route: ...
    async def backend(
        self, endpoint: str, user: str, database: str, params: dict[str, str]
    ) -> Backend: ...
    def release(self, backend: Backend) -> None: ...
    def password_matches(self, route: Route, password: str) -> bool: ...
    async def session(
        self, reader: asyncio.StreamReader, writer: Sink, *, tls: bool, websocket: bool
    ) -> None: ...


class _Answer(Exception):  # noqa: N818 - an HTTP answer other than 200, raised to the handler
    def __init__(self, status: int, body: JSON) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body


async def serve_http(
    gateway: Gateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """HTTP/1.1 requests on one connection (kept alive), until it closes or upgrades."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
    while True:
        event = await _next_event(conn, reader)
        if not isinstance(event, h11.Request):
            return
        headers = {k.decode().lower(): v.decode(errors="replace") for k, v in event.headers}
        if headers.get("upgrade", "").lower() == "websocket":
            await _websocket(gateway, conn, reader, writer, headers)
            return
        try:
            body = await _body(conn, reader)
            status, answer = 200, await _dispatch(gateway, event, headers, body)
        except _Answer as refused:
            status, answer = refused.status, refused.body
        payload = b"" if answer is None else json.dumps(answer).encode()
        response_headers = [*_CORS, ("Content-Length", str(len(payload)))]
        if answer is not None:
            response_headers.append(("Content-Type", "application/json"))
        writer.write(conn.send(h11.Response(status_code=status, headers=response_headers)))
        writer.write(conn.send(h11.Data(data=payload)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return
        conn.start_next_cycle()


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(_CHUNK))


async def _body(conn: h11.Connection, reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                raise _Answer(413, {"message": f"request body over {_MAX_BODY} bytes"})
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            raise _Answer(400, {"message": "malformed request"})


async def _dispatch(
    gateway: Gateway, request: h11.Request, headers: dict[str, str], body: bytes
) -> JSON | None:
    method, path = request.method.decode(), request.target.decode().split("?", 1)[0]
    if method == "OPTIONS":
        return None  # a browser's preflight: the CORS headers are the answer
    if path.rstrip("/") != "/sql":
        raise _Answer(404, {"message": f"{path} is not served here; POST /sql runs SQL"})
    if method != "POST":
        raise _Answer(405, {"message": "POST /sql with a JSON body runs SQL"})
    return await _sql(gateway, headers, body)


# --- SQL over HTTP --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Query:
    text: str
    params: list[str | None]


@dataclass(slots=True)
class _Result:
    command: str = ""
    row_count: int | None = None
    fields: list[JSON] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    size: int = 0
    failed: dict[str, str] | None = None

    def take(self, kind: bytes, body: bytes, limit: int) -> None:
        """Reads one of the backend's messages about the statement (up to ReadyForQuery)."""
        if kind == b"T":
            self.fields = _fields(body)
        elif kind == b"D" and self.failed is None:
            self.size += len(body)
            if self.size > limit:
                too_large = f"response is too large (max is {_MAX_RESULT} bytes)"
                self.failed = {"C": "54000", "M": too_large}
            else:
                self.rows.append(_row(body))
        elif kind == b"C":
            words = body.rstrip(b"\0").decode().split()
            self.command = words[0] if words else ""
            last = words[-1] if len(words) > 1 else ""
            self.row_count = int(last) if last.isdigit() else None
        elif kind == b"E":
            self.failed = error_fields(body)

    def render(self, *, array_mode: bool) -> JSON:
        names = [f["name"] for f in self.fields]
        rows: list[Any] = (
            self.rows if array_mode else [dict(zip(names, row, strict=True)) for row in self.rows]
        )
        return {
            "command": self.command,
            "rowCount": self.row_count,
            "rows": rows,
            "fields": self.fields,
            "rowAsArray": array_mode,
        }


@dataclass(frozen=True, slots=True)
class _Target:
    """Who connects where, from the `Neon-Connection-String` header."""

    endpoint: str
    user: str
    database: str
    password: str = field(repr=False)
    options: str
    application_name: str


def _target(headers: dict[str, str]) -> _Target:
    uri = headers.get("neon-connection-string")
    if not uri:
        raise _Answer(400, {"message": "missing the Neon-Connection-String header"})
    if headers.get("authorization"):
        unserved = "JWT authentication (authToken) is not served by the local plane's proxy"
        raise _Answer(400, {"message": unserved})
    try:
        given = conninfo_to_dict(uri)
    except ProgrammingError:
        malformed = "Neon-Connection-String is not a connection string"
        raise _Answer(400, {"message": malformed}) from None
    options, endpoint = split_options(str(given.get("options") or ""))
    endpoint = endpoint or endpoint_from_host(str(given.get("host") or ""))
    if endpoint is None:
        raise _Answer(400, {"message": "the connection string names no endpoint"})
    user = str(given.get("user") or "")
    return _Target(
        endpoint=endpoint,
        user=user,
        database=str(given.get("dbname") or user),
        password=str(given.get("password") or ""),
        options=options,
        application_name=str(given.get("application_name") or ""),
    )


async def _sql(gateway: Gateway, headers: dict[str, str], body: bytes) -> JSON:
    target = _target(headers)
    endpoint, user, database = target.endpoint, target.user, target.database
    options = target.options
    batch, queries = _queries(body)
    begin = _begin(headers) if batch else None
    array_mode = headers.get("neon-array-mode", "false").lower() == "true"
    try:
        route = await gateway.route(endpoint, user, database)
    except Refused as refused:
        raise _Answer(400, {"message": refused.text, "code": refused.code}) from None
    if not gateway.password_matches(route, target.password):
        failed = f'password authentication failed for user "{user}"'
        raise _Answer(400, {"message": failed, "code": "28P01"})
    if route.database is None:
        raise _Answer(400, {"message": f'database "{database}" does not exist', "code": "3D000"})
    params = {"application_name": target.application_name}
    if route.read_only:
        options = f"{options} -c default_transaction_read_only=on".strip()
    if options:
        params["options"] = options
    try:
        backend = await gateway.backend(endpoint, user, database, params)
    except Refused as refused:
        raise _Answer(400, {"message": refused.text, "code": refused.code}) from None
    try:
        results = await _run(backend, queries, begin)
    finally:
        gateway.release(backend)
    rendered = [r.render(array_mode=array_mode) for r in results]
    return {"results": rendered} if batch else rendered[0]


def _queries(body: bytes) -> tuple[bool, list[_Query]]:
    try:
        parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _Answer(400, {"message": "the body is not JSON"}) from None
    if not isinstance(parsed, dict):
        raise _Answer(400, {"message": "the body must be {query, params} or {queries: [...]}"})
    batch = "queries" in parsed
    items = parsed["queries"] if batch else [parsed]
    if not isinstance(items, list) or (batch and not items):
        raise _Answer(400, {"message": "queries: must be a non-empty list of {query, params}"})
    queries = []
    for index, item in enumerate(items):
        where = f"queries[{index}]" if batch else "body"
        if not isinstance(item, dict) or not isinstance(item.get("query"), str):
            raise _Answer(400, {"message": f"{where}.query: must be a string"})
        params = item.get("params", [])
        if not isinstance(params, list):
            raise _Answer(400, {"message": f"{where}.params: must be a list"})
        queries.append(_Query(item["query"], [_text(p) for p in params]))
    return batch, queries


def _text(value: object) -> str | None:
    """A parameter as PostgreSQL's text input (the driver sends strings already)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def _begin(headers: dict[str, str]) -> str:
    statement = "BEGIN"
    level = headers.get("neon-batch-isolation-level")
    if level:
        if level not in _ISOLATION:
            known = ", ".join(_ISOLATION)
            raise _Answer(400, {"message": f"Neon-Batch-Isolation-Level: one of {known}"})
        statement += f" ISOLATION LEVEL {_ISOLATION[level]}"
    if headers.get("neon-batch-read-only", "").lower() == "true":
        statement += " READ ONLY"
    if headers.get("neon-batch-deferrable", "").lower() == "true":
        statement += " DEFERRABLE"
    return statement


async def _run(backend: Backend, queries: list[_Query], begin: str | None) -> list[_Result]:
    """The queries' results; a batch runs between `begin` and COMMIT, rolled back on error."""
    if begin is not None:
        await _simple(backend, begin)
    results: list[_Result] = []
    size = 0
    try:
        for query in queries:
            result = await _execute(backend, query, limit=_MAX_RESULT - size)
            size += result.size
            results.append(result)
    except _Answer:
        if begin is not None:
            await _simple(backend, "ROLLBACK")
        raise
    if begin is not None:
        await _simple(backend, "COMMIT")
    return results


async def _simple(backend: Backend, statement: str) -> None:
    backend.writer.write(message(b"Q", statement.encode() + b"\0"))
    await backend.writer.drain()
    failed: dict[str, str] | None = None
    while True:
        kind, body = await read_message(backend.reader)
        if kind == b"E":
            failed = error_fields(body)
        elif kind == b"Z":
            break
    if failed is not None:
        raise _Answer(400, _error_body(failed))


async def _execute(backend: Backend, query: _Query, *, limit: int) -> _Result:
    """One statement through the extended protocol: text parameters, text results."""
    bind = bytearray(b"\0\0" + struct.pack("!hh", 0, len(query.params)))
    for param in query.params:
        if param is None:
            bind += struct.pack("!i", -1)
        else:
            encoded = param.encode()
            bind += struct.pack("!i", len(encoded)) + encoded
    bind += struct.pack("!h", 0)  # every result column in text
    backend.writer.write(
        message(b"P", b"\0" + query.text.encode() + b"\0" + struct.pack("!h", 0))
        + message(b"B", bytes(bind))
        + message(b"D", b"P\0")
        + message(b"E", b"\0" + struct.pack("!I", 0))
        + message(b"S")
    )
    await backend.writer.drain()
    result = _Result()
    while True:
        kind, body = await read_message(backend.reader, limit=_MAX_RESULT)
        if kind == b"Z":
            break
        result.take(kind, body, limit)
    if result.failed is not None:
        raise _Answer(400, _error_body(result.failed))
    return result


def _fields(body: bytes) -> list[JSON]:
    (count,) = struct.unpack("!h", body[:2])
    offset, fields = 2, []
    for _ in range(count):
        end = body.index(b"\0", offset)
        name = body[offset:end].decode()
        table, column, type_oid, size, modifier, _ = struct.unpack(
            "!IhIhih", body[end + 1 : end + 19]
        )
        offset = end + 19
        fields.append(
            {
                "name": name,
                "tableID": table,
                "columnID": column,
                "dataTypeID": type_oid,
                "dataTypeSize": size,
                "dataTypeModifier": modifier,
                "format": "text",
            }
        )
    return fields


def _row(body: bytes) -> list[str | None]:
    (count,) = struct.unpack("!h", body[:2])
    offset = 2
    values: list[str | None] = []
    for _ in range(count):
        (length,) = struct.unpack("!i", body[offset : offset + 4])
        offset += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[offset : offset + length].decode(errors="replace"))
            offset += length
    return values


def _error_body(fields: dict[str, str]) -> JSON:
    body: JSON = {"message": fields.get("M", "error")}
    for letter, name in _ERROR_FIELDS.items():
        if letter in fields:
            body[name] = fields[letter]
    return body


# --- the WebSocket tunnel -------------------------------------------------------------------------


class _WebSocketSink:
    """Writes PostgreSQL's bytes to the client as binary WebSocket messages."""

    def __init__(self, ws: Connection, writer: asyncio.StreamWriter) -> None:
        self._ws = ws
        self._writer = writer

    def write(self, data: bytes) -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._writer.write(self._ws.send(BytesMessage(data=data)))

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        if self._ws.state is ConnectionState.OPEN:
            with contextlib.suppress(Exception):
                self._writer.write(self._ws.send(CloseConnection(code=1000)))

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._writer.get_extra_info(name, default)


async def _websocket(
    gateway: Gateway,
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    headers: dict[str, str],
) -> None:
    key = headers.get("sec-websocket-key", "")
    if not key or headers.get("sec-websocket-version") != "13":
        writer.write(conn.send(h11.Response(status_code=400, headers=[("Content-Length", "0")])))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        return
    accepted: list[tuple[str, str]] = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", generate_accept_token(key.encode()).decode()),
    ]
    writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=accepted)))
    await writer.drain()
    leftover, _ = conn.trailing_data
    ws = Connection(ConnectionType.SERVER)
    pg_reader = asyncio.StreamReader(limit=_CHUNK)
    sink = _WebSocketSink(ws, writer)
    frames = asyncio.create_task(_unwrap(ws, reader, writer, pg_reader, bytes(leftover)))
    try:
        await gateway.session(pg_reader, sink, tls=True, websocket=True)
    except Refused as refused:
        sink.write(error_response(refused.code, refused.text))
        await sink.drain()
    finally:
        sink.close()
        frames.cancel()
        await asyncio.gather(frames, return_exceptions=True)


async def _unwrap(
    ws: Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    pg_reader: asyncio.StreamReader,
    leftover: bytes,
) -> None:
    """Feeds the binary messages' bytes to `pg_reader` until the WebSocket closes."""
    data = leftover
    try:
        while True:
            if data:
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, BytesMessage):
                        pg_reader.feed_data(bytes(event.data))
                    elif isinstance(event, Ping):
                        writer.write(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        if ws.state is not ConnectionState.CLOSED:
                            writer.write(ws.send(event.response()))
                        return
            data = await reader.read(_CHUNK)
            if not data:
                ws.receive_data(None)
                return
    finally:
        pg_reader.feed_eof()
