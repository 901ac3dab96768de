"""``[[nat]]`` without namespaces: the conntrack request and answer (sans-IO), the
/proc table fallback, the configuration, and the responder's NAT path against a real
inner identd on loopback with a stand-in for connection tracking. The kernel, the
gateway and real inner identds are in tests/interop/test_nat_netns.py."""

from __future__ import annotations

import errno
import socket
import struct
import textwrap
import threading

import pytest

import aioidentd
from aioidentd import IdentServer
from aioidentd.daemon import KernelResponder
from aioidentd.daemon.nat import ConntrackHelper, NatResolver, TranslationSource, _answer
from aioidentd.errors import ConfigError, SocketLookupError
from aioidentd.lookup import StaticLookup
from aioidentd.lookup.conntrack import (
    ConntrackLookup,
    Translation,
    encode_get_request,
    parse_conntrack_reply,
    scan_nf_conntrack,
)
from aioidentd.policy import Policy, describe, parse_config
from aioidentd.protocol import Address

OUTER = ("198.51.100.2", 40001)  # the gateway's end, as the outside server sees it
SERVER = ("203.0.113.1", 6667)


def nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def tuple_attr(kind: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    ips = nla(1, src) + nla(2, dst)
    proto = nla(1, b"\x06") + nla(2, struct.pack("!H", sport)) + nla(3, struct.pack("!H", dport))
    return nla(kind | 0x8000, nla(1 | 0x8000, ips) + nla(2 | 0x8000, proto))


def test_the_request_names_the_reply_tuple_exactly() -> None:
    _family, message = encode_get_request(OUTER, SERVER, seq=7)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", message)
    assert (length, kind, flags, seq) == (len(message), 0x0101, 0x01, 7)
    assert message[16:20] == bytes([2, 0, 0, 0])  # AF_INET, NFNETLINK_V0
    expected = tuple_attr(2, bytes([203, 0, 113, 1]), bytes([198, 51, 100, 2]), 6667, 40001)
    assert message[20:] == expected
    family6, message6 = encode_get_request(("2001:db8::2", 40001), ("2001:db8::1", 6667), 1)
    assert family6 == 10 and len(message6) > len(message)


def test_the_answer_gives_the_inner_view() -> None:
    orig = tuple_attr(1, bytes([10, 0, 0, 2]), bytes([203, 0, 113, 1]), 51515, 6667)
    reply = tuple_attr(2, bytes([203, 0, 113, 1]), bytes([198, 51, 100, 2]), 6667, 40001)
    body = bytes([2, 0, 0, 0]) + orig + reply
    message = struct.pack("=IHHII", 16 + len(body), 0x0100, 0, 9, 0) + body
    assert parse_conntrack_reply(message, 9) == Translation(
        ("10.0.0.2", 51515), ("203.0.113.1", 6667)
    )


def test_no_entry_is_none_and_a_refusal_is_a_permission_error() -> None:
    def error(code: int) -> bytes:
        return struct.pack("=IHHII", 36, 2, 0, 3, 0) + struct.pack("=i", -code) + bytes(16)

    assert parse_conntrack_reply(error(errno.ENOENT), 3) is None
    with pytest.raises(PermissionError):
        parse_conntrack_reply(error(errno.EPERM), 3)


class TableLookup(ConntrackLookup):
    """Connection tracking as a table, or failing with ``error``: what the helper
    process asks, without the kernel."""

    def __init__(self, table: dict[tuple[Address, Address], Translation]) -> None:
        super().__init__()
        self.close()
        self.table = table
        self.error: str | None = None

    def translation(self, outer: Address, server: Address) -> Translation | None:
        if self.error is not None:
            raise SocketLookupError(self.error)
        return self.table.get((outer, server))


def test_the_helper_channel_says_found_none_and_failed_apart() -> None:
    """A worker asks the conntrack helper over a socket pair: a translation, no entry
    (NO-USER then) and a failed lookup (UNKNOWN-ERROR) must come back as such. (The
    answer's status was read from its identity field, so "no entry" came back as a
    translation to 0.0.0.0 port 0: a catch-all [[nat]] forward then failed and the query
    got the server's HIDDEN-USER fallback instead of NO-USER.)"""
    lookup = TableLookup({(OUTER, SERVER): Translation(("10.0.0.2", 51515), SERVER)})
    worker, helper_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def serve() -> None:
        with helper_end:
            while request := helper_end.recv(512):
                helper_end.send(_answer(lookup, request))

    thread = threading.Thread(target=serve)
    thread.start()
    helper = ConntrackHelper(worker, timeout=5)
    try:
        assert helper.translation(OUTER, SERVER) == Translation(("10.0.0.2", 51515), SERVER)
        assert helper.translation(("198.51.100.2", 40002), SERVER) is None
        six = (("2001:db8::2", 40001), ("2001:db8::1", 6667))
        lookup.table[six] = Translation(("fd00::2", 51515), ("2001:db8::1", 6667))
        assert helper.translation(*six) == Translation(("fd00::2", 51515), ("2001:db8::1", 6667))
        lookup.error = "conntrack: Operation not permitted"
        with pytest.raises(SocketLookupError, match="Operation not permitted"):
            helper.translation(OUTER, SERVER)
    finally:
        helper.close()
        thread.join(5)
    assert not thread.is_alive()


def test_the_proc_table_fallback_matches_the_reply_tuple() -> None:
    table = (
        "ipv4     2 udp      17 20 src=10.0.0.2 dst=203.0.113.1 sport=5 dport=6667 "
        "src=203.0.113.1 dst=198.51.100.2 sport=6667 dport=40001 mark=0 use=2\n"
        "ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.3 dst=203.0.113.1 "
        "sport=51000 dport=6667 src=203.0.113.1 dst=198.51.100.2 sport=6667 dport=40002 "
        "[ASSURED] mark=0 use=2\n"
        "ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=203.0.113.1 "
        "sport=51515 dport=6667 src=203.0.113.1 dst=198.51.100.2 sport=6667 dport=40001 "
        "[ASSURED] mark=0 use=2\n"
    )
    assert scan_nf_conntrack(table, OUTER, SERVER) == Translation(
        ("10.0.0.2", 51515), ("203.0.113.1", 6667)
    )
    assert scan_nf_conntrack(table, ("198.51.100.2", 40009), SERVER) is None


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[nat]]\nanswer = 'forward'\n", 't:1: [[nat]] #1 needs network = "ADDRESS/PREFIX"'),
        ("[[nat]]\nnetwork = '10.0.0.0/8'\nanswer = 'fixed'\n", "needs reply"),
        ("[[nat]]\nnetwork = '10.0.0.0/8'\nreply = 'x'\n", "'reply' in [[nat]] #1 needs"),
        ("[[nat]]\nnetwork = '10.0.0.1/8'\n", "t:2: 'network' in [[nat]] #1: 10.0.0.1/8 has"),
        ("[[nat]]\nnetwork = '10.0.0.0/8'\nanswer = 'username'\n", "must be one of 'forward'"),
        ("[[nat]]\nnetwork = '10.0.0.0/8'\nforward_port = 0\n", "t:3: 'forward_port'"),
        (
            "[[nat]]\nnetwork = '10.0.0.0/8'\nanswer = 'hidden'\nforward_proxy = 'v2'\n",
            "t:4: 'forward_proxy' in [[nat]] #1 needs answer",
        ),
        ("[[nat]]\nnetwork = '10.0.0.0/8'\nforwad_port = 1\n", "did you mean 'forward_port'"),
        ("[server]\ntrusted_proxies = ['gateway']\n", "t:2: 'trusted_proxies' in [server]"),
    ],
)
def test_nat_settings_are_checked_with_line_numbers(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t")
    assert message in str(caught.value)


def test_check_config_shows_the_nat_entries() -> None:
    config = parse_config(
        textwrap.dedent(
            """
            [server]
            trusted_proxies = ["10.0.0.1"]
            [[nat]]
            network = ["10.0.0.0/24", "fd00::/64"]
            forward_proxy = "v2"
            [[nat]]
            network = "10.0.0.0/8"
            answer = "fixed"
            reply = "inside"
            """
        ),
        "t",
    )
    text = describe(config)
    assert (
        "  1. (line 4) inner 10.0.0.0/24 or fd00::/64: forward to the inner host's port 113 "
        "(PROXY v2)"
    ) in text
    assert "  2. (line 7) inner 10.0.0.0/8: fixed 'inside'" in text
    assert "PROXY headers accepted from 10.0.0.1/32" in text


# --------------------------------------------------------------------------- the responder


class Translations(TranslationSource):
    """Connection tracking as a table: (outer, server) -> the inner view."""

    def __init__(self, table: dict[tuple[Address, Address], Translation]) -> None:
        self.table = table

    def translation(self, outer: Address, server: Address) -> Translation | None:
        return self.table.get((outer, server))


async def ask_gateway(config: str, table: dict[tuple[Address, Address], Translation]) -> str:
    policy = Policy(parse_config(textwrap.dedent(config), "t"))
    responder = KernelResponder(StaticLookup(), policy, forward_timeout=0.3)
    responder.nat = NatResolver(Translations(table), lambda: responder.policy)
    async with IdentServer("127.0.0.1", 0, handlers=[responder]) as gateway:
        reply = await aioidentd.query(
            "127.0.0.1", 40001, 6667, port=gateway.addresses[0][1], timeout=5
        )
    return str(reply)


GATEWAY = (("127.0.0.1", 40001), ("127.0.0.1", 6667))


async def test_the_inner_identd_is_asked_about_its_own_ports() -> None:
    """The inner host sees its connection as 127.0.0.3:51515 -> 127.0.0.1:6667; its
    answer about (51515, 6667) goes out about the gateway's (40001, 6667)."""
    async with IdentServer("127.0.0.3", 0) as inner:
        inner.claim((("127.0.0.3", 51515), ("127.0.0.1", 6667)), "insider")
        port = inner.addresses[0][1]
        table = {GATEWAY: Translation(("127.0.0.3", 51515), ("127.0.0.1", 6667))}
        config = f"[[nat]]\nnetwork = '127.0.0.0/24'\nforward_port = {port}\n"
        assert await ask_gateway(config, table) == "USERID UNIX insider"


async def test_a_failed_forward_falls_back_to_the_next_static_entry() -> None:
    table = {GATEWAY: Translation(("127.0.0.3", 51515), ("127.0.0.1", 6667))}
    config = """
        [[nat]]
        network = '127.0.0.0/24'
        forward_port = 1
        [[nat]]
        network = '127.0.0.0/8'
        answer = 'fixed'
        reply = 'masqueraded'
    """
    assert await ask_gateway(config, table) == "USERID UNIX masqueraded"
    only_forward = "[[nat]]\nnetwork = '127.0.0.0/24'\nforward_port = 1\n"
    assert await ask_gateway(only_forward, table) == "ERROR UNKNOWN-ERROR"


async def test_untranslated_or_unlisted_connections_are_no_user() -> None:
    config = "[[nat]]\nnetwork = '10.0.0.0/8'\nanswer = 'hidden'\n"
    assert await ask_gateway(config, {}) == "ERROR NO-USER"
    # oidentd -f's conversion: a forward for every inner host; nothing translated.
    catch_all = "[[nat]]\nnetwork = '0.0.0.0/0'\nanswer = 'forward'\n"
    assert await ask_gateway(catch_all, {}) == "ERROR NO-USER"
    table = {GATEWAY: Translation(("192.0.2.9", 51515), ("127.0.0.1", 6667))}
    assert await ask_gateway(config, table) == "ERROR NO-USER"
    table = {GATEWAY: Translation(("10.1.2.3", 51515), ("127.0.0.1", 6667))}
    assert await ask_gateway(config, table) == "ERROR HIDDEN-USER"
