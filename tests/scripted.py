"""A scripted ident responder for client tests: real sockets, answers chosen by the test.

A real identd can only say what the kernel says; the client must also cope with servers
that split answers, lie about ports, send garbage, stay silent or reset, so each test
scripts exactly what the server does after reading the query line.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from aioidentd.protocol import InvalidQuery, Query, parse_query
from support import wait_until_async

T = TypeVar("T")

#: What the server does once it has read a query: it gets the parsed query (``None`` when
#: the line did not parse), the reader (to wait for the client's EOF) and the writer.
Respond = Callable[[Query | None, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

#: The longest any scripted server waits for the client to go away, so that a client bug
#: shows up as a failure rather than a hung suite.
LINGER = 10.0


def open_fds() -> int:
    """The process's open descriptors, once sockets that earlier tests dropped are closed.

    Without the collection, a socket another test left to the garbage collector can close in
    the middle of a test and make its count drop below its own baseline (seen under load).
    """
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


async def settle_fds(baseline: int, within: float = 2.0) -> int:
    """Wait (briefly) until the process is back to ``baseline`` open fds; return the count.

    Transports close their sockets on a later loop iteration than ``close()``, so an exact
    count right after the call would be flaky; a leak, by contrast, never settles.
    """
    deadline = time.monotonic() + within
    count = open_fds()
    while count > baseline and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        count = open_fds()
    return count


async def wait_for_eof(reader: asyncio.StreamReader) -> None:
    """Read until the client closes, so the server never closes first by accident."""
    try:
        async with asyncio.timeout(LINGER):
            while await reader.read(4096):
                pass
    except (TimeoutError, ConnectionError):
        pass


def send(line: bytes | Callable[[Query], bytes], *, then_close: bool = False) -> Respond:
    """Answer with ``line`` in one write (``%d``s filled from the query), then keep the
    connection open until the client closes (or close at once with ``then_close``)."""

    async def respond(
        query: Query | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert query is not None
        data = line(query) if callable(line) else fill(line, query)
        writer.write(data)
        await writer.drain()
        if not then_close:
            await wait_for_eof(reader)

    return respond


def fill(template: bytes, query: Query) -> bytes:
    count = template.count(b"%d")
    values = (query.server_port, query.client_port)[:count]
    return template % values if count else template


def chunks(*parts: bytes, delay: float = 0.02) -> Respond:
    """Answer in several writes with pauses, as a slow or segmenting server would."""

    async def respond(
        query: Query | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert query is not None
        data = fill(b"".join(parts), query)
        sizes = [len(fill(part, query)) for part in parts]
        offset = 0
        for size in sizes:
            writer.write(data[offset : offset + size])
            offset += size
            await writer.drain()
            await asyncio.sleep(delay)
        await wait_for_eof(reader)

    return respond


async def silent(
    query: Query | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await wait_for_eof(reader)


async def close_at_once(
    query: Query | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.close()


def reset(before: bytes = b"") -> Respond:
    """Send ``before`` and then a TCP RST (SO_LINGER 0), as a crashing server would."""

    async def respond(
        query: Query | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        if before:
            writer.write(before)
            await writer.drain()
            # A reset discards what the peer has not read yet: wait until it has.
            await wait_until_async(lambda: _unread_by_peer(sock) == 0, what="peer read it")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return respond


def _unread_by_peer(sock: socket.socket) -> int | None:
    """Octets waiting in the receive queue of our peer's socket (on this host, from
    /proc/net/tcp{,6}); None when the peer's socket is not found."""
    peer, ours = sock.getpeername(), sock.getsockname()
    wanted = (f":{peer[1]:04X}", f":{ours[1]:04X}")
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[1].endswith(wanted[0]) and fields[2].endswith(wanted[1]):
                    return int(fields[4].split(":")[1], 16)
    return None


class ScriptedIdentd:
    """``async with ScriptedIdentd(respond) as identd:`` listens on ``identd.port``.

    Records each connection's peer address and raw query line, so tests can check what the
    client sent and from where.
    """

    def __init__(self, respond: Respond, host: str = "127.0.0.1") -> None:
        self.respond = respond
        self.host = host
        self.port = 0
        self.peers: list[Any] = []
        self.lines: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ScriptedIdentd:
        # A backlog above the concurrency tests use, so no SYN is dropped and retried.
        self._server = await asyncio.start_server(self._handle, self.host, 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.peers.append(writer.get_extra_info("peername"))
        try:
            line = await reader.readline()
            self.lines.append(line)
            try:
                query: Query | None = parse_query(line)
            except InvalidQuery:
                query = None
            await self.respond(query, reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)


@contextmanager
def identd_in_thread(respond: Respond, host: str = "127.0.0.1") -> Iterator[ScriptedIdentd]:
    """A :class:`ScriptedIdentd` on its own loop in a thread, for code that calls
    ``asyncio.run`` itself (the CLI)."""
    ready = threading.Event()
    holder: list[Any] = []

    async def serve() -> None:
        stop = asyncio.Event()
        async with ScriptedIdentd(respond, host) as identd:
            holder.extend([identd, asyncio.get_running_loop(), stop])
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("scripted identd did not start")
    identd, loop, stop = holder
    try:
        yield identd
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
