"""IdentServer over real loopback sockets: the seed's tests, and every rule it broke."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest

from aioidentd import IdentRequest, IdentServer
from support import (
    Client,
    both_loops,
    enter_own_network_namespace,
    ipv6_loopback,
    require_ipv6,
    require_root,
    serving,
    wait_until_async,
)
from support import ask_line as ask

# -- the seed's own tests (t/01..t/05), ported ------------------------------------------------


@both_loops
async def test_t01_userid_from_a_synchronous_handler() -> None:
    seen: list[IdentRequest] = []

    def handler(request: IdentRequest) -> None:
        seen.append(request)
        request.reply("UNIX", "bingos")

    async with serving(handlers=[handler]) as server:
        client = await Client.connect(server)
        await client.send(b"12345, 123\r\n")
        assert await client.line() == b"12345,123:USERID:UNIX:bingos\r\n"
        assert await client.rest() == b""  # closed after the answer (multiple=False)
        await client.close()
    assert len(seen) == 1


@both_loops
async def test_t02_hidden_user_when_no_handler_answers() -> None:
    called: list[IdentRequest] = []
    async with serving(handlers=[called.append]) as server:
        start = time.monotonic()
        assert await ask(server) == b"12345,123:ERROR:HIDDEN-USER\r\n"
        elapsed = time.monotonic() - start
    assert len(called) == 1
    assert 0.25 <= elapsed < 2.0  # the response timeout (0.3 s), not the seed's fixed 10 s


@both_loops
async def test_t03_garbage_gets_invalid_port_and_no_handler_call() -> None:
    called: list[IdentRequest] = []
    async with serving(handlers=[called.append], multiple=True) as server:
        assert await ask(server, b"Garbage\r\n") == b"0,0:ERROR:INVALID-PORT\r\n"
    assert called == []


async def test_t04_default_user_id() -> None:
    async with serving(handlers=[lambda r: None], default="bingos") as server:
        assert await ask(server) == b"12345,123:USERID:UNIX:bingos\r\n"


async def test_t05_random_user_id_is_fresh_per_query() -> None:
    async with serving(handlers=[lambda r: None], random=True, multiple=True) as server:
        client = await Client.connect(server)
        await client.send(b"1,2\r\n3,4\r\n5,6\r\n")
        lines = [await client.line() for _ in range(3)]
        await client.close()
    ids = []
    for line, pair in zip(lines, (b"1,2", b"3,4", b"5,6"), strict=True):
        match = re.fullmatch(rb"(\d+,\d+):USERID:UNIX:([a-z0-9]{8})\r\n", line)
        assert match is not None, line
        assert match.group(1) == pair
        ids.append(match.group(2))
    assert len(set(ids)) == 3


# -- answers -----------------------------------------------------------------------------------


async def test_no_handler_means_immediate_fallback() -> None:
    async with serving(response_timeout=5.0, default="nobody") as server:
        start = time.monotonic()
        assert await ask(server) == b"12345,123:USERID:UNIX:nobody\r\n"
        assert time.monotonic() - start < 1.0


async def test_default_wins_over_random() -> None:
    async with serving(default="fixed", random=True) as server:
        assert await ask(server) == b"12345,123:USERID:UNIX:fixed\r\n"


async def test_spaced_reply_style() -> None:
    async with serving(handlers=[lambda r: r.reply("UNIX", "bingos")], reply_style="spaced") as s:
        assert await ask(s) == b"12345 , 123 : USERID : UNIX : bingos\r\n"
        assert await ask(s, b"nope\n") == b"0 , 0 : ERROR : INVALID-PORT\r\n"
        assert await ask(s, b"1" * 1001) == b"0 , 0 : ERROR : INVALID-PORT\r\n"  # over-long


async def test_request_carries_ports_and_both_addresses() -> None:
    seen: list[IdentRequest] = []

    def handler(request: IdentRequest) -> None:
        seen.append(request)
        request.error("no-user")

    async with serving(handlers=[handler]) as server:
        client = await Client.connect(server)
        await client.send(b" 6191 ,\t23 \n")  # bare LF, odd spacing
        assert await client.line() == b"6191,23:ERROR:NO-USER\r\n"
        local_port = client.writer.get_extra_info("sockname")[1]
        listening = server.addresses[0]
        await client.close()
    (request,) = seen
    assert (request.server_port, request.client_port) == (6191, 23)
    assert request.peer == ("127.0.0.1", local_port)
    assert request.local == listening
    assert request.answered
    assert "6191,23" in repr(request)


async def test_charset_and_x_token_answers() -> None:
    answers = iter([("reply", ("UNIX", "jürgen", "UTF-8")), ("error", ("X-BUSY",))])

    def handler(request: IdentRequest) -> None:
        kind, args = next(answers)
        getattr(request, kind)(*args)

    async with serving(handlers=[handler]) as server:
        assert await ask(server) == "12345,123:USERID:UNIX,UTF-8:jürgen\r\n".encode()
        assert await ask(server) == b"12345,123:ERROR:X-BUSY\r\n"


@both_loops
async def test_async_handler_answers_later() -> None:
    async def handler(request: IdentRequest) -> None:
        await asyncio.sleep(0.1)
        request.reply("OTHER", "later")

    async with serving(handlers=[handler], response_timeout=2.0) as server:
        assert await ask(server) == b"12345,123:USERID:OTHER:later\r\n"


async def test_answer_from_another_coroutine() -> None:
    waiting: asyncio.Queue[IdentRequest] = asyncio.Queue()

    async def answerer() -> None:
        request = await waiting.get()
        request.reply("UNIX", "elsewhere")

    async with serving(handlers=[waiting.put_nowait], response_timeout=2.0) as server:
        task = asyncio.create_task(answerer())
        assert await ask(server) == b"12345,123:USERID:UNIX:elsewhere\r\n"
        await task


async def test_slow_async_handler_does_not_block_other_connections() -> None:
    release = asyncio.Event()

    async def handler(request: IdentRequest) -> None:
        if request.server_port == 1:
            await release.wait()
            request.reply("UNIX", "slow")
        else:
            request.reply("UNIX", "fast")

    async with serving(handlers=[handler], response_timeout=5.0) as server:
        slow = await Client.connect(server)
        await slow.send(b"1,1\r\n")
        start = time.monotonic()
        assert await ask(server, b"2,2\r\n") == b"2,2:USERID:UNIX:fast\r\n"
        assert time.monotonic() - start < 1.0
        release.set()
        assert await slow.line() == b"1,1:USERID:UNIX:slow\r\n"
        await slow.close()


async def test_first_answer_wins_and_later_ones_return_false() -> None:
    results: list[bool] = []

    def first(request: IdentRequest) -> None:
        results.append(request.reply("UNIX", "first"))
        results.append(request.error("NO-USER"))

    def second(request: IdentRequest) -> None:
        results.append(request.reply("UNIX", "second"))

    async with serving(handlers=[first, second], multiple=True) as server:
        client = await Client.connect(server)
        await client.send(b"1,2\r\n")
        assert await client.line() == b"1,2:USERID:UNIX:first\r\n"
        await client.send(b"3,4\r\n")  # the next answer proves no second line was queued
        assert await client.line() == b"3,4:USERID:UNIX:first\r\n"
        await client.close()
    assert results == [True, False, False, True, False, False]


async def test_answer_after_the_fallback_is_refused() -> None:
    late: list[bool] = []

    async def handler(request: IdentRequest) -> None:
        await asyncio.sleep(0.5)
        late.append(request.reply("UNIX", "too-late"))

    async with serving(handlers=[handler], response_timeout=0.1, multiple=True) as server:
        client = await Client.connect(server)
        await client.send(b"1,2\r\n")
        assert await client.line() == b"1,2:ERROR:HIDDEN-USER\r\n"
        await wait_until_async(lambda: bool(late), what="the late reply was tried")
        await client.send(b"9,9\r\n")
        assert await client.line() == b"9,9:ERROR:HIDDEN-USER\r\n"
        await client.close()
    assert late == [False]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_failing_handler_is_logged_and_fallback_goes_out(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    def sync_handler(request: IdentRequest) -> None:
        raise RuntimeError("boom")

    async def async_handler(request: IdentRequest) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    handler = sync_handler if kind == "sync" else async_handler
    with caplog.at_level(logging.ERROR, logger="aioidentd.server"):
        async with serving(handlers=[handler], default="fallback") as server:
            assert await ask(server) == b"12345,123:USERID:UNIX:fallback\r\n"
            assert await ask(server) == b"12345,123:USERID:UNIX:fallback\r\n"  # still alive
    assert any("boom" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_failing_handler_does_not_stop_the_others() -> None:
    def bad(request: IdentRequest) -> None:
        raise ValueError("bad handler")

    async with serving(handlers=[bad, lambda r: r.reply("UNIX", "good")]) as server:
        assert await ask(server) == b"12345,123:USERID:UNIX:good\r\n"


async def test_injection_attempt_is_refused_and_nothing_forged_is_sent() -> None:
    errors: list[Exception] = []

    def handler(request: IdentRequest) -> None:
        try:
            request.reply("UNIX", "alice\r\n12345,123:USERID:UNIX:root")
        except ValueError as exc:
            errors.append(exc)
        try:
            request.reply("UN:IX", "alice")
        except ValueError as exc:
            errors.append(exc)

    async with serving(handlers=[handler], multiple=True) as server:
        client = await Client.connect(server)
        await client.send(b"12345,123\r\n")
        assert await client.line() == b"12345,123:ERROR:HIDDEN-USER\r\n"
        client.half_close()
        assert await client.rest() == b""
        await client.close()
    assert len(errors) == 2


async def test_unregister_stops_calls() -> None:
    calls: list[int] = []

    def handler(request: IdentRequest) -> None:
        calls.append(request.server_port)
        request.reply("UNIX", "x")

    async with serving(handlers=[handler], default="gone") as server:
        assert await ask(server, b"1,1\r\n") == b"1,1:USERID:UNIX:x\r\n"
        server.unregister(handler)
        server.unregister(handler)  # unknown: no error
        assert await ask(server, b"2,2\r\n") == b"2,2:USERID:UNIX:gone\r\n"
    assert calls == [1]


# -- connections ------------------------------------------------------------------------------


@both_loops
async def test_multiple_answers_pipelined_queries_in_order() -> None:
    async def handler(request: IdentRequest) -> None:
        # Later queries answer sooner: the wire order must still be the query order.
        await asyncio.sleep(0.05 * (4 - request.server_port))
        request.reply("UNIX", f"u{request.server_port}")

    async with serving(handlers=[handler], multiple=True, response_timeout=2.0) as server:
        client = await Client.connect(server)
        await client.send(b"1,10\r\n2,20\n3 , 30\r\nbad\r\n")
        lines = [await client.line() for _ in range(4)]
        await client.close()
    assert lines == [
        b"1,10:USERID:UNIX:u1\r\n",
        b"2,20:USERID:UNIX:u2\r\n",
        b"3,30:USERID:UNIX:u3\r\n",
        b"0,0:ERROR:INVALID-PORT\r\n",
    ]


async def test_query_split_over_segments() -> None:
    async with serving(handlers=[lambda r: r.reply("UNIX", "x")]) as server:
        client = await Client.connect(server)
        for part in (b"80, ", b"25\r", b"\n"):
            await client.send(part)
            await asyncio.sleep(0.02)
        assert await client.line() == b"80,25:USERID:UNIX:x\r\n"
        await client.close()


@both_loops
async def test_single_mode_answers_once_and_closes_gracefully() -> None:
    async with serving(handlers=[lambda r: r.reply("UNIX", "x")]) as server:
        client = await Client.connect(server)
        await client.send(b"1,2\r\n3,4\r\n")
        assert await client.line() == b"1,2:USERID:UNIX:x\r\n"
        await client.send(b"5,6\r\n")  # after the answer: must not turn into an RST
        assert await client.rest() == b""
        await client.close()


async def test_single_mode_invalid_query_closes() -> None:
    async with serving() as server:
        client = await Client.connect(server)
        await client.send(b"70000, 5\r\n")
        assert await client.rest() == b"70000,5:ERROR:INVALID-PORT\r\n"
        await client.close()


@both_loops
@pytest.mark.parametrize("multiple", [False, True])
async def test_half_close_still_gets_the_answer(multiple: bool) -> None:
    async def handler(request: IdentRequest) -> None:
        await asyncio.sleep(0.1)
        request.reply("UNIX", "halfclosed")

    async with serving(handlers=[handler], multiple=multiple, response_timeout=2.0) as server:
        client = await Client.connect(server)
        await client.send(b"1,2\r\n")
        client.half_close()
        assert await client.rest() == b"1,2:USERID:UNIX:halfclosed\r\n"
        await client.close()


async def test_last_query_without_newline_is_answered_at_eof() -> None:
    async with serving(default="x") as server:
        client = await Client.connect(server)
        await client.send(b"1,2")
        client.half_close()
        assert await client.rest() == b"1,2:USERID:UNIX:x\r\n"
        await client.close()


@both_loops
async def test_idle_connection_is_closed_silently() -> None:
    async with serving(idle_timeout=0.2) as server:
        client = await Client.connect(server)
        start = time.monotonic()
        assert await client.rest() == b""
        assert 0.15 <= time.monotonic() - start < 1.5
        await client.close()
        await wait_until_async(lambda: server.connections == 0, what="the connection is gone")


async def test_idle_timer_is_reset_by_activity_in_multiple_mode() -> None:
    async with serving(idle_timeout=0.3, multiple=True, default="x") as server:
        client = await Client.connect(server)
        for n in range(1, 6):  # 5 x 0.15 s = 0.75 s, longer than the idle timeout
            await client.send(b"%d,1\r\n" % n)
            assert await client.line() == b"%d,1:USERID:UNIX:x\r\n" % n
            await asyncio.sleep(0.15)
        assert await client.rest() == b""  # then idles out
        await client.close()


async def test_idle_timeout_never_cuts_a_waiting_query() -> None:
    async with serving(handlers=[lambda r: None], idle_timeout=0.1, response_timeout=0.5) as s:
        assert await ask(s) == b"12345,123:ERROR:HIDDEN-USER\r\n"


@pytest.mark.parametrize("newline", [b"", b"\r\n"])
async def test_overlong_line_gets_invalid_port_and_close(newline: bytes) -> None:
    async with serving(multiple=True) as server:
        client = await Client.connect(server)
        await client.send(b"1" * 1001 + newline)
        assert await client.rest() == b"0,0:ERROR:INVALID-PORT\r\n"
        await client.close()


async def test_line_of_1000_octets_is_still_parsed() -> None:
    async with serving(multiple=True) as server:
        client = await Client.connect(server)
        await client.send(b" " * 995 + b"1,2\r\n")  # 998 octets + CR before the LF
        assert await client.line() == b"1,2:ERROR:HIDDEN-USER\r\n"
        await client.close()


@both_loops
async def test_connection_limit_evicts_the_connection_silent_longest() -> None:
    async with serving(max_connections=2, multiple=True, default="x") as server:
        first = await Client.connect(server)
        second = await Client.connect(server)
        await first.send(b"1,1\r\n")
        assert await first.line() == b"1,1:USERID:UNIX:x\r\n"
        # Full: the newcomer is served, and the connection that has sent no query for
        # the longest (second: never; first queried since) makes room.
        third = await Client.connect(server)
        await third.send(b"3,3\r\n")
        assert await third.line() == b"3,3:USERID:UNIX:x\r\n"
        assert await second.rest() == b""
        await first.send(b"2,2\r\n")
        assert await first.line() == b"2,2:USERID:UNIX:x\r\n"
        for client in (first, second, third):
            await client.close()


@both_loops
async def test_connection_limit_refuses_when_every_connection_waits_for_an_answer() -> None:
    gate = asyncio.Event()

    async def handler(request: IdentRequest) -> None:
        await gate.wait()
        request.reply("UNIX", "late")

    async with serving(
        max_connections=2, multiple=True, handlers=[handler], response_timeout=5.0
    ) as server:
        first = await Client.connect(server)
        second = await Client.connect(server)
        for client in (first, second):
            await client.send(b"1,1\r\n")
        await wait_until_async(lambda: len(server._tasks) == 2, what="two handler tasks")
        third = await Client.connect(server)
        assert await third.rest() == b""  # refused: nobody may be evicted
        gate.set()
        for client in (first, second):
            assert await client.line() == b"1,1:USERID:UNIX:late\r\n"
        for client in (first, second, third):
            await client.close()


@both_loops
async def test_pending_limit_applies_backpressure_without_losing_queries() -> None:
    gate = asyncio.Event()
    most = 0
    pending: list[IdentRequest] = []

    async def handler(request: IdentRequest) -> None:
        nonlocal most
        pending.append(request)
        most = max(most, sum(not r.answered for r in pending))
        await gate.wait()
        request.reply("UNIX", "ok")

    async with serving(
        handlers=[handler], multiple=True, max_pending=3, response_timeout=5.0
    ) as server:
        client = await Client.connect(server)
        await client.send(b"".join(b"%d,1\r\n" % n for n in range(1, 11)))
        # Dispatching beyond the limit would happen in the same callback as reaching it.
        await wait_until_async(lambda: len(pending) >= 3, what="three queries dispatched")
        assert most == 3
        gate.set()
        lines = [await client.line() for _ in range(10)]
        await client.close()
    assert lines == [b"%d,1:USERID:UNIX:ok\r\n" % n for n in range(1, 11)]


async def test_reset_and_empty_connections_leave_the_server_working() -> None:
    async with serving(default="x") as server:
        host, port = server.addresses[0]
        for _ in range(5):
            sock = socket.create_connection((host, port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST
            _, writer = await asyncio.open_connection(host, port)
            writer.close()  # FIN without a query
        assert await ask(server) == b"12345,123:USERID:UNIX:x\r\n"
        await wait_until_async(lambda: server.connections == 0, what="every connection gone")


# -- listening --------------------------------------------------------------------------------


async def test_ipv6_and_several_addresses() -> None:
    require_ipv6()
    async with serving(host=["127.0.0.1", "::1"], default="x") as server:
        families = sorted(s.family for s in server.sockets)
        assert families == sorted([socket.AF_INET, socket.AF_INET6])
        for host, port in server.addresses:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"1,2\r\n")
            assert await reader.readline() == b"1,2:USERID:UNIX:x\r\n"
            writer.close()


async def test_host_none_listens_on_every_interface() -> None:
    async with serving(host=None) as server:
        hosts = {host for host, _ in server.addresses}
        assert "0.0.0.0" in hosts
        if ipv6_loopback():
            assert "::" in hosts
        # One ephemeral port for every family, so that a caller can print one address.
        assert len({port for _, port in server.addresses}) == 1


async def test_bind_failure_raises_oserror_and_leaves_nothing_listening() -> None:
    async with serving() as first:
        port = first.addresses[0][1]
        second = IdentServer("127.0.0.1", port)
        with pytest.raises(OSError):
            await second.start()
        assert second.sockets == ()
        assert await ask(first) == b"12345,123:ERROR:HIDDEN-USER\r\n"


async def test_bad_host_raises_oserror() -> None:
    server = IdentServer("203.0.113.250", 0)  # TEST-NET-3: not an address of this machine
    with pytest.raises(OSError):
        await server.start()


@both_loops
async def test_close_answers_waiting_queries_and_releases_everything() -> None:
    started = asyncio.Event()

    async def handler(request: IdentRequest) -> None:
        started.set()
        await asyncio.sleep(30)

    server = IdentServer("127.0.0.1", 0, handlers=[handler], default="bye", multiple=True)
    await server.start()
    host, port = server.addresses[0]
    client = await Client.connect(server)
    await client.send(b"1,2\r\n")
    await started.wait()
    idle = await Client.connect(server)
    before = asyncio.all_tasks()
    await server.close()
    assert await client.rest() == b"1,2:USERID:UNIX:bye\r\n"
    assert await idle.rest() == b""
    await client.close()
    await idle.close()
    assert server.sockets == ()
    assert server.connections == 0
    assert server._tasks == set()
    assert asyncio.all_tasks() <= before
    with pytest.raises(OSError):
        await asyncio.open_connection(host, port)
    await server.close()  # twice is fine


async def test_serve_forever_returns_after_close() -> None:
    server = IdentServer("127.0.0.1", 0)
    task = asyncio.create_task(server.serve_forever())
    while not server.sockets:
        await asyncio.sleep(0.01)
    await server.close()
    await asyncio.wait_for(task, 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": 70000}, "port"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"idle_timeout": -1}, "idle_timeout"),
        ({"response_timeout": "10"}, "response_timeout"),
        ({"default": "a\r\nb"}, "CR, LF"),
        ({"default": ""}, "1-512"),
        ({"reply_style": "fancy"}, "reply_style"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_pending": 0}, "max_pending"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IdentServer("127.0.0.1", **options)


def test_register_needs_a_callable() -> None:
    server = IdentServer()
    with pytest.raises(TypeError):
        server.register("not callable")  # type: ignore[arg-type]
    handler: Callable[[IdentRequest], None] = lambda r: None  # noqa: E731
    server.register(handler)
    server.register(handler)
    assert server.handlers == (handler,)
    assert server.port == 113 and server.response_timeout == 1.0 and server.idle_timeout == 60.0


def test_no_permission_for_a_privileged_port_is_a_clear_oserror() -> None:
    """As nobody, port 113 cannot be bound: start() says so and leaves nothing behind."""
    require_root("to become nobody in a child, in a network namespace of its own")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        result = "no error"
        try:
            # getaddrinfo() loads the idna codec lazily; nobody may not be able to read the
            # interpreter's files, so load it first.
            "localhost".encode("idna")
            # The host may let anyone bind low ports (ip_unprivileged_port_start); a new
            # network namespace has the kernel's default, 1024.
            enter_own_network_namespace()
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            server = IdentServer("127.0.0.1", 113)
            try:
                asyncio.run(server.start())
            except OSError as exc:
                result = f"{type(exc).__name__}: {exc.strerror} / sockets={len(server.sockets)}"
        except BaseException as exc:
            result = repr(exc)
        finally:
            os.write(write_end, result.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    assert result == (
        "PermissionError: cannot bind 127.0.0.1 port 113: Permission denied / sockets=0"
    )


# -- hostile clients and shutdown (see also test_hostile.py) ---------------------------------


@both_loops
async def test_a_client_that_never_reads_is_no_longer_read_and_loses_nothing() -> None:
    long_id = "y" * 400
    async with serving(multiple=True, default=long_id, idle_timeout=30) as server:
        client = await Client.connect(server)
        count = 20000  # 100 kB of queries asking for 8.4 MB of answers
        client.writer.write(b"1,2\r\n" * count)
        assert server._driver is not None
        channels = server._driver.channels
        await wait_until_async(lambda: len(channels) == 1)
        (channel,) = channels
        # The server stops reading once its write buffer is full, instead of queueing
        # answers nobody reads: wait until it has stopped, then check it stays bounded.
        await wait_until_async(lambda: channel.buffered > 0 and not channel.reading)
        for _ in range(20):
            await asyncio.sleep(0.01)
            assert channel.buffered < 256 * 1024
        # Reading resumes as the client reads: every answer arrives, in order.
        answer = b"1,2:USERID:UNIX:" + long_id.encode() + b"\r\n"
        for _ in range(count):
            assert await client.line() == answer
        await client.close()


@both_loops
async def test_a_silent_connection_gets_the_first_query_deadline() -> None:
    async with serving(first_query_timeout=0.2, idle_timeout=30, multiple=True) as server:
        silent = await Client.connect(server)
        trickle = await Client.connect(server)
        start = time.monotonic()
        await trickle.send(b"1")  # octets that are not a query do not extend it
        assert await silent.rest() == b""
        assert await trickle.rest() == b""
        assert time.monotonic() - start < 2.0
        # After a query, the idle timeout applies.
        client = await Client.connect(server)
        await client.send(b"1,2\r\n")
        assert await client.line() == b"1,2:ERROR:HIDDEN-USER\r\n"
        with pytest.raises(asyncio.TimeoutError):
            await client.line(timeout=0.5)
        for c in (silent, trickle, client):
            await c.close()


@both_loops
async def test_close_reads_and_answers_queries_sent_but_not_yet_read() -> None:
    server = IdentServer("127.0.0.1", 0, multiple=True, default="x")
    await server.start()
    clients = [await Client.connect(server) for _ in range(5)]
    while server.connections < 5:
        await asyncio.sleep(0.005)
    for n, client in enumerate(clients, 1):
        client.writer.write(b"%d,1\r\n%d,2\r\n" % (n, n))  # in the kernel, not yet read
    await server.close()
    for n, client in enumerate(clients, 1):
        assert await client.rest() == b"%d,1:USERID:UNIX:x\r\n%d,2:USERID:UNIX:x\r\n" % (n, n)
        await client.close()
    assert server.connections == 0


@both_loops
async def test_close_answers_what_handlers_do_not_answer_at_once_with_the_fallback() -> None:
    async def slow(request: IdentRequest) -> None:
        await asyncio.sleep(30)

    def sync(request: IdentRequest) -> None:
        if request.server_port == 1:
            request.reply("UNIX", "now")

    server = IdentServer("127.0.0.1", 0, handlers=[sync, slow], multiple=True, default="fb")
    await server.start()
    client = await Client.connect(server)
    while server.connections < 1:
        await asyncio.sleep(0.005)
    client.writer.write(b"1,1\r\n2,2\r\n")
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 1.0  # no waiting for the slow handler
    assert await client.rest() == b"1,1:USERID:UNIX:now\r\n2,2:USERID:UNIX:fb\r\n"
    await client.close()
    assert server._tasks == set()


async def test_close_of_a_server_never_started_does_nothing() -> None:
    server = IdentServer("127.0.0.1", 0)
    await server.close()
    assert server.sockets == ()


async def test_repr_shows_ipv6_addresses_in_brackets() -> None:
    require_ipv6()
    async with serving(host="::1") as server:
        assert f"[::1]:{server.addresses[0][1]}" in repr(server)


@both_loops
async def test_a_client_that_never_reads_cannot_hold_its_connection_after_the_timeout() -> None:
    async with serving(multiple=True, default="z" * 400, idle_timeout=0.3) as server:
        client = await Client.connect(server)
        client.writer.write(b"1,2\r\n" * 20000)  # answers fill every buffer; none is read
        while server.connections < 1:
            await asyncio.sleep(0.005)
        # Idle (no query read: reading is paused), closed, given LINGER to read the
        # answers it was sent, then aborted: the descriptor and the buffer are released.
        started = time.monotonic()
        while server.connections:
            assert time.monotonic() - started < 6
            await asyncio.sleep(0.02)
        client.writer.transport.abort()


@pytest.mark.parametrize("own_socket", [False, True])
async def test_served_connections_have_nagle_off(own_socket: bool) -> None:
    # Answers to pipelined queries leave in several writes; with Nagle on, each waits for
    # the peer's delayed ACK (40 ms a round, measured by make bench's case 6).
    sock = None
    if own_socket:  # made the way many callers do, without IPPROTO_TCP
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
    server = IdentServer("127.0.0.1", 0, multiple=True, default="x", sock=sock)
    async with server:
        client = await Client.connect(server)
        await client.send(b"1,2\r\n")
        assert await client.line() == b"1,2:USERID:UNIX:x\r\n"
        assert server._driver is not None
        (channel,) = server._driver.channels
        served = channel.sock
        assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        await client.close()
