"""``answer = "forward"``: the daemon's responder asks the user's own identd (a real
embedded IdentServer, or a scripted misbehaving one) and relays what may be relayed;
everything else gets the policy's own answer before the querier's deadline. A
StaticLookup stands in for the kernel's socket table (the real kernel, ngircd and an
unprivileged application are in tests/interop/test_forward_netns.py)."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

import aioidentd
from aioidentd import ErrorReply, IdentServer, UserIdReply
from aioidentd.daemon import KernelResponder
from aioidentd.errors import ConfigError
from aioidentd.lookup import NetlinkLookup, ProcNetLookup, StaticLookup
from aioidentd.policy import Policy, parse_config
from aioidentd.protocol import Address, Reply
from peers import NOBODY
from support import FakeUserDB, deferred_listener, needs_root, query_server

ALICE, BOB = 1000, 1001
DB = FakeUserDB({ALICE: ("alice", None, ["alice"]), BOB: ("bob", None, ["bob"])})
#: The querier asks from here, the daemon listens on 127.0.0.1: a forward without a PROXY
#: header reaches the target from 127.0.0.1, so only the header names the querier.
QUERIER = "127.0.0.2"
RESPONSE_TIMEOUT = 1.0
FORWARD_TIMEOUT = 0.3


def connection(server_port: int, client_port: int) -> tuple[Address, Address]:
    return ("127.0.0.1", server_port), (QUERIER, client_port)


def config_for(target_port: int, proxy: str = "v2", extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        [server]
        forward_timeout = {FORWARD_TIMEOUT}
        response_timeout = {RESPONSE_TIMEOUT}
        [user.alice]
        answer = "forward"
        forward = "127.0.0.1:{target_port}"
        forward_proxy = "{proxy}"
        """
    ) + textwrap.dedent(extra)


@asynccontextmanager
async def daemon(lookup: object, config: str) -> AsyncIterator[IdentServer]:
    parsed = parse_config(config, "test.toml")
    responder = KernelResponder(
        lookup,  # type: ignore[arg-type]
        Policy(parsed, user_db=DB),
        forward_timeout=parsed.daemon.forward_timeout,
    )
    async with IdentServer(
        "127.0.0.1", 0, handlers=[responder], response_timeout=parsed.daemon.response_timeout
    ) as server:
        yield server


async def ask(server: IdentServer, server_port: int, client_port: int) -> tuple[Reply, float]:
    started = time.monotonic()
    reply = await query_server(server, server_port, client_port, source=QUERIER)
    return reply, time.monotonic() - started


@asynccontextmanager
async def scripted(answer: Callable[[bytes], bytes | None]) -> AsyncIterator[int]:
    """A target identd that answers each query line with ``answer(line)`` (None: never)."""
    asked: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            asked.append(line)
            reply = answer(line)
            if reply is None:
                await reader.read()  # hang until the daemon gives up
            else:
                writer.write(reply)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize("proxy", ["v1", "v2"])
async def test_the_applications_claim_answers_through_the_proxy_header(
    proxy: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    lookup = StaticLookup({connection(40001, 6667): ALICE})
    async with IdentServer("127.0.0.1", 0, trusted_proxies=["127.0.0.1"]) as app:
        app.claim((("127.0.0.1", 40001), (QUERIER, 6667)), "chosen")
        async with daemon(lookup, config_for(app.addresses[0][1], proxy)) as server:
            reply, _ = await ask(server, 40001, 6667)
    assert reply == UserIdReply(40001, 6667, "UNIX", b"chosen")
    assert "alice (uid 1000) replied as 'chosen' (forward, forward to 127.0.0.1:" in caplog.text
    assert f"(PROXY {proxy})" in caplog.text


async def test_without_a_header_the_target_sees_the_daemon_as_the_querier() -> None:
    """The flaw of oidentd's forward, kept for identds that do not read the header: the
    claim on the real connection cannot match, the application's fallback answers."""
    lookup = StaticLookup({connection(40001, 6667): ALICE})
    async with IdentServer("127.0.0.1", 0, default="appdefault") as app:
        app.claim((("127.0.0.1", 40001), (QUERIER, 6667)), "chosen")
        async with daemon(lookup, config_for(app.addresses[0][1], "none")) as server:
            reply, _ = await ask(server, 40001, 6667)
    assert reply == UserIdReply(40001, 6667, "UNIX", b"appdefault")


async def test_another_users_connection_is_never_forwarded() -> None:
    lookup = StaticLookup({connection(40001, 6667): ALICE, connection(40002, 6667): BOB})
    asked: list[int] = []

    def handler(request: aioidentd.IdentRequest) -> None:
        asked.append(request.server_port)
        request.reply("UNIX", "fromapp")

    async with (
        IdentServer("127.0.0.1", 0, handlers=[handler]) as app,
        daemon(lookup, config_for(app.addresses[0][1], "none")) as server,
    ):
        reply, _ = await ask(server, 40002, 6667)
        assert reply == UserIdReply(40002, 6667, "UNIX", b"bob")
        reply, _ = await ask(server, 40009, 6667)  # nobody's connection
        assert reply == ErrorReply(40009, 6667, "NO-USER")
        assert asked == []
        reply, _ = await ask(server, 40001, 6667)
        assert reply == UserIdReply(40001, 6667, "UNIX", b"fromapp")
        assert asked == [40001]


@pytest.mark.parametrize(
    ("case", "answer"),
    [
        ("hangs", lambda line: None),
        ("sends garbage", lambda line: b"this is not ident\r\n"),
        ("answers other ports", lambda line: b"1,2:USERID:UNIX:chosen\r\n"),
        ("answers NO-USER", lambda line: line.strip() + b":ERROR:NO-USER\r\n"),
        ("closes at once", lambda line: b""),
        ("names another user", lambda line: line.strip() + b":USERID:UNIX:bob\r\n"),
        ("sends a colon in the id", lambda line: line.strip() + b":USERID:UNIX:a:b\r\n"),
        # "eä" in EBCDIC: the octet 0x85 is NEL to every other reader.
        ("answers in EBCDIC", lambda line: line.strip() + b":USERID:UNIX,cp037:\x85\x43\r\n"),
        ("answers in UTF-16", lambda line: line.strip() + b":USERID:UNIX,UTF-16LE:\xe4\x00\r\n"),
    ],
)
async def test_a_target_that_fails_gives_the_policys_own_answer_in_time(
    case: str, answer: Callable[[bytes], bytes | None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    lookup = StaticLookup({connection(40001, 6667): ALICE})
    async with scripted(answer) as port, daemon(lookup, config_for(port, "none")) as server:
        reply, seconds = await ask(server, 40001, 6667)
    assert reply == UserIdReply(40001, 6667, "UNIX", b"alice"), case
    assert seconds < RESPONSE_TIMEOUT, case  # the querier never waits for the fallback
    if case == "hangs":
        assert seconds >= FORWARD_TIMEOUT - 0.01
        assert f"no answer within {FORWARD_TIMEOUT:.2f} s" in caplog.text
    assert "forward not used: 127.0.0.1:" in caplog.text, case


async def test_a_refused_forward_gives_the_policys_own_answer_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with scripted(lambda line: None) as port:
        pass  # closed again: nothing listens on the port any more
    lookup = StaticLookup({connection(40001, 6667): ALICE})
    async with daemon(lookup, config_for(port, "none", "[default]\nanswer = 'random'\n")) as server:
        reply, seconds = await ask(server, 40001, 6667)
    assert isinstance(reply, UserIdReply) and len(reply.raw) == 8  # [default]'s random
    assert seconds < FORWARD_TIMEOUT
    assert "refused the connection" in caplog.text


async def test_hidden_user_from_the_application_is_relayed() -> None:
    lookup = StaticLookup({connection(40001, 6667): ALICE})
    async with IdentServer("127.0.0.1", 0, trusted_proxies=["127.0.0.1"]) as app:
        app.claim((("127.0.0.1", 40001), (QUERIER, 6667)), error="HIDDEN-USER")
        async with daemon(lookup, config_for(app.addresses[0][1])) as server:
            reply, _ = await ask(server, 40001, 6667)
    assert reply == ErrorReply(40001, 6667, "HIDDEN-USER")


async def test_a_spoofed_name_is_relayed_when_the_policy_allows_it() -> None:
    lookup = StaticLookup({connection(40001, 6667): ALICE})
    extra = "allow_spoof_other = true\n"
    async with (
        scripted(lambda line: line.strip() + b":USERID:OTHER,UTF-8:bob\r\n") as port,
        daemon(lookup, config_for(port, "none") + extra) as server,
    ):
        reply, _ = await ask(server, 40001, 6667)
    # Our opsys; the target's charset is not needed for an ASCII id.
    assert reply == UserIdReply(40001, 6667, "UNIX", b"bob")


async def test_a_non_ascii_id_is_relayed_in_the_targets_charset_when_it_may_be_sent() -> None:
    lookup = StaticLookup({connection(40001, 6667): ALICE})
    async with (
        scripted(lambda line: line.strip() + b":USERID:UNIX,ISO-8859-1:j\xfcrgen\r\n") as port,
        daemon(lookup, config_for(port, "none")) as server,
    ):
        reply, _ = await ask(server, 40001, 6667)
    assert reply == UserIdReply(40001, 6667, "UNIX", b"j\xfcrgen", "ISO-8859-1")


async def test_a_privileged_remote_port_is_not_forwarded() -> None:
    lookup = StaticLookup({connection(40001, 25): ALICE})
    async with (
        scripted(lambda line: line.strip() + b":USERID:UNIX:chosen\r\n") as port,
        daemon(lookup, config_for(port, "none")) as server,
    ):
        reply, _ = await ask(server, 40001, 25)
    assert reply == UserIdReply(40001, 25, "UNIX", b"alice")


class TargetOwner(StaticLookup):
    """The kernel's view of a target identd run by ``owner``: its accepted sockets."""

    def __init__(self, mapping: dict[tuple[Address, Address], int], target: int, owner: int):
        super().__init__(mapping)
        self.target, self.target_owner = target, owner

    def owner(self, local: Address, remote: Address) -> int | None:
        if local == ("127.0.0.1", self.target):
            return self.target_owner
        return super().owner(local, remote)


async def test_a_target_run_by_another_user_is_not_believed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    mapping = {connection(40001, 6667): ALICE}
    async with scripted(lambda line: line.strip() + b":USERID:UNIX:chosen\r\n") as port:
        async with daemon(TargetOwner(mapping, port, BOB), config_for(port, "none")) as server:
            reply, _ = await ask(server, 40001, 6667)
        assert reply == UserIdReply(40001, 6667, "UNIX", b"alice")
        assert "it is run by uid 1001, not by the user (uid 1000)" in caplog.text
        async with daemon(TargetOwner(mapping, port, ALICE), config_for(port, "none")) as server:
            reply, _ = await ask(server, 40001, 6667)
        assert reply == UserIdReply(40001, 6667, "UNIX", b"chosen")


async def test_a_forward_back_to_the_daemon_ends_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """The daemon is its own target (the port is only known once it listens, so the
    configuration check cannot see it): the second forward of the pair is refused."""
    caplog.set_level(logging.INFO)
    lookup = StaticLookup(
        {connection(40001, 6667): ALICE, (("127.0.0.1", 40001), ("127.0.0.1", 6667)): ALICE}
    )
    parsed = parse_config(config_for(1, "none"), "test.toml")
    responder = KernelResponder(lookup, Policy(parsed, user_db=DB), forward_timeout=0.3)
    async with IdentServer("127.0.0.1", 0, handlers=[responder]) as server:
        own_port = server.addresses[0][1]
        looped = parse_config(config_for(own_port, "none"), "test.toml")
        responder.policy = Policy(looped, user_db=DB)
        reply, seconds = await ask(server, 40001, 6667)
    assert reply == UserIdReply(40001, 6667, "UNIX", b"alice")
    assert seconds < FORWARD_TIMEOUT
    assert "already being forwarded (a forwarding loop)" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[user.a]\nforward = "127.0.0.1:1"\n', "test.toml:2: 'forward' in [user.a] needs answer"),
        ('[user.a]\nanswer = "forward"\n', 'test.toml:2: answer = "forward" in [user.a] needs'),
        ('[user.a]\nanswer = "forward"\nforward = "localhost:1"\n', "not an IP address"),
        ('[user.a]\nanswer = "forward"\nforward = "127.0.0.1"\n', '"HOST:PORT"'),
        ('[user.a]\nanswer = "forward"\nforward = "::1:10113"\n', '"[::1]:PORT"'),
        ('[user.a]\nanswer = "forward"\nforward = "127.0.0.1:0"\n', "port"),
        (
            '[user.a]\nanswer = "forward"\nforward = "127.0.0.1:1"\nforward_proxy = "v3"\n',
            "test.toml:4: 'forward_proxy' in [user.a] must be one of 'none', 'v1', 'v2'",
        ),
        (
            '[user.a]\nanswer = "hidden"\nforward_proxy = "v1"\n',
            "'forward_proxy' in [user.a] needs",
        ),
        (
            '[user.a]\nanswer = "forward"\nforward = "127.0.0.1:113"\n',
            "test.toml:3: 'forward' in [user.a]: 127.0.0.1:113 is this daemon itself",
        ),
        (
            '[server]\nforward_timeout = 1\n[user.a]\nanswer = "forward"\nforward = "[::1]:9"\n',
            "test.toml:2: forward_timeout (1 s) must be less than response_timeout (1 s)",
        ),
    ],
)
def test_forward_settings_are_checked_with_line_numbers(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    assert message in str(caught.value)


def test_check_config_says_where_a_user_is_forwarded() -> None:
    from aioidentd.policy import describe

    config = parse_config(
        '[user.a]\nanswer = "forward"\nforward = "[::1]:10113"\nforward_proxy = "v1"\n', "t"
    )
    assert "[user.a] forward to [::1]:10113 (PROXY v1)" in describe(config)
    assert "forward timeout 0.5 s" in describe(config)


class KernelTargets(StaticLookup):
    """The queried connection from the table (alice's; she is not a user of this host),
    everything about forward targets from the kernel (``kernel``), as the daemon asks."""

    def __init__(self, mapping: dict[tuple[Address, Address], int], kernel: Any) -> None:
        super().__init__(mapping)
        self.kernel = kernel
        self.blocking = kernel.blocking

    def owner(self, local: Address, remote: Address) -> int | None:
        known = super().owner(local, remote)
        return known if known is not None else self.kernel.owner(local, remote)

    def server_owner(self, local: Address, remote: Address) -> int | None:
        result: int | None = self.kernel.server_owner(local, remote)
        return result


@needs_root
@pytest.mark.parametrize("kernel", [NetlinkLookup, ProcNetLookup])
async def test_a_deferred_accept_listener_of_another_user_is_not_believed(
    kernel: Callable[[], Any], caplog: pytest.LogCaptureFixture
) -> None:
    """alice forwards to a port where her identd is down; nobody listens there with
    TCP_DEFER_ACCEPT, so until the query arrives the kernel shows the daemon's connection
    with no owner (uid 0, no inode). Who runs the target is the listener's owner: refused.
    The same listener run by root (or by alice) is believed."""
    caplog.set_level(logging.INFO)
    mapping = {connection(40001, 6667): ALICE}
    with deferred_listener(NOBODY, b":USERID:UNIX:impostor\r\n") as port:
        lookup = KernelTargets(mapping, kernel())
        async with daemon(lookup, config_for(port, "none")) as server:
            reply, _ = await ask(server, 40001, 6667)
    assert reply == UserIdReply(40001, 6667, "UNIX", b"alice")
    assert f"it is run by uid {NOBODY}, not by the user (uid 1000)" in caplog.text
    with deferred_listener(0, b":USERID:UNIX:chosen\r\n") as port:
        lookup = KernelTargets(mapping, kernel())
        async with daemon(lookup, config_for(port, "none")) as server:
            reply, _ = await ask(server, 40001, 6667)
    assert reply == UserIdReply(40001, 6667, "UNIX", b"chosen")
