"""The socket `agentdb serve`, `agentdb demo` and `agentdb localplane serve` listen on."""

from __future__ import annotations

import asyncio
import socket

import pytest

from agentdb.cli._main import CommandError, _listen


async def test_accepted_connections_send_without_waiting_for_the_clients_ack() -> None:
    """Every accepted connection has TCP_NODELAY (asyncio sets it only on sockets made with
    IPPROTO_TCP): without it each answer on a kept-open connection waits out the client's
    delayed ACK."""
    accepted: list[int] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()
        done.set()

    with _listen("127.0.0.1", 0) as listener:
        server = await asyncio.start_server(handle, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname())
            await asyncio.wait_for(done.wait(), timeout=30)
            writer.close()
    assert accepted == [1]


def test_a_port_in_use_is_one_line() -> None:
    with _listen("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        with (
            pytest.raises(CommandError, match=rf"cannot listen on 127.0.0.1:{port}"),
            _listen("127.0.0.1", port),
        ):
            pass
