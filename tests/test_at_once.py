"""The at-once path: a fresh one-query connection served inside the accept callback.

With ``defer_accept`` the kernel completes accept() only once the query has arrived, so
the server can answer and close without a transport. Every rule of the normal path must
hold there too; each test also checks which path served, so that it tests what it says.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aioidentd import IdentRequest, IdentServer
from aioidentd.driver import Channel, Driver
from support import both_loops, exchange, wait_until_async


@pytest.fixture
def transports(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Records every connection that was registered with the selector (the normal path);
    the at-once path serves a connection inside the accept callback and never is."""
    made: list[object] = []
    original = Driver._settle

    def spy(self: Driver, channel: Channel) -> None:
        original(self, channel)
        if channel.reading and channel not in made:
            made.append(channel)

    monkeypatch.setattr(Driver, "_settle", spy)
    yield made


@asynccontextmanager
async def deferred(defer_accept_off: bool = False, **options: Any) -> AsyncIterator[IdentServer]:
    # defer_accept_off: silent connections reach the server at once (and are parked).
    server = IdentServer(
        "127.0.0.1", 0, defer_accept=not defer_accept_off, response_timeout=0.3, **options
    )
    async with server:
        yield server


def first_query_waiting(server: IdentServer) -> bool:
    """Whether exactly one connection is open and has sent no query yet."""
    driver = server._driver
    if driver is None or len(driver.channels) != 1:
        return False
    (channel,) = driver.channels
    return getattr(channel.session, "state", None) == "FIRST_QUERY"


@both_loops
async def test_a_synchronous_answer_is_sent_at_once(transports: list[object]) -> None:
    def handler(request: IdentRequest) -> None:
        request.reply("UNIX", "alice")

    async with deferred(handlers=[handler]) as server:
        for n in range(1, 21):
            assert await exchange(server, b"%d , 6667\r\n" % n) == (
                b"%d,6667:USERID:UNIX:alice\r\n" % n
            )
        assert transports == []  # none needed a transport
        assert server.stats.connections_accepted == 20
        assert server.stats.answers_userid == 20
        assert server.stats.latency_count == 20
        assert server.connections == 0


@both_loops
async def test_the_fallback_and_an_invalid_line_are_sent_at_once(
    transports: list[object],
) -> None:
    async with deferred(default="fb") as server:
        assert await exchange(server, b"1,2\n") == b"1,2:USERID:UNIX:fb\r\n"
        assert await exchange(server, b"bogus\r\n") == b"0,0:ERROR:INVALID-PORT\r\n"
        assert await exchange(server, b"70000,2\r\n") == b"70000,2:ERROR:INVALID-PORT\r\n"
        assert transports == []
        assert server.stats.invalid_lines == 2 and server.stats.fallbacks == 1


@both_loops
async def test_a_claimed_connection_is_answered_at_once(transports: list[object]) -> None:
    async with deferred() as server:
        with server.claim((("127.0.0.1", 50000), ("127.0.0.1", 6667)), "bot"):
            assert await exchange(server, b"50000,6667\r\n") == b"50000,6667:USERID:UNIX:bot\r\n"
        assert transports == []


@both_loops
async def test_an_answer_that_takes_time_moves_to_a_normal_connection(
    transports: list[object],
) -> None:
    async def slow(request: IdentRequest) -> None:
        await asyncio.sleep(0.05)
        request.reply("UNIX", "later")

    async with deferred(handlers=[slow]) as server:
        assert await exchange(server, b"1,2\r\n") == b"1,2:USERID:UNIX:later\r\n"
        assert len(transports) == 1
        # ... and one whose handler never answers gets the fallback at its deadline.
        server.unregister(slow)
        server.register(lambda request: asyncio.sleep(10))
        assert await exchange(server, b"3,4\r\n") == b"3,4:ERROR:HIDDEN-USER\r\n"
        await wait_until_async(lambda: not server._tasks and server.connections == 0)


@both_loops
async def test_more_than_one_line_takes_the_normal_path(transports: list[object]) -> None:
    async with deferred(default="x") as server:
        # Single mode: the first query is answered, the rest never read; the close is
        # graceful (half-close, then the peer's FIN), not an RST over the answer.
        assert await exchange(server, b"1,2\r\n3,4\r\n", half_close=True) == (
            b"1,2:USERID:UNIX:x\r\n"
        )
        # A line without its end, then the end of input: answered like any other.
        assert await exchange(server, b"5,6", half_close=True) == b"5,6:USERID:UNIX:x\r\n"
        assert len(transports) == 2


@both_loops
async def test_multiple_mode_never_takes_the_at_once_path(transports: list[object]) -> None:
    async with deferred(default="x", multiple=True) as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        for n in (1, 2):
            writer.write(b"%d,1\r\n" % n)
            assert await asyncio.wait_for(reader.readline(), 5) == b"%d,1:USERID:UNIX:x\r\n" % n
        writer.close()
        assert len(transports) == 1


async def test_a_connection_reset_or_closed_before_its_query_costs_nothing() -> None:
    async with deferred(default="x") as server:
        for _ in range(5):
            sock = socket.create_connection(server.addresses[0])
            sock.send(b"1")  # accepted (data arrived), then reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        assert await exchange(server, b"1,2\r\n") == b"1,2:USERID:UNIX:x\r\n"
        await wait_until_async(lambda: server.connections == 0)
        assert server.stats.queries == 1


async def test_a_silent_connection_still_gets_the_first_query_deadline() -> None:
    async with deferred(default="x", first_query_timeout=0.2) as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        # The kernel holds it for about a second (defer_accept), then the server does.
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


@pytest.mark.parametrize("multiple", [False, True])
async def test_a_parked_connection_is_served_once_it_speaks(multiple: bool) -> None:
    async with deferred(default="x", multiple=multiple, defer_accept_off=True) as server:
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        await wait_until_async(lambda: server.connections == 1)  # silent: waiting
        assert first_query_waiting(server)
        for n in (1, 2) if multiple else (1,):
            writer.write(b"%d,1\r\n" % n)
            assert await asyncio.wait_for(reader.readline(), 5) == b"%d,1:USERID:UNIX:x\r\n" % n
        assert not first_query_waiting(server)
        writer.close()
        await wait_until_async(lambda: server.connections == 0)


async def test_a_parked_connection_keeps_its_first_query_deadline() -> None:
    async with deferred(default="x", first_query_timeout=0.5, defer_accept_off=True) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection(*server.addresses[0])
        await wait_until_async(lambda: first_query_waiting(server))
        writer.write(b"1")  # an octet, not a query: unparked, same deadline
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert loop.time() - started < 1.5
        writer.close()
