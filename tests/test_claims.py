"""Claimed connections: the server answers for the application's own connections.

Every test uses real loopback sockets. A small "IRC server" (:class:`Asker`) plays the
part of the peer that asks: the moment it accepts a connection it queries our ident server
about it, from the address the connection came to, as ngircd and InspIRCd do
(``aioidentd.query_connection``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import aioidentd
from aioidentd import IdentRequest, IdentServer, UserIdReply
from aioidentd.claims import normalise_host
from aioidentd.protocol import Reply
from peers import unavailable
from support import closed_port, require_ipv6, wait_until_async
from support import query_server as ask


class Asker:
    """A listener that asks our ident server about every connection it accepts, at once."""

    def __init__(self, ident_port: int, asking: bool = True) -> None:
        self.ident_port = ident_port
        self.asking = asking
        self.answers: dict[int, asyncio.Future[Reply]] = {}  # peer port -> answer
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, host: str = "127.0.0.1", **kwargs: Any) -> int:
        self.server = await asyncio.start_server(self._accepted, host, 0, **kwargs)
        return int(self.server.sockets[0].getsockname()[1])

    def _future(self, port: int) -> asyncio.Future[Reply]:
        if port not in self.answers:
            self.answers[port] = asyncio.get_running_loop().create_future()
        return self.answers[port]

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        if not self.asking:
            return
        future = self._future(writer.get_extra_info("peername")[1])
        try:
            future.set_result(
                await aioidentd.query_connection(writer, port=self.ident_port, timeout=5)
            )
        except Exception as exc:
            future.set_exception(exc)

    async def answer_for(self, writer: asyncio.StreamWriter | socket.socket) -> Reply:
        if isinstance(writer, socket.socket):
            port = writer.getsockname()[1]
        else:
            port = writer.get_extra_info("sockname")[1]
        return await asyncio.wait_for(self._future(port), 10)

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        for future in self.answers.values():
            if future.done() and not future.cancelled():
                future.exception()  # seen: a query cut short by the end of the test
            else:
                future.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def setup(
    ident_hosts: str | list[str] = "127.0.0.1",
    asker_host: str = "127.0.0.1",
    asking: bool = True,
    **options: Any,
) -> AsyncIterator[tuple[IdentServer, Asker, int]]:
    options.setdefault("multiple", True)
    async with IdentServer(ident_hosts, 0, **options) as ident:
        asker = Asker(ident.addresses[0][1], asking)
        port = await asker.start(asker_host)
        try:
            yield ident, asker, port
        finally:
            await asker.close()


def user(reply: Reply) -> str:
    assert isinstance(reply, UserIdReply), reply
    assert isinstance(reply.user_id, str)
    return reply.user_id


# -- normalisation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::FFFF:C000:0201", "192.0.2.1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("fe80::1%1", "fe80::1%1"),
        ("fe80::1%lo", "fe80::1%1"),
        ("fe80::1", "fe80::1"),
    ],
)
def test_addresses_are_normalised(given: str, expected: str) -> None:
    assert normalise_host(given) == expected


def test_link_local_scope_from_a_socket_address() -> None:
    assert normalise_host("fe80::1", 3) == "fe80::1%3"
    assert normalise_host("2001:db8::1", 3) == "2001:db8::1"  # global: no scope


@pytest.mark.parametrize("bad", ["irc.example.net", "", "1.2.3.4.5", "fe80::1%nosuchif0"])
def test_claims_match_addresses_not_names(bad: str) -> None:
    with pytest.raises(ValueError):
        normalise_host(bad)


# -- answering -------------------------------------------------------------------------


async def test_claimed_writer_gets_its_id_and_the_handlers_are_not_asked() -> None:
    asked: list[IdentRequest] = []
    async with setup(handlers=[asked.append], response_timeout=0.5) as (ident, asker, port):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        ident.claim(writer, "alice")
        # A second connection to the same server from another local port, unclaimed,
        # must not get alice's answer.
        _, other = await asyncio.open_connection("127.0.0.1", port)
        assert user(await asker.answer_for(writer)) == "alice"
        answer = await asker.answer_for(other)
        assert getattr(answer, "error", None) == "HIDDEN-USER"
        lport = writer.get_extra_info("sockname")[1]
        assert [r.server_port for r in asked] != [] and lport not in [r.server_port for r in asked]
        writer.close()
        other.close()


@pytest.mark.usefixtures("loop_kind")  # also on uvloop: its transports differ
async def test_two_connections_to_one_server_under_two_identities() -> None:
    async with setup() as (ident, asker, port):
        writers = []
        for name in ("alice", "bob"):
            writers.append((await ident.open_connection("127.0.0.1", port, user_id=name))[1])
        assert [user(await asker.answer_for(w)) for w in writers] == ["alice", "bob"]
        for writer in writers:
            writer.close()


@pytest.mark.usefixtures("loop_kind")  # also on uvloop: its transports differ
async def test_claim_by_transport_socket_and_explicit_ends() -> None:
    async with setup() as (ident, asker, port):
        _, w1 = await asyncio.open_connection("127.0.0.1", port)
        ident.claim(w1.transport, "viatransport")
        sock = socket.create_connection(("127.0.0.1", port))
        ident.claim(sock, "viasocket")
        _, w3 = await asyncio.open_connection("127.0.0.1", port)
        (lhost, lport), (rhost, rport) = (
            w3.get_extra_info("sockname"),
            w3.get_extra_info("peername"),
        )
        ident.claim(((lhost, lport), (rhost, rport)), "explicit")
        assert user(await asker.answer_for(w1)) == "viatransport"
        assert user(await asker.answer_for(sock)) == "viasocket"
        assert user(await asker.answer_for(w3)) == "explicit"
        w1.close()
        w3.close()
        sock.close()


async def test_error_opsys_and_charset_claims() -> None:
    async with setup() as (ident, asker, port):
        _, hidden = await asyncio.open_connection("127.0.0.1", port)
        ident.claim(hidden, error="hidden-user")
        _, other = await asyncio.open_connection("127.0.0.1", port)
        ident.claim(other, "jürgen", opsys="OTHER", charset="UTF-8")
        answer = await asker.answer_for(hidden)
        assert getattr(answer, "error", None) == "HIDDEN-USER"
        answer = await asker.answer_for(other)
        assert isinstance(answer, UserIdReply)
        assert (answer.opsys, answer.charset, answer.user_id) == ("OTHER", "UTF-8", "jürgen")
        hidden.close()
        other.close()


async def test_only_the_remote_end_gets_the_answer() -> None:
    """RFC 1413: a query from any other host about the same ports is not answered from
    the claim, and neither is a query arriving at another local address."""
    async with setup(["127.0.0.1", "127.0.0.5"], default="nobody") as (ident, _asker, _port):
        ident.claim((("127.0.0.1", 40001), ("127.0.0.3", 6667)), "alice")
        ident_port = ident.addresses[0][1]

        async def query(dest: str, source: str) -> str:
            reply = await aioidentd.query(
                dest, 40001, 6667, port=ident_port, local_addr=(source, 0)
            )
            return user(reply)

        assert await query("127.0.0.1", "127.0.0.3") == "alice"
        assert await query("127.0.0.1", "127.0.0.4") == "nobody"  # another querier
        assert await query("127.0.0.5", "127.0.0.3") == "nobody"  # another local address
        assert user(await ask(ident, 40001, 6668, "127.0.0.3")) == "nobody"  # other port
        assert user(await ask(ident, 40002, 6667, "127.0.0.3")) == "nobody"


async def test_same_local_port_to_two_servers_never_mixes_answers() -> None:
    async with setup() as (ident, _asker, _port):
        ident.claim((("127.0.0.1", 40001), ("127.0.0.3", 6667)), "alice")
        ident.claim((("127.0.0.1", 40001), ("127.0.0.4", 6667)), "bob")
        ident.claim((("127.0.0.1", 40002), ("127.0.0.3", 6667)), "carol")
        assert user(await ask(ident, 40001, 6667, "127.0.0.3")) == "alice"
        assert user(await ask(ident, 40001, 6667, "127.0.0.4")) == "bob"
        assert user(await ask(ident, 40002, 6667, "127.0.0.3")) == "carol"


async def test_v4_mapped_claims_match_ipv4_queries() -> None:
    async with setup(default="nobody") as (ident, _asker, _port):
        ident.claim((("::ffff:127.0.0.1", 40001), ("::ffff:127.0.0.3", 6667)), "alice")
        assert user(await ask(ident, 40001, 6667, "127.0.0.3")) == "alice"


async def test_v4_mapped_queries_on_a_dual_stack_listener() -> None:
    require_ipv6()
    listener = socket.socket(socket.AF_INET6)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    listener.listen()
    port = listener.getsockname()[1]
    async with IdentServer(sock=listener, default="nobody") as ident:
        ident.claim((("127.0.0.1", 40001), ("127.0.0.3", 6667)), "alice")
        reply = await aioidentd.query(
            "127.0.0.1", 40001, 6667, port=port, local_addr=("127.0.0.3", 0)
        )
        assert user(reply) == "alice"


async def test_ipv6_connection() -> None:
    require_ipv6()
    async with setup("::1", "::1") as (ident, asker, port):
        _, writer = await ident.open_connection("::1", port, user_id="alice6")
        assert user(await asker.answer_for(writer)) == "alice6"
        _, later = await asyncio.open_connection("::1", port)
        ident.claim(later, "bob6")
        writer.close()
        later.close()


async def test_release_and_context_manager() -> None:
    async with setup(default="nobody") as (ident, _asker, _port):
        claim = ident.claim((("127.0.0.1", 40001), ("127.0.0.3", 6667)), "alice")
        assert claim.active
        assert user(await ask(ident, 40001, 6667, "127.0.0.3")) == "alice"
        claim.release()
        claim.release()  # twice: nothing
        assert not claim.active
        assert user(await ask(ident, 40001, 6667, "127.0.0.3")) == "nobody"
        with ident.claim((("127.0.0.1", 40001), ("127.0.0.3", 6667)), "bob"):
            assert user(await ask(ident, 40001, 6667, "127.0.0.3")) == "bob"
        assert user(await ask(ident, 40001, 6667, "127.0.0.3")) == "nobody"
        assert ident.claims == ()


async def test_newer_claim_replaces_older_and_old_release_keeps_it() -> None:
    async with setup(default="nobody") as (ident, _asker, _port):
        ends = (("127.0.0.1", 40001), ("127.0.0.3", 6667))
        old = ident.claim(ends, "alice")
        new = ident.claim(ends, "bob")
        assert not old.active and new.active
        old.release()
        assert user(await ask(ident, 40001, 6667, "127.0.0.3")) == "bob"


@pytest.mark.usefixtures("loop_kind")  # also on uvloop: its transports differ
async def test_a_closed_connection_never_answers() -> None:
    async with setup(default="nobody") as (ident, asker, port):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        claim = ident.claim(writer, "alice")
        assert user(await asker.answer_for(writer)) == "alice"
        lport = writer.get_extra_info("sockname")[1]
        writer.close()
        await writer.wait_closed()
        assert not claim.active
        assert user(await ask(ident, lport, port)) == "nobody"

        sock = socket.create_connection(("127.0.0.1", port))
        claim = ident.claim(sock, "carol")
        lport = sock.getsockname()[1]
        sock.close()
        assert not claim.active
        assert user(await ask(ident, lport, port)) == "nobody"
        # Claiming what is already closed gives a claim that never answers.
        assert not ident.claim(sock, "dave").active
        assert not ident.claim(writer, "erin").active
        assert ident.claims == ()


@pytest.mark.usefixtures("loop_kind")  # also on uvloop: its transports differ
async def test_claims_do_not_accumulate() -> None:
    """A long-running process that opens and closes connections without ever releasing
    its claims keeps a registry the size of its live connections, not of its history."""
    async with setup(asking=False) as (ident, _asker, port):
        live = []
        for _ in range(20):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            ident.claim(writer, "kept")
            live.append(writer)
        sizes = []
        for i in range(600):
            if i % 2:
                sock = socket.create_connection(("127.0.0.1", port))
                ident.claim(sock, "churn")
                sock.close()
            else:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                ident.claim(writer, "churn")
                writer.close()
                await writer.wait_closed()
            sizes.append(len(ident._claims))
        assert max(sizes) <= 2 * len(live) + 4, max(sizes)
        assert len(ident.claims) == len(live)
        for writer in live:
            writer.close()


async def test_claims_do_not_keep_sockets_alive() -> None:
    async with setup() as (ident, _asker, port):
        sock = socket.create_connection(("127.0.0.1", port))
        claim = ident.claim(sock, "alice")
        del sock
        gc.collect()
        assert not claim.active


async def test_order_is_claim_then_handlers_then_fallback() -> None:
    called: list[int] = []

    def handler(request: IdentRequest) -> None:
        called.append(request.server_port)
        if request.server_port == 40002:
            request.reply("UNIX", "fromhandler")

    async with setup(handlers=[handler], default="fallback", response_timeout=0.3) as (
        ident,
        _asker,
        _port,
    ):
        ident.claim((("127.0.0.1", 40001), ("127.0.0.1", 6667)), "fromclaim")
        ident.claim((("127.0.0.1", 40002), ("127.0.0.1", 6667)), "claimwins")
        assert user(await ask(ident, 40001, 6667)) == "fromclaim"
        assert user(await ask(ident, 40002, 6667)) == "claimwins"
        assert called == []
        assert user(await ask(ident, 40003, 6667)) == "fallback"
        assert called == [40003]


# -- connecting without a race ---------------------------------------------------------


async def test_open_connection_is_claimed_before_the_first_packet() -> None:
    """The asker queries in the same loop iteration it accepts, which can come before
    open_connection() returns: the answer must still be the claimed id, every time."""
    async with setup() as (ident, asker, port):
        for i in range(30):
            _, writer = await ident.open_connection("127.0.0.1", port, user_id=f"u{i}")
            assert user(await asker.answer_for(writer)) == f"u{i}"
            writer.close()


@pytest.mark.usefixtures("loop_kind")  # also on uvloop: its transports differ
async def test_the_race_with_a_peer_that_asks_before_connect_returns() -> None:
    """A peer that asks from its accept callback, while our connect is still pending in
    the same event loop: with connect_socket the claim exists before the SYN."""
    async with IdentServer("127.0.0.1", 0) as ident:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        answers: list[Reply] = []

        async def accept_and_ask() -> None:
            conn, _ = await loop.sock_accept(listener)
            with conn:
                answers.append(await aioidentd.query_connection(conn, port=ident.addresses[0][1]))

        asker = asyncio.create_task(accept_and_ask())
        sock = await ident.connect_socket("127.0.0.1", listener.getsockname()[1], user_id="early")
        await asker
        assert user(answers[0]) == "early"
        sock.close()
        listener.close()


def make_tls(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    try:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable(f"cannot make a test certificate with openssl: {exc}")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    return server_ctx, client_ctx


async def test_open_connection_over_tls(tmp_path: Path) -> None:
    server_ctx, client_ctx = make_tls(tmp_path)
    async with IdentServer("127.0.0.1", 0, multiple=True) as ident:
        asker = Asker(ident.addresses[0][1])
        port = await asker.start("127.0.0.1", ssl=server_ctx)
        try:
            _reader, writer = await ident.open_connection(
                "127.0.0.1", port, user_id="tlsuser", ssl=client_ctx
            )
            assert writer.get_extra_info("ssl_object") is not None
            assert user(await asker.answer_for(writer)) == "tlsuser"
            writer.close()
        finally:
            await asker.close()


async def test_open_connection_failure_leaves_no_claim_or_socket() -> None:
    async with IdentServer("127.0.0.1", 0) as ident:
        with pytest.raises(ConnectionRefusedError):
            await ident.open_connection("127.0.0.1", closed_port(), user_id="alice")
        assert len(ident._claims) == 0


# -- the bounded wait ------------------------------------------------------------------


@pytest.mark.usefixtures("loop_kind")  # also on uvloop: its transports differ
async def test_claim_after_connect_with_the_bounded_wait() -> None:
    async with setup(default="nobody", claim_wait=5.0, response_timeout=8.0) as (
        ident,
        asker,
        port,
    ):
        with ident.connecting("127.0.0.1"):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            # The query is already waiting (the asker asks at once): hold the claim back
            # until it has arrived, to prove the wait and not a lucky ordering.
            await wait_until_async(lambda: ident._claims.held > 0, what="a held query")
            ident.claim(writer, "late")
        assert user(await asker.answer_for(writer)) == "late"
        assert ident.stats.claimed == 1  # counted, though it was held first
        writer.close()


async def test_pending_done_without_claim_goes_on_to_handlers_at_once() -> None:
    async def handler(request: IdentRequest) -> None:
        request.reply("UNIX", "handler")

    async with setup(handlers=[handler], claim_wait=20.0, response_timeout=30.0) as (
        ident,
        asker,
        port,
    ):
        started = time.monotonic()
        pending = ident.connecting("127.0.0.1")
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        await wait_until_async(lambda: ident._claims.held > 0, what="a held query")
        pending.done()
        assert user(await asker.answer_for(writer)) == "handler"
        assert time.monotonic() - started < 10  # not the 20 s wait
        writer.close()


async def test_bounded_wait_times_out_to_the_handlers() -> None:
    seen: list[float] = []

    def handler(request: IdentRequest) -> None:
        seen.append(time.monotonic())
        request.reply("UNIX", "handler")

    async with setup(handlers=[handler], claim_wait=0.3, response_timeout=5.0) as (
        ident,
        asker,
        port,
    ):
        with ident.connecting("127.0.0.1"):
            started = time.monotonic()
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            assert user(await asker.answer_for(writer)) == "handler"
        assert seen[0] - started >= 0.3
        writer.close()


async def test_no_wait_for_queries_from_other_hosts() -> None:
    async with setup(default="nobody", claim_wait=20.0, response_timeout=30.0) as (
        ident,
        _asker,
        _port,
    ):
        with ident.connecting("127.0.0.9"):
            started = time.monotonic()
            assert user(await ask(ident, 40001, 6667, "127.0.0.3")) == "nobody"
            assert time.monotonic() - started < 10
            assert not ident._claims._waiters


async def test_connecting_by_name_resolves_first() -> None:
    async with setup(claim_wait=5.0) as (ident, _asker, _port):
        with pytest.raises(ValueError, match="async with"), ident.connecting("localhost"):
            pass
        async with ident.connecting("localhost") as pending:
            assert "127.0.0.1" in pending.hosts
        assert not ident._claims._pending


async def test_close_with_a_held_query_leaves_no_timer() -> None:
    ident = IdentServer("127.0.0.1", 0, claim_wait=20.0, response_timeout=30.0)
    await ident.start()
    pending = ident.connecting("127.0.0.1")
    reader, writer = await asyncio.open_connection(*ident.addresses[0])
    writer.write(b"40001, 6667\r\n")
    await wait_until_async(lambda: ident._claims.held > 0, what="a held query")
    await ident.close()
    assert await asyncio.wait_for(reader.readline(), 5) == b"40001,6667:ERROR:HIDDEN-USER\r\n"
    assert not ident._claims._waiters
    pending.done()
    writer.close()


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "kwargs", "exc"),
    [
        ("127.0.0.1:6667", {"user_id": "a"}, TypeError),
        ((("127.0.0.1", 1), ("irc.example.net", 6667)), {"user_id": "a"}, ValueError),
        ((("127.0.0.1", 0), ("127.0.0.1", 6667)), {"user_id": "a"}, ValueError),
        ((("127.0.0.1", 1), ("127.0.0.1", 70000)), {"user_id": "a"}, ValueError),
        ((("127.0.0.1", 1), ("127.0.0.1", 2)), {}, ValueError),
        ((("127.0.0.1", 1), ("127.0.0.1", 2)), {"user_id": "a", "error": "NO-USER"}, ValueError),
        ((("127.0.0.1", 1), ("127.0.0.1", 2)), {"user_id": "a\r\nb"}, ValueError),
        ((("127.0.0.1", 1), ("127.0.0.1", 2)), {"error": "NOPE"}, ValueError),
        ((("127.0.0.1", 1), ("127.0.0.1", 2)), {"user_id": "jürgen"}, ValueError),
    ],
)
def test_bad_claims_are_refused(target: Any, kwargs: dict[str, Any], exc: type) -> None:
    ident = IdentServer("127.0.0.1", 0)
    with pytest.raises(exc):
        ident.claim(target, **kwargs)
    assert len(ident._claims) == 0


def test_unconnected_socket_needs_remote() -> None:
    ident = IdentServer("127.0.0.1", 0)
    with socket.socket() as sock:
        with pytest.raises(ValueError, match="bind it"):
            ident.claim(sock, "a", remote=("127.0.0.1", 6667))
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="remote="):
            ident.claim(sock, "a")
        claim = ident.claim(sock, "a", remote=("127.0.0.1", 6667))
        assert claim.active and claim.remote == ("127.0.0.1", 6667)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "1", True])
def test_bad_claim_wait_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="claim_wait"):
        IdentServer("127.0.0.1", 0, claim_wait=value)


def test_response_timeout_default_fits_irc_servers() -> None:
    # Ergo, the most impatient IRC server, gives up after 1.5 s.
    assert IdentServer().response_timeout < 1.5
    assert IdentServer().claim_wait < IdentServer().response_timeout


async def test_open_connection_from_a_chosen_local_address() -> None:
    """local_addr picks the source; the claim is keyed by that address, and the query
    (sent to it, as an IRC server does) finds it."""
    async with setup(["127.0.0.1", "127.0.0.2"]) as (ident, asker, port):
        _, writer = await ident.open_connection(
            "127.0.0.1", port, user_id="sourced", local_addr=("127.0.0.2", 0)
        )
        assert writer.get_extra_info("sockname")[0] == "127.0.0.2"
        assert user(await asker.answer_for(writer)) == "sourced"
        (claim,) = ident.claims
        assert claim.local == ("127.0.0.2", writer.get_extra_info("sockname")[1])
        writer.close()


async def test_connect_failure_on_every_address_says_so() -> None:
    async with IdentServer("127.0.0.1", 0) as ident:
        with pytest.raises(OSError):
            await ident.connect_socket("localhost", closed_port(), user_id="alice")
        assert len(ident._claims) == 0


async def test_a_connection_without_ip_addresses_goes_to_the_handlers() -> None:
    """serve_connection() may be handed any stream socket; with claims present, a query on
    one without IP addresses is simply not a claimed connection."""
    ident = IdentServer("127.0.0.1", 0, default="nobody")
    ident.claim((("127.0.0.1", 40001), ("127.0.0.3", 6667)), "alice")
    ours, theirs = socket.socketpair()
    served = asyncio.create_task(ident.serve_connection(ours))
    reader, writer = await asyncio.open_connection(sock=theirs)
    writer.write(b"40001, 6667\r\n")
    assert await asyncio.wait_for(reader.readline(), 5) == b"40001,6667:USERID:UNIX:nobody\r\n"
    writer.close()
    await asyncio.wait_for(served, 5)
