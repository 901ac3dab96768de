"""IdentServer.stats counts exactly what its clients did."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aioidentd import IdentRequest, IdentServer, ServerStats
from aioidentd.stats import LATENCY_BOUNDS
from support import wait_until_async


async def _exchange(port: int, data: bytes, lines: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answers = [await asyncio.wait_for(reader.readline(), 5) for _ in range(lines)]
    writer.close()
    return answers


async def test_counters_match_what_the_clients_did() -> None:
    def handler(request: IdentRequest) -> None:
        if request.server_port == 1:
            request.reply("UNIX", "alice")
        elif request.server_port == 2:
            request.error("NO-USER")
        elif request.server_port == 3:
            raise RuntimeError("a handler bug")
        # 4: silent, the fallback answers after response_timeout

    server = IdentServer(
        "127.0.0.1", 0, handlers=[handler], multiple=True, response_timeout=0.05, default="fb"
    )
    async with server:
        port = server.addresses[0][1]
        with server.claim((("127.0.0.1", 50000), ("127.0.0.1", 6667)), "claimed"):
            answers = await _exchange(
                port, b"1,9\r\n2,9\r\n3,9\r\n4,9\r\nbogus\r\n50000,6667\r\n1,9\r\n", 7
            )
        assert [a.split(b":")[1] for a in answers] == [
            b"USERID",
            b"ERROR",
            b"USERID",  # the failing handler's query: the fallback
            b"USERID",  # the silent one: the fallback
            b"ERROR",  # INVALID-PORT
            b"USERID",  # the claim
            b"USERID",
        ]
        await _exchange(port, b"1" * 1200, 1)  # over-long: INVALID-PORT, closed
        stats = server.stats
        assert isinstance(stats, ServerStats)
        assert stats.connections_accepted == 2
        assert stats.queries == 6
        assert stats.answers_userid == 2
        assert stats.answers_error == 1
        assert stats.fallbacks == 2
        assert stats.claimed == 1
        assert stats.invalid_lines == 2
        assert stats.handler_failures == 1
        assert stats.latency_count == 6  # every answer to a valid query
        assert sum(stats.latency_buckets) == 6
        # The silent query waited its 50 ms deadline; the others were answered at once.
        slow = sum(stats.latency_buckets[LATENCY_BOUNDS.index(0.025) + 1 :])
        assert slow >= 2  # the silent one, and the ones queued behind it
        await wait_until_async(lambda: stats.connections_open == 0)
        snapshot = stats.snapshot()
        assert snapshot["queries"] == 6 and snapshot["connections_open"] == 0


async def test_evictions_and_refusals_are_counted() -> None:
    gate = asyncio.Event()

    async def hanging(request: IdentRequest) -> None:
        await gate.wait()

    server = IdentServer(
        "127.0.0.1", 0, handlers=[hanging], multiple=True, max_connections=2, response_timeout=5
    )
    async with server:
        port = server.addresses[0][1]
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await wait_until_async(lambda: server.connections == 2)
        busy = []
        for sent in (1, 2):  # each evicts a silent one, then waits for its answer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"1,1\r\n")
            busy.append(writer)
            await wait_until_async(_queries_reach(server, sent))
        assert server.stats.connections_evicted == 2
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # refused
        assert server.stats.connections_refused == 1
        gate.set()
        for _, w in silent:
            w.close()
        for w in (*busy, writer):
            w.close()


def _queries_reach(server: IdentServer, count: int) -> Callable[[], bool]:
    return lambda: server.stats.queries >= count
