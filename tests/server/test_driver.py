"""The socket driver over real sockets, with a line protocol of its own (an echo of
upper-cased lines): what every service on the driver gets, whatever it speaks.

The echo session below is also the smallest example of a session (see
:mod:`aioidentd.driver`): bytes in, events out, bytes to send, and the five attributes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from aioidentd.driver import CLOSE, KEEP, Channel, Driver
from aioidentd.listener import Listener, bind_sockets
from support import both_loops, wait_until_async

BUDGET = 4


class Echo:
    """Upper-cases each line back; at most BUDGET lines per call; closes on 'bye' or
    when idle for ``idle`` seconds."""

    def __init__(self, now: float, idle: float, fail_on: bytes | None = None) -> None:
        self.deadline = now + idle
        self.want_read = True
        self.more = False
        self.end = KEEP
        self.activity = 0
        self.evictable = True
        self._idle = idle
        self._buffer = b""
        self._out: list[bytes] = []
        self._fail_on = fail_on

    def receive(self, data: bytes, now: float) -> list[bytes]:
        if not data:
            self.end = CLOSE
            return []
        self._buffer += data
        return self._lines(now)

    def resume(self, now: float) -> list[bytes]:
        return self._lines(now)

    def _lines(self, now: float) -> list[bytes]:
        lines: list[bytes] = []
        while len(lines) < BUDGET and b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line == self._fail_on:
                raise RuntimeError("a bug in a session")
            lines.append(line)
            self.activity += 1
            self.deadline = now + self._idle
            if line == b"bye":
                self.end = CLOSE
                break
            self._out.append(line.upper() + b"\n")
        self.more = b"\n" in self._buffer and self.end == KEEP
        return lines

    def timer(self, now: float) -> None:
        self.end = CLOSE
        self.deadline = math.inf

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out


class EchoService:
    def __init__(self, idle: float = 5.0, fail_on: bytes | None = None) -> None:
        self.idle = idle
        self.fail_on = fail_on
        self.lines: list[bytes] = []
        self.opened = 0
        self.gone = 0

    def open(self, channel: Channel, now: float) -> Echo:
        self.opened += 1
        return Echo(now, self.idle, self.fail_on)

    def events(self, channel: Channel, events: Any) -> None:
        self.lines.extend(events)

    def closed(self, channel: Channel) -> None:
        self.gone += 1


#: How the driver watches its sockets: its own epoll set (Linux), or the loop's
#: add_reader/add_writer per socket (elsewhere). Every test runs with both.
POLLERS = ["epoll", "loop"]
_poller = POLLERS[0]


@pytest.fixture(params=POLLERS, autouse=True)
def poller(request: pytest.FixtureRequest) -> str:
    global _poller
    _poller = str(request.param)
    return _poller


@asynccontextmanager
async def echo_server(service: EchoService, **options: Any) -> AsyncIterator[tuple[Driver, int]]:
    loop = asyncio.get_running_loop()
    options.setdefault("poller", _poller)
    driver = Driver(loop, service, "echo", **options)
    (sock,) = bind_sockets("127.0.0.1", 0)
    listener = Listener(loop, sock, driver.accept, "echo")
    listener.start()
    try:
        yield driver, sock.getsockname()[1]
    finally:
        listener.close()
        driver.close_all()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


@both_loops
async def test_lines_are_answered_in_order_and_bye_closes() -> None:
    service = EchoService()
    async with echo_server(service) as (driver, port):
        reader, writer = await connect(port)
        writer.write(b"one\ntwo\n")
        assert await reader.readline() == b"ONE\n"
        assert await reader.readline() == b"TWO\n"
        writer.write(b"bye\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await wait_until_async(lambda: service.gone == 1 and len(driver) == 0)


@both_loops
async def test_a_request_already_there_is_served_inside_the_accept_callback() -> None:
    service = EchoService()
    async with echo_server(service) as (driver, port):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"hi\nbye\n")
            await wait_until_async(lambda: service.gone == 1)
            assert sock.recv(100) == b"HI\n"
        # ...and whether the data was already there when accepted or not, nobody was
        # left registered.
        assert len(driver) == 0


@both_loops
async def test_a_pipelining_client_is_served_a_budget_at_a_time() -> None:
    service = EchoService()
    async with echo_server(service) as (_driver, port):
        flood_reader, flood = await connect(port)
        flood.write(b"x\n" * 5000)
        reader, writer = await connect(port)
        writer.write(b"me\n")
        # Served while the flood is still being worked through, not after it.
        assert await asyncio.wait_for(reader.readline(), 5) == b"ME\n"
        assert service.lines.count(b"x") < 5000
        for _ in range(5000):
            assert await flood_reader.readline() == b"X\n"
        flood.close()
        writer.close()


@both_loops
async def test_a_peer_that_does_not_read_is_not_read_and_its_buffer_stays_bounded() -> None:
    service = EchoService()
    async with echo_server(service, high_water=8 * 1024) as (driver, port):
        reader, writer = await connect(port)
        writer.transport.set_write_buffer_limits(high=10**9)
        count = 50_000
        writer.write(b"%s\n" % (b"y" * 200) * count)
        await wait_until_async(lambda: len(driver) == 1)
        (channel,) = driver.channels
        await wait_until_async(lambda: channel.buffered > 0 and not channel.reading)
        for _ in range(10):
            await asyncio.sleep(0.01)
            assert channel.buffered < 8 * 1024 + 200 * BUDGET + 1024
        answer = b"Y" * 200 + b"\n"
        for _ in range(count):
            assert await reader.readline() == answer
        writer.close()


async def test_the_deadline_closes_an_idle_connection() -> None:
    service = EchoService(idle=0.2)
    async with echo_server(service) as (_driver, port):
        reader, writer = await connect(port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_a_deadline_reads_what_arrived_before_it_acts() -> None:
    # The deadline is due, and a line is waiting in the kernel: it is read (and extends
    # the deadline) instead of being closed over, as after a SIGSTOP.
    service = EchoService(idle=0.2)
    async with echo_server(service, poller="loop") as (driver, port):
        reader, writer = await connect(port)
        await wait_until_async(lambda: len(driver) == 1)
        (channel,) = driver.channels
        loop = asyncio.get_running_loop()
        loop.remove_reader(channel.fd)  # as if the loop ran its timers first
        channel._reading = True
        writer.write(b"late\n")
        await writer.drain()
        await wait_until_async(lambda: channel.unread() > 0)
        await asyncio.sleep(0.3)  # the deadline passes with the line unread
        assert await asyncio.wait_for(reader.readline(), 5) == b"LATE\n"
        writer.close()


async def test_the_limit_evicts_the_connection_silent_longest() -> None:
    service = EchoService()
    async with echo_server(service, max_connections=2) as (driver, port):
        first_r, first = await connect(port)
        second_r, second = await connect(port)
        await wait_until_async(lambda: len(driver) == 2)
        first.write(b"a\n")
        assert await first_r.readline() == b"A\n"
        third_r, third = await connect(port)
        third.write(b"c\n")
        assert await third_r.readline() == b"C\n"
        assert await asyncio.wait_for(second_r.read(), 5) == b""  # silent longest
        assert driver.counters.connections_evicted == 1
        first.write(b"b\n")
        assert await first_r.readline() == b"B\n"
        for w in (first, second, third):
            w.close()


async def test_a_failing_session_is_logged_once_and_only_its_connection_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = EchoService(fail_on=b"boom")
    with caplog.at_level(logging.ERROR, logger="aioidentd.driver"):
        async with echo_server(service) as (_driver, port):
            for _ in range(5):
                reader, writer = await connect(port)
                writer.write(b"boom\n")
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()
            reader, writer = await connect(port)
            writer.write(b"fine\n")
            assert await reader.readline() == b"FINE\n"
            writer.close()
    # One line with its traceback, then a count (rate-limited: anyone can connect).
    failures = [r for r in caplog.records if "unexpected failure in" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert any("4 more unexpected failures" in r.getMessage() for r in caplog.records)
