"""The asyncio client against scripted servers on loopback: every answer shape real
identds produce, every way an exchange fails, and no socket left behind."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aioidentd
from aioidentd import (
    ErrorReply,
    IdentConnectError,
    IdentConnectionClosed,
    IdentError,
    IdentPortMismatch,
    IdentProtocolError,
    IdentTimeout,
    Query,
    UserIdReply,
)
from aioidentd.client import _IdentClientProtocol
from scripted import (
    Respond,
    ScriptedIdentd,
    chunks,
    close_at_once,
    open_fds,
    reset,
    send,
    settle_fds,
    silent,
)
from support import needs_ipv6

# The RFC's example pair; small enough that zero-padded echoes stay within 5 digits.
SERVER_PORT, CLIENT_PORT = 6191, 23


async def ask(respond: Respond, host: str = "127.0.0.1", **kwargs: Any) -> Any:
    async with ScriptedIdentd(respond, host) as identd:
        kwargs.setdefault("timeout", 5.0)
        answer = await aioidentd.query(host, SERVER_PORT, CLIENT_PORT, port=identd.port, **kwargs)
        assert identd.lines == [b"6191, 23\r\n"]
        return answer


# -- answers -------------------------------------------------------------------------------

USERID_CASES = {
    "compact": (send(b"%d,%d:USERID:UNIX:alice\r\n"), "UNIX", None, b"alice"),
    "spaced": (send(b"%d , %d : USERID : UNIX : alice\r\n"), "UNIX", None, b"alice"),
    "tabs and padding": (
        send(b"  %d\t,\t%d \t:\tuserid\t: UNIX \t:alice\r\n"),
        "UNIX",
        None,
        b"alice",
    ),
    "charset": (send(b"%d , %d : USERID : UNIX , UTF-8 : alice\r\n"), "UNIX", "UTF-8", b"alice"),
    "LF only": (send(b"%d,%d:USERID:UNIX:alice\n"), "UNIX", None, b"alice"),
    "zero-padded ports": (send(b"06191,023:USERID:UNIX:alice\r\n"), "UNIX", None, b"alice"),
    "split in segments": (
        chunks(b"%d", b" , %d : US", b"ERID : UN", b"IX , UT", b"F-8 : ali", b"ce\r", b"\n"),
        "UNIX",
        "UTF-8",
        b"alice",
    ),
    "one octet per segment": (
        chunks(*(bytes([b]) for b in b"6191,23:USERID:UNIX:alice\r\n"), delay=0.002),
        "UNIX",
        None,
        b"alice",
    ),
    "colons in the id": (send(b"%d,%d:USERID:OTHER:al:ice::\r\n"), "OTHER", None, b"al:ice::"),
    "leading spaces in the id": (
        # One separator space is dropped (common practice); the rest belong to the id.
        send(b"%d , %d : USERID : OTHER :   alice  \r\n"),
        "OTHER",
        None,
        b"  alice  ",
    ),
    "blank lines first": (
        chunks(b"\r\n", b"\n \t\r\n", b"%d,%d:USERID:UNIX:alice\r\n"),
        "UNIX",
        None,
        b"alice",
    ),
    "two lines in one segment": (
        send(b"%d,%d:USERID:UNIX:alice\r\n1,2:USERID:UNIX:mallory\r\n"),
        "UNIX",
        None,
        b"alice",
    ),
    "UTF-8 id": (
        send(b"%d,%d:USERID:UNIX,UTF-8:jos\xc3\xa9\r\n"),
        "UNIX",
        "UTF-8",
        "josé".encode(),
    ),
    "512-octet id": (
        send(b"%d,%d:USERID:OTHER:" + b"a" * 512 + b"\r\n"),
        "OTHER",
        None,
        b"a" * 512,
    ),
    "answer then server closes": (
        send(b"%d,%d:USERID:UNIX:alice\r\n", then_close=True),
        "UNIX",
        None,
        b"alice",
    ),
}


@pytest.mark.parametrize("case", USERID_CASES, ids=list(USERID_CASES))
async def test_userid_answers(case: str) -> None:
    respond, opsys, charset, raw = USERID_CASES[case]
    answer = await ask(respond)
    assert answer == UserIdReply(SERVER_PORT, CLIENT_PORT, opsys, raw, charset)
    assert answer.user_id == raw.decode(charset or "ascii")


async def test_undecodable_id_is_kept_as_bytes_and_shown_in_hex() -> None:
    answer = await ask(send(b"%d,%d:USERID:UNIX,UTF-8:al\xffice\r\n"))
    assert isinstance(answer, UserIdReply)
    assert answer.raw == b"al\xffice"
    assert answer.user_id == b"al\xffice"
    assert str(answer) == "USERID UNIX,UTF-8 0x" + b"al\xffice".hex()


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"%d,%d:ERROR:NO-USER\r\n", "NO-USER"),
        (b"%d , %d : ERROR : INVALID-PORT\r\n", "INVALID-PORT"),
        (b"%d,%d:ERROR:HIDDEN-USER\n", "HIDDEN-USER"),
        (b"%d,%d:ERROR:UNKNOWN-ERROR\r\n", "UNKNOWN-ERROR"),
        (b"%d,%d:error:no-user\r\n", "NO-USER"),
        (b"%d,%d:ERROR:X-NO-IDENT-HERE\r\n", "X-NO-IDENT-HERE"),
    ],
)
async def test_error_answers_are_returned_not_raised(sent: bytes, error: str) -> None:
    answer = await ask(send(sent))
    assert answer == ErrorReply(SERVER_PORT, CLIENT_PORT, error)
    assert str(answer) == f"ERROR {error}"


@needs_ipv6
async def test_ipv6_server() -> None:
    answer = await ask(send(b"%d,%d:USERID:UNIX:alice\r\n"), host="::1")
    assert isinstance(answer, UserIdReply)
    assert answer.user_id == "alice"


# -- failed exchanges ----------------------------------------------------------------------


async def test_wrong_port_pair_raises_port_mismatch() -> None:
    with pytest.raises(IdentPortMismatch) as info:
        await ask(send(b"%d,1:USERID:UNIX:mallory\r\n"))
    assert isinstance(info.value, IdentProtocolError)
    assert info.value.query == Query(SERVER_PORT, CLIENT_PORT)
    assert info.value.reply == UserIdReply(SERVER_PORT, 1, "UNIX", b"mallory")
    assert "6191, 1 instead of 6191, 23" in str(info.value)


async def test_swapped_port_pair_raises_port_mismatch() -> None:
    with pytest.raises(IdentPortMismatch):
        await ask(send(lambda q: b"%d,%d:ERROR:NO-USER\r\n" % (q.client_port, q.server_port)))


@pytest.mark.parametrize(
    "sent",
    [
        b"HTTP/1.1 400 Bad Request\r\n",
        b"%d,%d:USERID:UNIX\r\n",
        b"%d,%d:USERID:UNIX:\r\n",
        b"%d,%d:SOMETHING:UNIX:alice\r\n",
        b"%d,%d:ERROR:NO USER\r\n",
        b"%d,%d:USERID:UNIX:" + b"a" * 513 + b"\r\n",
    ],
    ids=["http", "no id field", "empty id", "unknown type", "bad error token", "513-octet id"],
)
async def test_garbage_raises_protocol_error(sent: bytes) -> None:
    with pytest.raises(IdentProtocolError) as info:
        await ask(send(sent))
    assert not isinstance(info.value, IdentPortMismatch)
    assert "malformed answer" in str(info.value)


async def test_1001_octets_without_end_of_line() -> None:
    # The server keeps the connection open: only the length rule can end the exchange.
    start = time.monotonic()
    with pytest.raises(IdentProtocolError, match="more than 1000 octets without an end of line"):
        await ask(chunks(b"x" * 600, b"y" * 401), timeout=5.0)
    assert time.monotonic() - start < 2


async def test_1000_octets_without_end_of_line_is_still_waited_for() -> None:
    with pytest.raises(IdentTimeout):
        await ask(chunks(b"x" * 1000), timeout=0.3)


async def test_long_line_with_end_of_line_in_one_segment() -> None:
    with pytest.raises(IdentProtocolError, match="longer than 1000 octets"):
        await ask(send(b"%d,%d:USERID:OTHER:" + b"a" * 1000 + b"\r\n"))


async def test_close_without_answer() -> None:
    with pytest.raises(IdentConnectionClosed, match=r"closed the connection without"):
        await ask(close_at_once)


async def test_close_after_partial_answer() -> None:
    with pytest.raises(IdentConnectionClosed, match=r"closed the connection after 19 octets"):
        await ask(send(b"%d,%d:USERID:UNIX", then_close=True))


async def test_reset_without_answer() -> None:
    with pytest.raises(IdentConnectionClosed, match=r"reset|closed"):
        await ask(reset())


async def test_reset_after_partial_answer() -> None:
    with pytest.raises(IdentConnectionClosed, match="reset the connection after 8 octets"):
        await ask(reset(b"6191,23:"))


def free_port_held() -> socket.socket:
    """A bound, non-listening socket: connections to its port are refused, and holding it
    keeps anyone else from listening there during the test."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_connection_refused() -> None:
    with free_port_held() as closed:
        port = closed.getsockname()[1]
        with pytest.raises(IdentConnectError) as info:
            await aioidentd.query("127.0.0.1", 1, 2, port=port)
    assert str(info.value) == f"ident server 127.0.0.1:{port} refused the connection"
    assert info.value.address == info.value.server == ("127.0.0.1", port)


async def test_unbindable_source_address() -> None:
    async with ScriptedIdentd(silent) as identd:
        with pytest.raises(IdentConnectError, match=re.escape("from 192.0.2.1:0")):
            await aioidentd.query("127.0.0.1", 1, 2, port=identd.port, local_addr=("192.0.2.1", 0))


async def test_silent_server_times_out_within_the_deadline() -> None:
    start = time.monotonic()
    with pytest.raises(IdentTimeout) as info:
        await ask(silent, timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 0.3 + 0.5
    assert isinstance(info.value, TimeoutError)
    assert "no answer from ident server 127.0.0.1:" in str(info.value)
    assert str(info.value).endswith("within 0.3 s")


async def test_one_deadline_covers_a_trickling_server() -> None:
    # Each segment arrives well inside the timeout; the sum does not.
    start = time.monotonic()
    with pytest.raises(IdentTimeout):
        await ask(
            chunks(*(b"6191,23:USERID"[i : i + 1] for i in range(14)), delay=0.05), timeout=0.3
        )
    assert time.monotonic() - start < 0.3 + 0.5


def test_all_errors_share_the_base_class() -> None:
    for cls in (
        IdentConnectError,
        IdentTimeout,
        IdentConnectionClosed,
        IdentProtocolError,
        IdentPortMismatch,
    ):
        assert issubclass(cls, IdentError)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc"),
    [
        ((0, 23), {}, ValueError),
        ((6191, 70000), {}, ValueError),
        ((6191, 23), {"port": 0}, ValueError),
        ((6191, 23), {"port": 65536}, ValueError),
        ((6191, 23), {"timeout": -1}, ValueError),
        ((6191, 23), {"timeout": 0}, ValueError),
        ((6191, 23), {"timeout": float("nan")}, ValueError),
        (("6191", 23), {}, TypeError),
    ],
)
async def test_bad_arguments(
    args: tuple[Any, Any], kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        await aioidentd.query("127.0.0.1", *args, **kwargs)


# -- resources -----------------------------------------------------------------------------


async def test_200_concurrent_queries_leave_no_fd_behind() -> None:
    baseline = open_fds()
    async with ScriptedIdentd(chunks(b"%d,%d:USERID:", b"UNIX:alice\r\n")) as identd:
        answers = await asyncio.gather(
            *(
                aioidentd.query("127.0.0.1", 1000 + i, 2000 + i, port=identd.port)
                for i in range(200)
            )
        )
    assert [(a.server_port, a.client_port) for a in answers] == [
        (1000 + i, 2000 + i) for i in range(200)
    ]
    assert all(isinstance(a, UserIdReply) and a.user_id == "alice" for a in answers)
    assert await settle_fds(baseline) == baseline


async def test_failures_leave_no_fd_behind() -> None:
    baseline = open_fds()
    for respond in (silent, close_at_once, reset(), send(b"garbage\r\n"), send(b"1,2:x\n")):
        async with ScriptedIdentd(respond) as identd:
            results = await asyncio.gather(
                *(
                    aioidentd.query("127.0.0.1", 1, 2, port=identd.port, timeout=0.3)
                    for _ in range(20)
                ),
                return_exceptions=True,
            )
        assert all(isinstance(r, IdentError) for r in results), results
    assert await settle_fds(baseline) == baseline


@pytest.mark.parametrize("spins", [0, 1, 2, 3, 5, 10])
async def test_cancellation_leaves_no_fd_behind(spins: int) -> None:
    """Cancel at various points: while connecting, while waiting for the answer."""

    baseline = open_fds()
    async with ScriptedIdentd(silent) as identd:
        tasks = [
            asyncio.create_task(aioidentd.query("127.0.0.1", 1, 2, port=identd.port))
            for _ in range(50)
        ]
        for _ in range(spins):
            await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert await settle_fds(baseline) == baseline


async def test_cancellation_while_waiting_for_the_answer() -> None:
    baseline = open_fds()
    async with ScriptedIdentd(silent) as identd:
        task = asyncio.create_task(aioidentd.query("127.0.0.1", 1, 2, port=identd.port))
        while not identd.lines:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await settle_fds(baseline) == baseline


async def test_client_closes_after_the_answer() -> None:
    """The server keeps the connection open; the client must not wait for it to close."""

    closed_by_client = asyncio.Event()

    async def respond(query: Any, reader: asyncio.StreamReader, writer: Any) -> None:
        writer.write(b"%d,%d:USERID:UNIX:alice\r\n" % (query.server_port, query.client_port))
        await writer.drain()
        if await reader.read() == b"":
            closed_by_client.set()

    async with ScriptedIdentd(respond) as identd:
        await aioidentd.query("127.0.0.1", 1, 2, port=identd.port)
        await asyncio.wait_for(closed_by_client.wait(), 2)


# -- query_connection ----------------------------------------------------------------------


class IrcListener:
    """A listener standing in for an IRC server: hands each accepted connection, in the
    form a test asks for, to :attr:`accepted`."""

    def __init__(self, host: str, kind: str) -> None:
        self.host = host
        self.kind = kind
        self.accepted: asyncio.Queue[Any] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> IrcListener:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((self.host, 0))
        sock.listen()
        self.port = sock.getsockname()[1]
        if self.kind == "socket":
            sock.setblocking(False)
            self._sock = sock
            self._task = asyncio.create_task(self._accept_plain())
        else:
            self._server = await asyncio.start_server(self._handle, sock=sock)
        return self

    async def _accept_plain(self) -> None:
        assert self._sock is not None
        while True:
            conn, _ = await asyncio.get_running_loop().sock_accept(self._sock)
            await self.accepted.put(conn)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await self.accepted.put(writer if self.kind == "writer" else writer.transport)
        await reader.read()

    async def __aexit__(self, *exc_info: object) -> None:
        for writer in self._writers:
            writer.close()
        if self._task is not None:
            self._task.cancel()
        if self._sock is not None:
            self._sock.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.mark.parametrize("kind", ["writer", "transport", "socket"])
async def test_query_connection_binds_source_and_orders_ports(kind: str) -> None:
    """The user connects from 127.0.0.1 to the IRC server on 127.0.0.2; the ident query
    must go to 127.0.0.1 from 127.0.0.2 (not the default source, 127.0.0.1) and name
    (user's port, IRC server's port)."""

    baseline = open_fds()
    async with (
        ScriptedIdentd(send(b"%d,%d:USERID:UNIX:alice\r\n"), "127.0.0.1") as identd,
        IrcListener("127.0.0.2", kind) as irc,
    ):
        user = socket.create_connection(("127.0.0.2", irc.port), source_address=("127.0.0.1", 0))
        with user:
            conn = await irc.accepted.get()
            answer = await aioidentd.query_connection(conn, port=identd.port)
            user_port = user.getsockname()[1]
            if isinstance(conn, socket.socket):
                conn.close()
    assert identd.peers[0][0] == "127.0.0.2"
    assert identd.lines == [b"%d, %d\r\n" % (user_port, irc.port)]
    assert isinstance(answer, UserIdReply)
    assert answer.user_id == "alice"
    assert await settle_fds(baseline) == baseline


async def test_query_connection_port_order() -> None:
    async with (
        ScriptedIdentd(send(b"%d,%d:ERROR:NO-USER\r\n")) as identd,
        IrcListener("127.0.0.2", "writer") as irc,
    ):
        user = socket.create_connection(("127.0.0.2", irc.port), source_address=("127.0.0.1", 0))
        with user:
            conn = await irc.accepted.get()
            answer = await aioidentd.query_connection(conn, port=identd.port)
            user_port = user.getsockname()[1]
    assert identd.lines == [b"%d, %d\r\n" % (user_port, irc.port)]
    assert answer == ErrorReply(user_port, irc.port, "NO-USER")


@needs_ipv6
async def test_query_connection_unmaps_v4_mapped_peers() -> None:
    """A dual-stack listener sees ::ffff:127.0.0.1; the query goes over IPv4 to 127.0.0.1
    from 127.0.0.2."""

    async with (
        ScriptedIdentd(send(b"%d,%d:USERID:UNIX:alice\r\n"), "127.0.0.1") as identd,
        IrcListener("::", "writer") as irc,
    ):
        user = socket.create_connection(("127.0.0.2", irc.port), source_address=("127.0.0.1", 0))
        with user:
            conn = await irc.accepted.get()
            assert conn.get_extra_info("peername")[0] == "::ffff:127.0.0.1"
            answer = await aioidentd.query_connection(conn, port=identd.port)
            user_port = user.getsockname()[1]
    assert identd.peers[0][0] == "127.0.0.2"
    assert identd.lines == [b"%d, %d\r\n" % (user_port, irc.port)]
    assert isinstance(answer, UserIdReply)


@needs_ipv6
async def test_query_connection_over_ipv6() -> None:
    async with (
        ScriptedIdentd(send(b"%d,%d:USERID:UNIX:alice\r\n"), "::1") as identd,
        IrcListener("::1", "transport") as irc,
    ):
        user = socket.create_connection(("::1", irc.port))
        with user:
            conn = await irc.accepted.get()
            answer = await aioidentd.query_connection(conn, port=identd.port)
            user_port = user.getsockname()[1]
    assert identd.peers[0][0] == "::1"
    assert identd.lines == [b"%d, %d\r\n" % (user_port, irc.port)]
    assert isinstance(answer, UserIdReply)


async def test_query_connection_rejects_non_tcp() -> None:
    left, right = socket.socketpair()
    with left, right, pytest.raises(ValueError, match="not a TCP/IP connection"):
        await aioidentd.query_connection(left)
    with pytest.raises(TypeError):
        await aioidentd.query_connection("127.0.0.1")  # type: ignore[arg-type]


# -- framing, property-tested without sockets ----------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed: str | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed is not None

    def close(self) -> None:
        self.closed = self.closed or "close"

    def abort(self) -> None:
        self.closed = self.closed or "abort"


def feed(segments: list[bytes]) -> tuple[Any, FakeTransport]:
    """Feed ``segments`` to the client protocol; the outcome (reply or exception) and
    the transport, to see whether it was closed."""

    async def main() -> tuple[Any, FakeTransport]:
        protocol = _IdentClientProtocol(Query(SERVER_PORT, CLIENT_PORT), ("127.0.0.1", 113))
        transport = FakeTransport()
        protocol.connection_made(transport)
        assert transport.written == b"6191, 23\r\n"
        for segment in segments:
            protocol.data_received(segment)
        protocol.connection_lost(None)
        try:
            return protocol.answer.result(), transport
        except IdentError as exc:
            return exc, transport

    return asyncio.run(main())


ANSWERS = [
    b"6191,23:USERID:UNIX:alice\r\n",
    b"\r\n 6191 , 23 : USERID : UNIX , UTF-8 : al:ice \n",
    b"6191,23:ERROR:NO-USER\r\n",
    b"6191,24:ERROR:NO-USER\r\n",
    b"garbage\r\n",
    b"6191,23:USERID:UNIX:al",
    b"x" * 1001,
]


@settings(max_examples=200, deadline=None)
@given(answer=st.sampled_from(ANSWERS), data=st.data())
def test_any_segmentation_gives_the_same_outcome(answer: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(answer) - 1)), max_size=12)))
    segments = [answer[i:j] for i, j in zip([0, *cuts], [*cuts, len(answer)], strict=True)]
    whole, _ = feed([answer])
    split, transport = feed(segments)
    if isinstance(whole, Exception):
        assert type(split) is type(whole)
        assert str(split) == str(whole)
    else:
        assert split == whole
    assert transport.closed is not None
