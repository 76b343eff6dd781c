"""Transaction pooling for the proxy's pooled endpoints (`ep-...-pooler`), as PgBouncer pools on
Neon: many client connections share a few server connections per role and database.

A client gets a server connection for one transaction and gives it back when the server says
the transaction ended (ReadyForQuery, idle, with nothing more sent). Session state is therefore
not kept from one transaction to the next: `SET`, `LISTEN`, advisory locks, temporary tables and
SQL-level `PREPARE` belong to whichever server ran them, as Neon documents for its pooler.
Protocol-level prepared statements do work, as with PgBouncer's `max_prepared_statements`:
the pooler names each client's statements apart (`a<client>_<name>`), remembers their Parse
messages, and prepares them again on a server that has not seen them.

While a checkpoint copies a database or a restore swaps one in (the engine's `_block`), the
pooler lets the transactions in flight on it finish (up to `DRAIN_S`), retires its servers, and
holds new transactions until the database has been closed; their new server connections then
wait at the proxy until it opens again, so a pooled client sees a pause, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._pgwire import INT32, Refused, error_response, message, read_message

if TYPE_CHECKING:
    from ._proxy import Backend, Sink

POOL_SIZE = 5  # server connections per role and database
WAIT_S = 120.0  # a transaction waits this long for a server (PgBouncer's query_wait_timeout)
DRAIN_S = 5.0  # a checkpoint or restore waits this long for pooled transactions to end
_MAX_CLIENT_MESSAGE = 1 << 30
_SYNCING = frozenset({b"S", b"Q"})  # messages the server answers with ReadyForQuery


@dataclass(eq=False)
class Server:
    """A pooled server connection and the statements prepared on it."""

    backend: Backend
    database: str
    prepared: set[bytes] = field(default_factory=set)
    retired: bool = False
    watcher: asyncio.Task[None] | None = None


class Pool:
    """The server connections of one role and database (and startup options)."""

    def __init__(self, opener: Callable[[], Awaitable[Backend]], size: int = POOL_SIZE) -> None:
        self._open = opener
        self._size = size
        self._idle: list[Server] = []
        self._open_count = 0
        self._busy: set[Server] = set()
        self._changed = asyncio.Condition()
        self.draining: set[str] = set()
        self._closed = False
        self.greeting: bytes | None = None
        self.database: str | None = None

    async def acquire(self) -> Server:
        deadline = time.monotonic() + WAIT_S
        async with self._changed:
            while True:
                if self.database not in self.draining:
                    while self._idle:
                        server = self._idle.pop()
                        if server.watcher is not None:
                            server.watcher.cancel()
                        if not server.retired:
                            self._busy.add(server)
                            return server
                        self._forget(server)
                    if self._open_count < self._size:
                        self._open_count += 1
                        break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Refused("53300", "no server connection became free in time")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
        try:
            backend = await self._open()
        except BaseException:
            async with self._changed:
                self._open_count -= 1
                self._changed.notify_all()
            raise
        server = Server(backend, backend.database)
        self.greeting = self.greeting or backend.greeting
        self.database = backend.database
        async with self._changed:
            self._busy.add(server)
        return server

    async def release(self, server: Server, *, reusable: bool) -> None:
        async with self._changed:
            self._busy.discard(server)
            if reusable and not server.retired and not self._closed:
                server.watcher = asyncio.create_task(self._watch(server))
                self._idle.append(server)
            else:
                self._forget(server)
            self._changed.notify_all()

    async def drain(self, database: str) -> None:
        """Lets transactions in flight on `database` end (up to `DRAIN_S`), retires its server
        connections and holds new transactions until `undrain`."""
        async with self._changed:
            self.draining.add(database)
            for server in [*self._idle, *self._busy]:
                if server.database == database:
                    server.retired = True
            for server in [s for s in self._idle if s.retired]:
                self._idle.remove(server)
                if server.watcher is not None:
                    server.watcher.cancel()
                self._forget(server)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(
                        lambda: not any(s.database == database for s in self._busy)
                    ),
                    DRAIN_S,
                )

    async def undrain(self, database: str) -> None:
        async with self._changed:
            self.draining.discard(database)
            self._changed.notify_all()

    async def close(self) -> None:
        """Closes the idle server connections; busy ones are closed as their clients end."""
        async with self._changed:
            idle, self._idle = self._idle, []
            for server in idle:
                server.retired = True
                if server.watcher is not None:
                    server.watcher.cancel()
                self._forget(server)
            self._closed = True  # nothing goes back to the pool now
        watchers = [s.watcher for s in idle if s.watcher is not None]
        await asyncio.gather(*watchers, return_exceptions=True)

    def _forget(self, server: Server) -> None:
        self._open_count -= 1
        server.backend.writer.close()

    async def _watch(self, server: Server) -> None:
        """An idle server that says anything (PostgreSQL ending it) is retired."""
        with contextlib.suppress(Exception):
            await server.backend.reader.read(1)
        server.retired = True
        async with self._changed:
            if server in self._idle:
                self._idle.remove(server)
                self._forget(server)
                self._changed.notify_all()


@dataclass
class _Client:
    """One pooled client: its statements and the server it holds, if any."""

    number: int
    statements: dict[bytes, bytes] = field(default_factory=dict)  # client name -> Parse body
    server: Server | None = None
    pending: int = 0  # ReadyForQuery answers still due
    unsynced: int = 0  # messages sent since the last Sync or Query
    swallow: deque[bool] = field(default_factory=deque)  # per Parse sent: hide its answer?
    relay: asyncio.Task[None] | None = None


class Pooler:
    """The pools, by role, database and options, and the pooled clients' sessions."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, ...], Pool] = {}
        self._numbers = itertools.count(1)
        self._cancel_keys: dict[bytes, _Client] = {}
        self._undraining: set[asyncio.Task[None]] = set()

    def pool(self, key: tuple[str, ...], opener: Callable[[], Awaitable[Backend]]) -> Pool:
        found = self._pools.get(key)
        if found is None:
            found = self._pools[key] = Pool(opener)
        return found

    async def drain(self, database: str) -> None:
        await asyncio.gather(*(p.drain(database) for p in list(self._pools.values())))

    async def close(self) -> None:
        """Closes every pool's idle server connections (the proxy is closing)."""
        await asyncio.gather(*(p.close() for p in list(self._pools.values())))

    def undrain(self, database: str) -> None:
        for pool in list(self._pools.values()):
            task = asyncio.get_running_loop().create_task(pool.undrain(database))
            self._undraining.add(task)
            task.add_done_callback(self._undraining.discard)

    def client_for_cancel(self, key: bytes) -> Backend | None:
        """The server a pooled client's cancel key reaches now, if it holds one."""
        client = self._cancel_keys.get(key)
        return client.server.backend if client is not None and client.server else None

    async def serve(self, reader: asyncio.StreamReader, writer: Sink, pool: Pool) -> None:
        """A pooled client's session after authentication, until it terminates."""
        client = _Client(next(self._numbers))
        if pool.greeting is None:  # the greeting is a server's, with a key of the pooler's
            await pool.release(await pool.acquire(), reusable=True)
        assert pool.greeting is not None  # noqa: S101 - set by the first server opened
        key = struct.pack("!I", client.number & 0x7FFFFFFF) + secrets.token_bytes(4)
        self._cancel_keys[key] = client
        try:
            writer.write(_greeting(pool.greeting, key))
            await writer.drain()
            await self._loop(client, reader, writer, pool)
        finally:
            self._cancel_keys.pop(key, None)
            if client.relay is not None:
                client.relay.cancel()
                await asyncio.gather(client.relay, return_exceptions=True)
            if client.server is not None:
                clean = client.pending == 0 and client.unsynced == 0
                await pool.release(client.server, reusable=clean)

    async def _loop(
        self, client: _Client, reader: asyncio.StreamReader, writer: Sink, pool: Pool
    ) -> None:
        lock = asyncio.Lock()
        while True:
            try:
                kind, body = await read_message(reader, limit=_MAX_CLIENT_MESSAGE)
            except asyncio.IncompleteReadError:
                return
            if kind == b"X":
                return
            async with lock:
                if client.server is None:
                    client.server = await pool.acquire()
                    client.relay = asyncio.create_task(
                        self._relay(client, client.server, writer, pool, lock)
                    )
                server = client.server
                out = self._rewrite(client, server, kind, body)
                if kind in _SYNCING:
                    client.pending += 1
                    client.unsynced = 0
                else:
                    client.unsynced += 1
            server.backend.writer.write(out)
            await server.backend.writer.drain()

    def _rewrite(self, client: _Client, server: Server, kind: bytes, body: bytes) -> bytes:
        """The message for the server: the client's statement names made the pooler's, and a
        statement the server has not prepared prepared first (its ParseComplete hidden)."""
        prefix = f"a{client.number}_".encode()
        if kind == b"P":
            client.swallow.append(False)
            name, rest = _cstring(body)
            if not name:
                return message(kind, body)
            client.statements[name] = rest
            server.prepared.add(prefix + name)
            return message(kind, prefix + name + b"\0" + rest)
        if kind == b"B":
            portal, rest = _cstring(body)
            name, rest = _cstring(rest)
            if not name:
                return message(kind, body)
            before = self._prepare(client, server, prefix, name)
            return before + message(kind, portal + b"\0" + prefix + name + b"\0" + rest)
        if kind in {b"D", b"C"} and body[:2] not in {b"S\0", b""} and body[:1] == b"S":
            return self._statement_message(client, server, prefix, kind, body)
        return message(kind, body)

    def _statement_message(
        self, client: _Client, server: Server, prefix: bytes, kind: bytes, body: bytes
    ) -> bytes:
        """Describe or Close of a named statement, renamed (a Describe prepares it first)."""
        name, rest = _cstring(body[1:])
        before = self._prepare(client, server, prefix, name) if kind == b"D" else b""
        if kind == b"C":
            client.statements.pop(name, None)
            server.prepared.discard(prefix + name)
        return before + message(kind, b"S" + prefix + name + b"\0" + rest)

    @staticmethod
    def _prepare(client: _Client, server: Server, prefix: bytes, name: bytes) -> bytes:
        parse = client.statements.get(name)
        if parse is None or prefix + name in server.prepared:
            return b""
        server.prepared.add(prefix + name)
        client.swallow.append(True)
        return message(b"P", prefix + name + b"\0" + parse)

    async def _relay(
        self, client: _Client, server: Server, writer: Sink, pool: Pool, lock: asyncio.Lock
    ) -> None:
        """The server's answers to the client, until the transaction ends and the server
        goes back to the pool."""
        reader = server.backend.reader
        try:
            while True:
                kind, body = await read_message(reader, limit=_MAX_CLIENT_MESSAGE)
                if kind == b"1" and client.swallow and client.swallow.popleft():
                    continue
                writer.write(message(kind, body))
                if kind != b"Z":
                    continue
                client.swallow.clear()  # after an error the server skipped to the Sync
                await writer.drain()
                async with lock:
                    client.pending = max(0, client.pending - 1)
                    if client.pending == 0 and client.unsynced == 0 and body[:1] == b"I":
                        client.server = None
                        client.relay = None
                        await pool.release(server, reusable=True)
                        return
        except (asyncio.IncompleteReadError, ConnectionError, Refused):
            # The server went away mid-transaction: the client is told, as PostgreSQL would.
            server.retired = True
            ended = "the server connection ended; run the transaction again"
            writer.write(error_response("57P01", ended))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()


def _cstring(data: bytes) -> tuple[bytes, bytes]:
    end = data.index(b"\0")
    return data[:end], data[end + 1 :]


def _greeting(greeting: bytes, key: bytes) -> bytes:
    """A server's greeting (AuthenticationOk, ParameterStatus..., BackendKeyData,
    ReadyForQuery) with the pooler's cancel key in place of the server's."""
    out = bytearray()
    offset = 0
    while offset < len(greeting):
        kind = greeting[offset : offset + 1]
        (length,) = struct.unpack("!I", greeting[offset + 1 : offset + 1 + INT32])
        body = greeting[offset + 1 + INT32 : offset + 1 + length]
        offset += 1 + length
        if kind == b"K":
            body = key
        elif kind == b"Z":
            body = b"I"
        out += message(kind, body)
    return bytes(out)
