"""Tests for aioidentd.lookup against real loopback connections and hand-made kernel replies."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioidentd.lookup import (
    Address,
    DiagEntry,
    NetlinkLookup,
    ProcNetLookup,
    SocketLookup,
    SocketLookupError,
    StaticLookup,
    default_lookup,
    parse_diag_reply,
)
from peers import unavailable
from support import deferred_listener, needs_ipv6, needs_root

NOBODY = 65534


@pytest.fixture(params=["netlink", "proc"])
def lookup(request: pytest.FixtureRequest) -> Iterator[SocketLookup]:
    if request.param == "proc":
        yield ProcNetLookup()
        return
    try:
        nl = NetlinkLookup()
    except SocketLookupError as exc:
        unavailable(f"netlink sock_diag unavailable here: {exc}")
    with nl:
        yield nl


def _addr(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> Address:
    return sockaddr[0], sockaddr[1]


@contextlib.contextmanager
def tcp_pair(
    listen_host: str, connect_host: str | None = None, *, dualstack: bool = False
) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected (client, accepted) pair over loopback on ephemeral ports."""
    family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
    with socket.create_server(
        (listen_host, 0), family=family, dualstack_ipv6=dualstack
    ) as listener:
        port = listener.getsockname()[1]
        client = socket.create_connection((connect_host or listen_host, port), timeout=5)
        server, _ = listener.accept()
        with client, server:
            yield client, server


PAIRS = [
    pytest.param("127.0.0.1", None, False, id="ipv4"),
    pytest.param("::1", None, False, id="ipv6", marks=needs_ipv6),
    pytest.param("::", "127.0.0.1", True, id="v4-mapped", marks=needs_ipv6),
]


# ------------------------------------------------------------------------------------------------
# Live sockets


@pytest.mark.parametrize(("listen", "connect", "dualstack"), PAIRS)
def test_own_connection_both_ends(
    lookup: SocketLookup, listen: str, connect: str | None, dualstack: bool
) -> None:
    with tcp_pair(listen, connect, dualstack=dualstack) as (client, server):
        me = os.getuid()
        assert lookup.owner(_addr(client.getsockname()), _addr(client.getpeername())) == me
        # For the v4-mapped case this end is spelled '::ffff:127.0.0.1' by the socket module.
        assert lookup.owner(_addr(server.getsockname()), _addr(server.getpeername())) == me


@needs_ipv6
def test_v4_mapped_both_spellings(lookup: SocketLookup) -> None:
    with tcp_pair("::", "127.0.0.1", dualstack=True) as (_client, server):
        (lhost, lport), (rhost, rport) = _addr(server.getsockname()), _addr(server.getpeername())
        assert lhost.startswith("::ffff:")
        plain = lookup.owner((lhost[7:], lport), (rhost[7:], rport))
        mixed = lookup.owner((lhost, lport), (rhost[7:], rport))
        assert plain == mixed == os.getuid()


@pytest.mark.parametrize(("listen", "connect", "dualstack"), PAIRS)
def test_wrong_tuple_is_none(
    lookup: SocketLookup, listen: str, connect: str | None, dualstack: bool
) -> None:
    with tcp_pair(listen, connect, dualstack=dualstack) as (client, _server):
        (chost, cport), (shost, sport) = _addr(client.getsockname()), _addr(client.getpeername())
        # From the accepted end: its local port has a listener, which the kernel's exact lookup
        # falls back to; that must not count as a match.
        assert lookup.owner((shost, sport), (chost, cport + 1)) is None
        assert lookup.owner((chost, cport), (shost, sport + 1)) is None
        if ":" not in chost or chost.startswith("::ffff:"):
            assert lookup.owner((shost, sport), ("127.0.0.2", cport)) is None
        else:
            assert lookup.owner((shost, sport), ("::2", cport)) is None
        assert lookup.owner((shost, sport), (chost, cport)) == os.getuid()  # control


def test_mixed_families_and_port_zero_are_none(lookup: SocketLookup) -> None:
    with tcp_pair("127.0.0.1") as (client, _server):
        local, remote = _addr(client.getsockname()), _addr(client.getpeername())
        assert lookup.owner(local, ("::1", remote[1])) is None
        assert lookup.owner(local, (remote[0], 0)) is None
        # Port 0 as remote would otherwise match the listener on the server side.
        assert lookup.owner(remote, (local[0], 0)) is None


def test_invalid_input_raises_value_error(lookup: SocketLookup) -> None:
    with pytest.raises(ValueError):
        lookup.owner(("not-an-ip", 1), ("127.0.0.1", 2))
    with pytest.raises(ValueError):
        lookup.owner(("127.0.0.1", 70000), ("127.0.0.1", 2))


CHILD = r"""
import os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
# Drop before socket(): a socket's owner is fixed when it is created. Nothing may be imported
# afterwards: the interpreter's files need not be readable by nobody.
os.setgid(65534)
os.setuid(65534)
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(10)
s.connect((host, port))
print(s.getsockname()[0], s.getsockname()[1], flush=True)
sys.stdin.readline()
"""


@needs_root
@pytest.mark.parametrize(
    "host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)], ids=["ipv4", "ipv6"]
)
def test_connection_of_another_user(lookup: SocketLookup, host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, 0), family=family) as listener:
        listener.settimeout(10)
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, host, str(listener.getsockname()[1])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        ) as child:  # on exit: stdin closed (the child's cue to quit), then waited for
            assert child.stdout is not None
            server, _ = listener.accept()
            with server:
                chost, cport = child.stdout.readline().split()
                child_end = (chost, int(cport))
                our_end = _addr(server.getsockname())
                assert child_end == _addr(server.getpeername())
                assert lookup.owner(child_end, our_end) == NOBODY
                assert lookup.owner(our_end, child_end) == os.getuid()


@needs_root
def test_the_server_end_of_a_connection_nobody_accepted_is_the_listeners(
    lookup: NetlinkLookup | ProcNetLookup,
) -> None:
    """A listener of nobody's with TCP_DEFER_ACCEPT holds our connection unaccepted (the
    kernel shows it with no owner): ``server_owner`` names the listener's owner, where
    ``owner`` cannot tell it from no connection at all. An accepted connection is its
    holder's; a connection to elsewhere is None."""
    with deferred_listener(NOBODY) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        theirs, ours = ("127.0.0.1", port), _addr(sock.getsockname())
        assert lookup.server_owner(theirs, ours) == NOBODY
    with deferred_listener(0) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        assert lookup.server_owner(("127.0.0.1", port), _addr(sock.getsockname())) == 0
    with tcp_pair("127.0.0.1") as (client, server):
        ends = _addr(server.getsockname()), _addr(client.getsockname())
        assert lookup.server_owner(*ends) == os.getuid()
        assert lookup.server_owner(("127.0.0.1", 1), ends[1]) is None


def _proc_state(local: Address, remote: Address) -> int | None:
    """The TCP state /proc/net/tcp shows for an IPv4 4-tuple, to check the test's premise."""

    def hx(addr: Address) -> str:
        word = int.from_bytes(socket.inet_aton(addr[0]), sys.byteorder)
        return f"{word:08X}:{addr[1]:04X}"

    with open("/proc/net/tcp") as f:
        for line in f:
            fields = line.split()
            if fields[1:3] == [hx(local), hx(remote)]:
                return int(fields[3], 16)
    return None


def _wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.01)


def test_time_wait_is_none_not_root(lookup: SocketLookup) -> None:
    with tcp_pair("127.0.0.1") as (client, server):
        local, remote = _addr(client.getsockname()), _addr(client.getpeername())
        client.close()  # the active closer is the side that ends up in TIME_WAIT
        assert server.recv(1) == b""
        server.close()
        _wait_for(lambda: _proc_state(local, remote) == 6)  # TCP_TIME_WAIT
        assert lookup.owner(local, remote) is None


def test_netlink_context_manager_and_close() -> None:
    with NetlinkLookup() as nl:
        assert nl.blocking is False
    nl.close()  # idempotent
    with pytest.raises(SocketLookupError, match="closed"):
        nl.owner(("127.0.0.1", 1), ("127.0.0.1", 2))


@needs_ipv6
def test_a_netlink_miss_is_one_request_where_the_kernel_finds_dual_stack_by_ipv4() -> None:
    """Misses are most queries a busy identd gets; asking again in the v4-mapped form
    doubled their cost on kernels that need no second request (every one tested: the
    dual-stack cases above pass with the IPv4 request alone). A kernel that does need it
    still gets it."""
    asked: list[int] = []
    with NetlinkLookup() as nl:
        real = nl._request

        def counting(lo: Any, re: Any, family: int) -> Any:
            asked.append(family)
            return real(lo, re, family)

        nl._request = counting  # type: ignore[method-assign]
        miss = (("127.0.0.1", 1), ("127.0.0.1", 2))
        assert nl.owner(*miss) is None  # (the first miss also checks the kernel, once)
        assert nl._mapped_retry is False, "this kernel does not find dual-stack sockets by IPv4"
        asked.clear()
        assert nl.owner(*miss) is None
        assert asked == [socket.AF_INET]
        nl._mapped_retry = True  # a kernel that needs the v4-mapped form
        asked.clear()
        assert nl.owner(*miss) is None
        assert asked == [socket.AF_INET, socket.AF_INET6]


def test_proc_is_blocking() -> None:
    assert ProcNetLookup().blocking is True


# ------------------------------------------------------------------------------------------------
# NetlinkLookup against a fake kernel: transient failures raise, stale replies are skipped


@pytest.fixture
def fake_kernel() -> Iterator[tuple[NetlinkLookup, socket.socket]]:
    nl = NetlinkLookup(timeout=0.05)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    real = nl._sock
    assert real is not None
    real.close()
    nl._sock = ours
    with nl, theirs:
        yield nl, theirs


def test_netlink_timeout_raises(fake_kernel: tuple[NetlinkLookup, socket.socket]) -> None:
    nl, _ = fake_kernel
    with pytest.raises(SocketLookupError, match="timed out") as info:
        nl.owner(("127.0.0.1", 1), ("127.0.0.1", 2))
    assert info.value.errno == errno.ETIMEDOUT


def test_netlink_garbage_reply_raises(fake_kernel: tuple[NetlinkLookup, socket.socket]) -> None:
    nl, kernel = fake_kernel
    kernel.send(b"\x01\x02\x03")
    with pytest.raises(SocketLookupError, match="truncated"):
        nl.owner(("127.0.0.1", 1), ("127.0.0.1", 2))


def test_netlink_error_reply_raises(fake_kernel: tuple[NetlinkLookup, socket.socket]) -> None:
    nl, kernel = fake_kernel
    kernel.send(nlmsg(2, 1, struct.pack("=i", -errno.ENOMEM) + bytes(16)))
    with pytest.raises(SocketLookupError) as info:
        nl.owner(("127.0.0.1", 1), ("127.0.0.1", 2))
    assert info.value.errno == errno.ENOMEM


def test_netlink_skips_stale_reply(fake_kernel: tuple[NetlinkLookup, socket.socket]) -> None:
    nl, kernel = fake_kernel
    local, remote = ("10.1.2.3", 4000), ("10.9.8.7", 6667)
    kernel.send(nlmsg(2, 999, struct.pack("=i", -errno.ENOENT)))  # answer to someone else
    kernel.send(nlmsg(20, 1, diag_msg(2, 1, local, remote, uid=1234, inode=77)))
    assert nl.owner(local, remote) == 1234


# ------------------------------------------------------------------------------------------------
# parse_diag_reply: a pure function fed with hand-made datagrams


def nlmsg(msg_type: int, seq: int, payload: bytes, *, length: int | None = None) -> bytes:
    size = 16 + len(payload) if length is None else length
    pad = b"\0" * (-len(payload) % 4)
    return struct.pack("=IHHII", size, msg_type, 0, seq, 0) + payload + pad


def _packed16(host: str) -> bytes:
    if ":" in host:
        return socket.inet_pton(socket.AF_INET6, host)
    return socket.inet_aton(host) + bytes(12)


def diag_msg(
    family: int, state: int, local: Address, remote: Address, *, uid: int, inode: int
) -> bytes:
    head = struct.pack("=BBBB", family, state, 0, 0)
    sockid = (
        struct.pack(">HH", local[1], remote[1])
        + _packed16(local[0])
        + _packed16(remote[0])
        + struct.pack("=III", 0, 0x1234, 0)
    )
    tail = struct.pack("=IIIII", 0, 0, 0, uid, inode)
    shutdown_attr = struct.pack("=HHB", 5, 8, 0) + bytes(3)  # an INET_DIAG_SHUTDOWN attribute
    return head + sockid + tail + shutdown_attr


def test_parse_valid_ipv4_reply() -> None:
    data = nlmsg(20, 7, diag_msg(2, 1, ("127.0.0.1", 5000), ("127.0.0.2", 113), uid=42, inode=9))
    assert parse_diag_reply(data, 7) == DiagEntry(
        2, 1, socket.inet_aton("127.0.0.1"), 5000, socket.inet_aton("127.0.0.2"), 113, 42, 9
    )


def test_parse_v4_mapped_reply_is_normalised() -> None:
    body = diag_msg(10, 1, ("::ffff:10.0.0.1", 1), ("::ffff:10.0.0.2", 2), uid=5, inode=6)
    entry = parse_diag_reply(nlmsg(20, 1, body), 1)
    assert entry is not None
    assert (entry.local, entry.remote) == (
        socket.inet_aton("10.0.0.1"),
        socket.inet_aton("10.0.0.2"),
    )


def test_parse_enoent_is_none() -> None:
    assert parse_diag_reply(nlmsg(2, 3, struct.pack("=i", -errno.ENOENT) + bytes(16)), 3) is None


def test_parse_done_is_none() -> None:
    assert parse_diag_reply(nlmsg(3, 3, struct.pack("=i", 0)), 3) is None


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(b"", "no netlink message", id="empty"),
        pytest.param(b"\x00" * 10, "truncated netlink header", id="short-header"),
        pytest.param(nlmsg(20, 1, b"", length=4), "bad netlink message length", id="len<16"),
        pytest.param(nlmsg(20, 1, bytes(8), length=400), "bad netlink message length", id="len>"),
        pytest.param(nlmsg(20, 1, bytes(40)), "truncated inet_diag_msg", id="short-diag"),
        pytest.param(nlmsg(2, 1, b"\xfe\xff"), "truncated netlink error", id="short-error"),
        pytest.param(nlmsg(2, 1, struct.pack("=i", 0)), "acknowledged", id="bare-ack"),
        pytest.param(
            nlmsg(2, 1, struct.pack("=i", -errno.EPERM)), "Operation not permitted", id="eperm"
        ),
        pytest.param(nlmsg(99, 1, bytes(72)), "unexpected netlink message type", id="type"),
        pytest.param(
            nlmsg(20, 1, diag_msg(7, 1, ("1.2.3.4", 1), ("1.2.3.4", 2), uid=1, inode=1)),
            "address family",
            id="family",
        ),
        pytest.param(nlmsg(2, 2, struct.pack("=i", -errno.ENOENT)), "sequence", id="other-seq"),
    ],
)
def test_parse_bad_replies_raise(data: bytes, match: str) -> None:
    with pytest.raises(SocketLookupError, match=match):
        parse_diag_reply(data, 1)


def test_parse_every_truncation_raises_lookup_error() -> None:
    good = nlmsg(20, 1, diag_msg(2, 1, ("127.0.0.1", 1), ("127.0.0.1", 2), uid=3, inode=4))
    for cut in range(len(good)):
        with pytest.raises(SocketLookupError):
            parse_diag_reply(good[:cut], 1)


@given(st.binary(max_size=200), st.integers(0, 3))
def test_parse_arbitrary_bytes_never_struct_error(data: bytes, seq: int) -> None:
    with contextlib.suppress(SocketLookupError):
        parse_diag_reply(data, seq)


# ------------------------------------------------------------------------------------------------
# ProcNetLookup on synthetic tables

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout"
    " inode\n"
)


def _hex(host: str, port: int) -> str:
    packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    words = [int.from_bytes(packed[i : i + 4], sys.byteorder) for i in range(0, len(packed), 4)]
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def _line(n: int, local: Address, remote: Address, state: int, uid: int, inode: int) -> str:
    return (
        f"{n:4d}: {_hex(*local)} {_hex(*remote)} {state:02X} 00000000:00000000 00:00000000 "
        f"00000000 {uid:5d}        0 {inode} 1 0000000000000000 20 4 30 10 -1\n"
    )


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    (tmp_path / "net").mkdir()
    tcp = [
        _line(0, ("127.0.0.1", 8080), ("0.0.0.0", 0), 0x0A, 1000, 111),  # listener
        _line(1, ("127.0.0.1", 40000), ("127.0.0.1", 8080), 0x01, 1000, 222),
        _line(2, ("127.0.0.1", 40001), ("127.0.0.1", 8080), 0x06, 0, 0),  # TIME_WAIT
        _line(3, ("127.0.0.1", 40002), ("127.0.0.1", 8080), 0x04, 0, 0),  # orphaned FIN_WAIT1
        _line(4, ("127.0.0.1", 40003), ("127.0.0.1", 8080), 0x01, 0, 333),  # root, really
        _line(5, ("10.0.0.5", 40004), ("10.0.0.6", 113), 0x06, 0, 0),  # dead remnant ...
        _line(6, ("10.0.0.5", 40004), ("10.0.0.6", 113), 0x01, 1003, 444),  # ... and successor
    ]
    tcp6 = [
        _line(0, ("::ffff:10.0.0.1", 5000), ("::ffff:10.0.0.2", 6667), 0x01, 1001, 555),
        _line(1, ("2001:db8::1", 22), ("2001:db8::2", 50000), 0x01, 1002, 666),
        _line(2, ("2001:db8::1", 22), ("2001:db8::3", 50001), 0x06, 0, 0),
    ]
    (tmp_path / "net" / "tcp").write_text(HEADER + "".join(tcp))
    (tmp_path / "net" / "tcp6").write_text(HEADER + "".join(tcp6))
    return tmp_path


@pytest.mark.parametrize(
    ("local", "remote", "uid"),
    [
        (("127.0.0.1", 40000), ("127.0.0.1", 8080), 1000),
        (("::ffff:127.0.0.1", 40000), ("127.0.0.1", 8080), 1000),
        (("127.0.0.1", 8080), ("127.0.0.1", 40000), None),  # reverse direction: not in table
        (("127.0.0.1", 8080), ("127.0.0.1", 1), None),
        (("127.0.0.1", 40001), ("127.0.0.1", 8080), None),  # TIME_WAIT, uid 0 inode 0
        (("127.0.0.1", 40002), ("127.0.0.1", 8080), None),  # uid 0 inode 0
        (("127.0.0.1", 40003), ("127.0.0.1", 8080), 0),
        (("10.0.0.5", 40004), ("10.0.0.6", 113), 1003),
        (("10.0.0.1", 5000), ("10.0.0.2", 6667), 1001),  # v4-mapped socket in tcp6
        (("::ffff:10.0.0.1", 5000), ("::ffff:10.0.0.2", 6667), 1001),
        (("2001:db8::1", 22), ("2001:db8::2", 50000), 1002),
        (("2001:db8:0:0::1", 22), ("2001:DB8::2", 50000), 1002),
        (("2001:db8::1", 22), ("2001:db8::3", 50001), None),
        (("2001:db8::1", 22), ("2001:db8::4", 50000), None),
    ],
)
def test_proc_synthetic_table(
    proc_root: Path, local: Address, remote: Address, uid: int | None
) -> None:
    assert ProcNetLookup(proc_root).owner(local, remote) == uid


def test_proc_literal_kernel_line(tmp_path: Path) -> None:
    # The kernel prints each address word in host order: what a little-endian machine
    # shows for 127.0.0.1 and 127.0.0.2, and what a big-endian one does.
    one, two = ("0100007F", "0200007F") if sys.byteorder == "little" else ("7F000001", "7F000002")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(
        HEADER + f"   0: {one}:1F90 {two}:0071 01 00000000:00000000 00:00000000 00000000  "
        "1000        0 4242 1 0000000000000000 20 4 30 10 -1\n"
    )
    assert ProcNetLookup(tmp_path).owner(("127.0.0.1", 8080), ("127.0.0.2", 113)) == 1000


def test_proc_missing_tcp6_is_none_missing_tcp_raises(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    lk = ProcNetLookup(tmp_path)
    assert lk.owner(("::1", 1), ("::1", 2)) is None
    with pytest.raises(SocketLookupError, match="cannot read"):
        lk.owner(("127.0.0.1", 1), ("127.0.0.1", 2))


def test_proc_malformed_matching_line_raises(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    local, remote = ("127.0.0.1", 1), ("127.0.0.1", 2)
    (tmp_path / "net" / "tcp").write_text(f"   0: {_hex(*local)} {_hex(*remote)} 01 x\n")
    with pytest.raises(SocketLookupError, match="malformed"):
        ProcNetLookup(tmp_path).owner(local, remote)


# ------------------------------------------------------------------------------------------------
# StaticLookup and default_lookup


def test_static_lookup() -> None:
    lk = StaticLookup({(("127.0.0.1", 1), ("::ffff:10.0.0.1", 2)): 1000})
    assert lk.blocking is False
    assert lk.owner(("::ffff:127.0.0.1", 1), ("10.0.0.1", 2)) == 1000
    assert lk.owner(("127.0.0.1", 1), ("10.0.0.1", 3)) is None
    lk.add(("2001:db8::1", 3), ("2001:DB8:0::2", 4), 0)
    assert lk.owner(("2001:db8::1", 3), ("2001:db8::2", 4)) == 0
    lk.remove(("2001:db8::1", 3), ("2001:db8::2", 4))
    lk.remove(("2001:db8::1", 3), ("2001:db8::2", 4))
    assert lk.owner(("2001:db8::1", 3), ("2001:db8::2", 4)) is None


def test_default_lookup_prefers_netlink(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aioidentd.lookup")
    lk = default_lookup()
    try:
        assert isinstance(lk, NetlinkLookup)
        assert "netlink" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        if isinstance(lk, NetlinkLookup):
            lk.close()


def test_default_lookup_falls_back_when_netlink_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise SocketLookupError(errno.EPROTONOSUPPORT, "refused by test")

    monkeypatch.setattr(NetlinkLookup, "__init__", refuse)
    with caplog.at_level(logging.WARNING, logger="aioidentd.lookup"):
        assert isinstance(default_lookup(), ProcNetLookup)
    assert "refused by test" in caplog.text


def test_default_lookup_falls_back_when_probe_sees_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Models a kernel without the inet_diag module: every query says ENOENT.
    monkeypatch.setattr(NetlinkLookup, "owner", lambda self, local, remote: None)
    with caplog.at_level(logging.WARNING, logger="aioidentd.lookup"):
        assert isinstance(default_lookup(), ProcNetLookup)
    assert "cannot see a connection" in caplog.text
