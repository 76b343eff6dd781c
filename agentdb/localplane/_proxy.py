"""The local plane's connection proxy: Neon-shaped connection strings, offline.

A client connects as it would to Neon: TLS (`sslmode=require`), SCRAM-SHA-256 with channel
binding (`channel_binding=require`), Neon's role and database names (`neondb_owner`, `neondb`),
and the endpoint named either by SNI (the host's first label, `ep-...`) or, for clients without
SNI, by `options=endpoint%3Dep-...`, as Neon documents. The proxy authenticates the client
against the role's secret, opens a connection to the physical database as the physical role
(PostgreSQL roles are cluster-wide, so the plane's carry a per-project suffix), and from then on
relays bytes both ways.

While a checkpoint copies a database or a restore swaps one in, the database refuses new
connections for a moment; the proxy holds a new client during that moment (re-reading where the
endpoint's database now is) instead of failing it. Connections already open end only where
PostgreSQL ends them. Cancel requests are routed to the backend whose key they carry.

The protocol parts are PostgreSQL's frontend/backend protocol 3.0; SCRAM is `scramp`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from agentdb.pg import ServerInfo

from . import _scram as scram
from ._compute import Route
from ._errors import LocalPlaneError, NotFound
from ._pgwire import (
    INT32,
    Refused,
    endpoint_from_host,
    error_fields,
    error_response,
    message,
    read_message,
    split_options,
)
from ._pooler import Pooler
from ._proxy_http import serve_http

log = structlog.get_logger(__name__)

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_PROTOCOL_MAJOR = 3
_PROTOCOL_3 = _PROTOCOL_MAJOR << 16
# Authentication request codes (the `R` message).
_AUTH_OK, _AUTH_CLEARTEXT, _AUTH_MD5 = 0, 3, 5
_AUTH_SASL, _AUTH_SASL_CONTINUE, _AUTH_SASL_FINAL = 10, 11, 12
_MAX_STARTUP = 10_000
#: How long a new connection is held while its database is closed by a checkpoint or restore.
HOLD_S = 30.0
_HOLD_POLL_S = 0.02
# "not currently accepting connections", "the database system is starting up", and a database
# renamed away by a restore's swap a moment ago: all pass within a hold.
_HOLD_CODES = frozenset({"55000", "57P03", "3D000"})
_CHUNK = 1 << 16
_MECHANISMS = f"{scram.PLUS}\0{scram.PLAIN}\0\0".encode()
_MAX_VERIFIERS = 10_000
POOLER_SUFFIX = "-pooler"  # a pooled endpoint's name: ep-...-pooler, as Neon's host names
_TLS_HANDSHAKE = b"\x16"  # the first byte of a TLS ClientHello record
_FIRST_BYTE_S = 30.0  # a connection that says nothing for this long is closed
_NO_ENDPOINT = (
    "Endpoint ID is not specified. Either use a client with SNI and the endpoint's host name, "
    "or pass the endpoint ID as a parameter: '?options=endpoint%3D<endpoint-id>'."
)


class Sink(Protocol):
    """Where the proxy writes to a client: a stream, or a WebSocket carrying the protocol."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...
    def get_extra_info(self, name: str, default: object = None) -> object: ...


class Router(Protocol):
    """What the proxy asks the plane: where a connection goes (`LocalPlane.route`)."""

    def route(self, endpoint_id: str, role_name: str, database_name: str) -> Awaitable[Route]: ...


class _Hold(Exception):  # noqa: N818 - the database is closed for a moment: try again
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Backend:
    """A logged-in connection to PostgreSQL."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    greeting: bytes  # the backend's messages up to its first ReadyForQuery, for the client
    key: bytes | None = None
    database: str = ""  # the physical database it is connected to


@dataclass
class Proxy:
    """Serves the proxy on one TCP port. `tls` is the server context, `end_point` the
    `tls-server-end-point` channel-binding data of its certificate."""

    router: Router
    server: ServerInfo
    tls: ssl.SSLContext
    end_point: bytes
    hold_s: float = HOLD_S
    _verifiers: dict[tuple[str, str], scram.Verifier] = field(default_factory=dict)
    _cancel_keys: dict[bytes, ServerInfo] = field(default_factory=dict)
    _clients: set[asyncio.Task[None]] = field(default_factory=set)
    _listener: socket.socket | None = None
    _accepting: asyncio.Task[None] | None = None
    pooler: Pooler = field(default_factory=Pooler)
    _unknown: scram.Verifier = field(
        default_factory=lambda: scram.Verifier.from_password(secrets.token_urlsafe(24))
    )

    def __post_init__(self) -> None:
        self.tls.sni_callback = _remember_sni
        # Direct TLS (no SSLRequest first) is PostgreSQL 17's `sslnegotiation=direct`, which
        # asks for ALPN "postgresql", or HTTPS and WSS for the serverless driver.
        self.tls.set_alpn_protocols(["postgresql", "http/1.1"])

    async def start(self, host: str, port: int) -> int:
        """Listens on `host:port` (0: a free port); returns the port."""
        self._listener = socket.create_server((host, port), backlog=1024)
        self._listener.setblocking(False)  # noqa: FBT003 - the socket API
        self._accepting = asyncio.create_task(self._accept_loop(self._listener))
        bound: int = self._listener.getsockname()[1]
        return bound

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await self.pooler.close()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as error:  # out of file descriptors, say: wait, do not spin
                log.warning("localplane.proxy.accept_failed", error=str(error))
                await asyncio.sleep(0.1)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._accept(sock))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    async def _accept(self, sock: socket.socket) -> None:
        """One connection: PostgreSQL's protocol (TLS after an SSLRequest), or direct TLS
        carrying PostgreSQL (ALPN "postgresql"), HTTP `/sql` or a WebSocket."""
        writer: asyncio.StreamWriter | None = None
        try:
            first = await asyncio.wait_for(_peek(sock), _FIRST_BYTE_S)
            direct = first == _TLS_HANDSHAKE
            reader, writer = await _streams(sock, self.tls if direct else None)
            if not direct:
                await self.session(reader, writer, tls=False, websocket=False)
            elif _alpn(writer) == "postgresql":
                await self.session(reader, writer, tls=True, websocket=False)
            else:
                await serve_http(self, reader, writer)
        except Refused as refused:
            if writer is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    writer.write(error_response(refused.code, refused.text))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass  # the client went away or spoke nonsense: nothing to tell it
        except asyncio.CancelledError:
            pass  # the proxy is closing (`close` is the only one that cancels)
        except Exception as error:  # noqa: BLE001 - one client's failure must not stop the proxy
            log.warning("localplane.proxy.failed", error=type(error).__name__)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            else:
                sock.close()

    async def session(
        self, reader: asyncio.StreamReader, writer: Sink, *, tls: bool, websocket: bool
    ) -> None:
        """A PostgreSQL client, from its startup to its last byte. Over a WebSocket (already
        inside TLS) the password is asked for in cleartext, as Neon's proxy does there: the
        serverless driver pipelines it with the startup message."""
        startup = await self._startup(reader, writer, tls=tls)
        if startup is None:
            return  # a cancel request, passed on
        params, tls = startup
        if not tls:
            raise Refused("28000", "connection is insecure (try using `sslmode=require`)")
        if "replication" in params:
            raise Refused("0A000", "replication connections are not served by the proxy")
        user = params.get("user", "")
        database = params.get("database") or user
        sni = getattr(writer.get_extra_info("ssl_object"), "agentdb_sni", None)
        options, endpoint = split_options(params.get("options", ""))
        endpoint = endpoint or endpoint_from_host(sni)
        if endpoint is None:
            raise Refused("08004", _NO_ENDPOINT)
        pooled = endpoint.endswith(POOLER_SUFFIX)
        endpoint = endpoint.removesuffix(POOLER_SUFFIX)
        route = await self.route(endpoint, user, database)
        if websocket:
            await self._check_cleartext(reader, writer, route, user)
        else:
            await self._authenticate(reader, writer, route, user)
        if route.database is None:
            raise Refused("3D000", f'database "{database}" does not exist')
        forwarded = {
            k: v
            for k, v in params.items()
            if k not in {"user", "database", "options"} and not k.startswith("_pq_.")
        }
        if route.read_only:
            options = f"{options} -c default_transaction_read_only=on".strip()
        if options:
            forwarded["options"] = options
        if pooled:
            key = (endpoint, user, database, *sorted(f"{k}={v}" for k, v in forwarded.items()))
            pool = self.pooler.pool(key, lambda: self.backend(endpoint, user, database, forwarded))
            await self.pooler.serve(reader, writer, pool)
            return
        backend = await self.backend(endpoint, user, database, forwarded)
        try:
            writer.write(backend.greeting)
            await writer.drain()
            await _relay(reader, writer, backend.reader, backend.writer)
        finally:
            self.release(backend)

    def release(self, backend: Backend) -> None:
        """Closes a backend connection and forgets its cancel key."""
        if backend.key is not None:
            self._cancel_keys.pop(backend.key, None)
        backend.writer.close()

    async def _startup(
        self, reader: asyncio.StreamReader, writer: Sink, *, tls: bool
    ) -> tuple[dict[str, str], bool] | None:
        """The client's startup parameters and whether it is on TLS, after answering its SSL
        and GSS requests; None for a cancel request, which is passed on."""
        while True:
            code, body = await _read_startup(reader)
            if code == _SSL_REQUEST and not tls and isinstance(writer, asyncio.StreamWriter):
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.tls)
                tls = True
            elif code in {_SSL_REQUEST, _GSSENC_REQUEST}:
                writer.write(b"N")
                await writer.drain()
            elif code == _CANCEL_REQUEST:
                await self._cancel(body)
                return None
            elif code >> 16 != _PROTOCOL_MAJOR:
                major, minor = code >> 16, code & 0xFFFF
                raise Refused("08P01", f"unsupported frontend protocol {major}.{minor}")
            else:
                params = _startup_params(body)
                unsupported = sorted(k for k in params if k.startswith("_pq_."))
                if code & 0xFFFF or unsupported:
                    # This proxy speaks 3.0 to both sides; the client is told before auth.
                    writer.write(_negotiate(unsupported))
                return params, tls

    async def route(self, endpoint: str, user: str, database: str) -> Route:
        """Where `user`'s connection to `database` through `endpoint` goes; `Refused` when
        the endpoint is unknown or cannot take connections."""
        try:
            return await self.router.route(endpoint, user, database)
        except NotFound:
            raise Refused(
                "XX000",
                f"endpoint {endpoint!r} could not be found, or you do not have access to it",
            ) from None
        except LocalPlaneError as error:
            raise Refused("53400", str(error)) from None

    async def _check_cleartext(
        self, reader: asyncio.StreamReader, writer: Sink, route: Route, user: str
    ) -> None:
        writer.write(message(b"R", struct.pack("!I", _AUTH_CLEARTEXT)))
        await writer.drain()
        kind, body = await read_message(reader)
        if kind != b"p":
            raise Refused("08P01", "expected a password message")
        if not self.password_matches(route, body.rstrip(b"\0").decode(errors="replace")):
            raise Refused("28P01", f'password authentication failed for user "{user}"')

    @staticmethod
    def password_matches(route: Route, password: str) -> bool:
        """Whether `password` is the route's role's (constant-time; False for no role)."""
        expected = route.password if route.role is not None else None
        if expected is None:
            hmac.compare_digest(password.encode(), password.encode())  # the same time either way
            return False
        return hmac.compare_digest(password.encode(), expected.encode())

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: Sink, route: Route, user: str
    ) -> None:
        """SCRAM-SHA-256(-PLUS) against the role's secret. An unknown role runs the same
        exchange against a random secret, so it fails as a wrong password does."""
        verifier = self._verifier(route.role or "", route.password)
        writer.write(message(b"R", struct.pack("!I", _AUTH_SASL) + _MECHANISMS))
        await writer.drain()
        kind, body = await read_message(reader)
        if kind != b"p":
            raise Refused("08P01", "expected a SASL initial response")
        mechanism, _, rest = body.partition(b"\0")
        if len(rest) < INT32:
            raise Refused("08P01", "malformed SASL initial response")
        (size,) = struct.unpack("!i", rest[:4])
        try:
            exchange = scram.Exchange(mechanism.decode(), verifier, self.end_point)
            server_first = exchange.first(rest[4 : 4 + size].decode())
            writer.write(
                message(b"R", struct.pack("!I", _AUTH_SASL_CONTINUE) + server_first.encode())
            )
            await writer.drain()
            kind, body = await read_message(reader)
            if kind != b"p":
                raise Refused("08P01", "expected a SASL response")
            server_final = exchange.final(body.decode())
        except (scram.ScramError, UnicodeDecodeError):
            raise Refused("28P01", f'password authentication failed for user "{user}"') from None
        if route.role is None:
            raise Refused("28P01", f'password authentication failed for user "{user}"')
        writer.write(message(b"R", struct.pack("!I", _AUTH_SASL_FINAL) + server_final.encode()))

    def _verifier(self, role: str, password: str | None) -> scram.Verifier:
        """The role's SCRAM secret, made once per password (PBKDF2 is slow on purpose)."""
        if not role or password is None:
            # One made-up secret for every unknown role, made once: an unknown role costs what
            # a known one does, so timing does not tell which roles exist.
            return self._unknown
        key = (role, password)
        found = self._verifiers.get(key)
        if found is None:
            if len(self._verifiers) > _MAX_VERIFIERS:
                self._verifiers.clear()
            found = self._verifiers[key] = scram.Verifier.from_password(password)
        return found

    async def backend(
        self, endpoint: str, user: str, database: str, params: dict[str, str]
    ) -> Backend:
        """A backend connection, waiting while the database is closed for a moment. The route
        is read again each time: a restore may have swapped another database in."""
        deadline = time.monotonic() + self.hold_s
        while True:
            route = await self.route(endpoint, user, database)
            if route.role is None or route.password is None or route.database is None:
                raise Refused("3D000", f'database "{database}" does not exist')
            try:
                return await self._open_backend(route.role, route.password, route.database, params)
            except (_Hold, ConnectionError, OSError) as held:
                if time.monotonic() >= deadline:
                    code = held.code if isinstance(held, _Hold) else "08006"
                    raise Refused(code, str(held)) from None
            await asyncio.sleep(_HOLD_POLL_S)

    async def _open_backend(
        self, role: str, password: str, database: str, params: dict[str, str]
    ) -> Backend:
        reader, writer = await _connect(self.server)
        try:
            writer.write(_startup({**params, "user": role, "database": database}))
            await _backend_auth(reader, writer, role, password)
            backend = await _greeting(reader, writer)
        except BaseException:
            writer.close()
            raise
        backend.database = database
        if backend.key is not None:
            self._cancel_keys[backend.key] = self.server
        return backend

    async def _cancel(self, body: bytes) -> None:
        key = body[INT32:]
        server = self._cancel_keys.get(key)
        if server is None:
            # A pooled client's key: the cancel goes to the server it holds, if any.
            backend = self.pooler.client_for_cancel(key)
            if backend is None or backend.key is None:
                return  # as PostgreSQL: an unknown key is ignored, the client told nothing
            key, server = backend.key, self.server
        _, writer = await _connect(server)
        writer.write(struct.pack("!II", 8 + len(key), _CANCEL_REQUEST) + key)
        await writer.drain()
        writer.close()


# --- the wire -----------------------------------------------------------------------------------


def _negotiate(unsupported: list[str]) -> bytes:
    names = b"".join(name.encode() + b"\0" for name in unsupported)
    return message(b"v", struct.pack("!II", 0, len(unsupported)) + names)


def _startup(params: dict[str, str]) -> bytes:
    pairs = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
    body = struct.pack("!I", _PROTOCOL_3) + pairs + b"\0"
    return struct.pack("!I", len(body) + 4) + body


async def _read_startup(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    (length,) = struct.unpack("!I", await reader.readexactly(INT32))
    if not 2 * INT32 <= length <= _MAX_STARTUP:
        raise Refused("08P01", "invalid startup packet length")
    body = await reader.readexactly(length - INT32)
    (code,) = struct.unpack("!I", body[:INT32])
    return code, body


def _startup_params(body: bytes) -> dict[str, str]:
    parts = body[4:].split(b"\0")
    try:
        texts = [p.decode() for p in parts]
    except UnicodeDecodeError:
        raise Refused("08P01", "startup parameters are not UTF-8") from None
    return {texts[i]: texts[i + 1] for i in range(0, len(texts) - 1, 2) if texts[i]}


def _remember_sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
    sock.agentdb_sni = name  # type: ignore[union-attr]


async def _connect(server: ServerInfo) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if server.host.startswith("/"):
        return await asyncio.open_unix_connection(f"{server.host}/.s.PGSQL.{server.port}")
    return await asyncio.open_connection(server.host, server.port)


async def _greeting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Backend:
    """The backend's messages after authentication up to its first ReadyForQuery, which the
    client is sent (after an AuthenticationOk of the proxy's own): the server's parameters and
    its cancel key. An error before then is the server refusing (or holding) the connection."""
    greeting = bytearray(message(b"R", struct.pack("!I", _AUTH_OK)))
    key: bytes | None = None
    while True:
        kind, body = await read_message(reader)
        if kind == b"E":
            raise _servererror_response(body)
        greeting += message(kind, body)
        if kind == b"K":
            key = body
        if kind == b"Z":
            return Backend(reader, writer, bytes(greeting), key)


async def _backend_auth(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str, password: str
) -> None:
    """Logs in to PostgreSQL as `role`, by whichever method its pg_hba asks for."""
    client = scram.Client(password)
    while True:
        kind, body = await read_message(reader)
        if kind == b"E":
            raise _servererror_response(body)
        if kind != b"R":
            continue  # NegotiateProtocolVersion and notices before the request
        (method,) = struct.unpack("!I", body[:INT32])
        if method == _AUTH_OK:
            return
        if method == _AUTH_SASL_FINAL:
            client.verify(body[INT32:].decode())
            continue
        writer.write(message(b"p", _auth_answer(method, body[INT32:], client, role, password)))
        await writer.drain()


def _auth_answer(method: int, data: bytes, client: scram.Client, role: str, password: str) -> bytes:
    """The password message answering one authentication request; b"" after SASL's final."""
    if method == _AUTH_CLEARTEXT:
        return password.encode() + b"\0"
    if method == _AUTH_MD5:
        inner = hashlib.md5(password.encode() + role.encode()).hexdigest()  # noqa: S324
        return b"md5" + hashlib.md5(inner.encode() + data[:4]).hexdigest().encode() + b"\0"  # noqa: S324
    if method == _AUTH_SASL:
        first = client.first().encode()
        return scram.PLAIN.encode() + b"\0" + struct.pack("!i", len(first)) + first
    if method == _AUTH_SASL_CONTINUE:
        return client.final(data.decode()).encode()
    raise Refused("08P01", f"unsupported authentication method {method}")


def _servererror_response(body: bytes) -> Exception:
    """A backend's ErrorResponse before it was ready: `_Hold` for a database closed for a
    moment, else the refusal the client is told."""
    fields = error_fields(body)
    code = fields.get("C", "XX000")
    if code in _HOLD_CODES:
        return _Hold(code, fields.get("M", ""))
    return Refused(code, fields.get("M", "the server refused the connection"))


async def _relay(
    client_reader: asyncio.StreamReader,
    client_writer: Sink,
    backend_reader: asyncio.StreamReader,
    backend_writer: asyncio.StreamWriter,
) -> None:
    """Copies bytes both ways until either side closes."""

    async def pump(source: asyncio.StreamReader, sink: Sink | asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
            while data := await source.read(_CHUNK):
                sink.write(data)
                await sink.drain()

    ups = asyncio.create_task(pump(client_reader, backend_writer))
    downs = asyncio.create_task(pump(backend_reader, client_writer))
    try:
        await asyncio.wait([ups, downs], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (ups, downs):
            task.cancel()
        await asyncio.gather(ups, downs, return_exceptions=True)


async def _peek(sock: socket.socket) -> bytes:
    """The connection's first byte, left unread (TLS must see the whole ClientHello)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(sock.fileno(), readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())
            continue
        if not first:
            raise ConnectionResetError("closed before its first byte")
        return first


async def _streams(
    sock: socket.socket, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over an accepted socket, with TLS (server side) when `tls` is given."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_CHUNK)
    made: asyncio.Future[asyncio.StreamWriter] = loop.create_future()
    # A connected-callback makes the streams server-side, so a later `start_tls` (after an
    # SSLRequest) is the server's end of the handshake.
    protocol = asyncio.StreamReaderProtocol(reader, lambda _, writer: made.set_result(writer))
    await loop.connect_accepted_socket(lambda: protocol, sock, ssl=tls)
    return reader, await made


def _alpn(writer: asyncio.StreamWriter) -> str | None:
    tls_object = writer.get_extra_info("ssl_object")
    return tls_object.selected_alpn_protocol() if tls_object is not None else None
