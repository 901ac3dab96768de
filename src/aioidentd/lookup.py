"""Which local user owns a given TCP connection.

An ident server answers one question: "who owns the connection from my port X to your port Y?".
This module hides the operating-system specific ways of answering it behind one tiny protocol,
:class:`SocketLookup`, so the embedded server, the daemon and tests can each plug in what suits
them:

* :class:`NetlinkLookup` asks the Linux kernel directly with one exact-match ``sock_diag``
  request. Its cost does not grow with the number of sockets on the host, it needs no privilege
  (so it keeps working after the daemon drops root) and it is cheap enough to call on the event
  loop.
* :class:`ProcNetLookup` scans ``/proc/net/tcp`` and ``/proc/net/tcp6``. It is the fallback for
  kernels or sandboxes that refuse netlink. It costs O(table size) per query, so callers must run it
  off the event loop (``blocking`` is True).
* :class:`StaticLookup` is a test double, and also serves applications that already know which of
  their own connections belongs to whom.

Two traps that naive identds fall into are handled by both kernel back ends:

* A TIME_WAIT (or orphaned) socket is reported with uid 0 and inode 0. That is "nobody owns this
  any more", not "root owns this", so it maps to ``None``.
* A dual-stack ``AF_INET6`` socket carries IPv4 connections as ``::ffff:a.b.c.d``. An IPv4 query
  that misses is retried in that form, and v4-mapped input is normalised to plain IPv4 first, so
  both spellings of the same connection give the same answer.

No asyncio here on purpose: the caller decides how to schedule a lookup, guided by ``blocking``.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import NamedTuple, Protocol, Self

from aioidentd.errors import SocketLookupError
from aioidentd.protocol import V4_MAPPED_PREFIX, Address

__all__ = [
    "Address",
    "DiagEntry",
    "NetlinkLookup",
    "ProcNetLookup",
    "SocketLookup",
    "SocketLookupError",
    "StaticLookup",
    "default_lookup",
    "parse_diag_reply",
    "scan_proc_table",
]

logger = logging.getLogger(__name__)


class SocketLookup(Protocol):
    """What the ident server needs from the operating system, and nothing more."""

    blocking: bool
    """True when :meth:`owner` may take long enough that it must not run on the event loop."""

    def owner(self, local: Address, remote: Address) -> int | None:
        """Return the uid owning the live TCP socket with this local and remote end.

        ``None`` means there is no such socket, or it no longer has an owner (TIME_WAIT, orphaned).
        Raises :class:`SocketLookupError` when the answer cannot be determined, and
        :class:`ValueError` for a host that is not an IP address or a port outside 0-65535
        (a caller bug, not a runtime condition).
        """
        ...


# --------------------------------------------------------------------------------------------
# Address handling shared by the back ends

# Linux TCP states (include/net/tcp_states.h) in which a matching entry is not a connection
# anyone owns: TIME_WAIT and CLOSE are remnants; LISTEN can turn up because the kernel's exact
# lookup falls back to listeners when no established socket matches.
_TCP_TIME_WAIT = 6
_TCP_CLOSE = 7
_TCP_LISTEN = 10
_DEAD_STATES = frozenset({_TCP_TIME_WAIT, _TCP_CLOSE, _TCP_LISTEN})


class _Endpoint(NamedTuple):
    family: int  # AF_INET or AF_INET6 after v4-mapped normalisation
    packed: bytes  # 4 or 16 bytes, network order
    port: int
    ifindex: int  # IPv6 scope (link-local); 0 when none


def _endpoint(addr: Address) -> _Endpoint:
    """Parse and normalise one end, so every spelling of an address compares equal.

    Normalising ``::ffff:a.b.c.d`` to IPv4 here means the lookups only need one rule: try the
    plain family first, then the v4-mapped form. inet_pton rather than ipaddress because this runs
    on every query and is several times cheaper.
    """
    host, port = addr[0], addr[1]
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port!r}")
    try:
        return _Endpoint(socket.AF_INET, socket.inet_pton(socket.AF_INET, host), port, 0)
    except OSError:
        pass
    name, _, scope = host.partition("%")
    try:
        packed = socket.inet_pton(socket.AF_INET6, name)
    except (OSError, UnicodeError):
        raise ValueError(f"not an IP address: {host!r}") from None
    if packed[:12] == V4_MAPPED_PREFIX:
        return _Endpoint(socket.AF_INET, packed[12:], port, 0)
    return _Endpoint(socket.AF_INET6, packed, port, _scope_index(scope))


def _scope_index(scope: str) -> int:
    """Interface index for an IPv6 scope, because link-local sockets only match on their link."""
    if not scope:
        return 0
    if scope.isdigit():
        return int(scope)
    try:
        return socket.if_nametoindex(scope)
    except OSError:
        return 0


def _normalise_packed(packed: bytes) -> bytes:
    """Reduce a 16-byte v4-mapped address to its 4 IPv4 bytes; leave anything else alone."""
    if len(packed) == 16 and packed[:12] == V4_MAPPED_PREFIX:
        return packed[12:]
    return packed


def _query_pair(local: Address, remote: Address) -> tuple[_Endpoint, _Endpoint] | None:
    """Both ends, or None when the 4-tuple cannot name any live connection."""
    lo, re = _endpoint(local), _endpoint(remote)
    if lo.family != re.family or lo.port == 0 or re.port == 0:
        # Port 0 never appears on a connected socket; letting it through would match listeners.
        return None
    return lo, re


# --------------------------------------------------------------------------------------------
# Netlink sock_diag

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_INET_DIAG_NOCOOKIE = 0xFFFFFFFF
# Every state except TIME_WAIT and CLOSE. Current kernels ignore the mask for an exact-match
# request, so replies are filtered again in parse_diag_reply.
_STATES_WANTED = 0xFFFFFFFF & ~((1 << _TCP_TIME_WAIT) | (1 << _TCP_CLOSE))

# nlmsghdr (16) + inet_diag_req_v2 (8) + inet_diag_sockid (48). Native byte order except for the
# ports and addresses, which the kernel keeps in network order: the ports are swapped by hand so
# that one Struct covers the whole message.
_REQUEST = struct.Struct("=IHHIIBBBBIHH16s16sIII")
_NLMSGHDR = struct.Struct("=IHHII")
_NLMSGERR_CODE = struct.Struct("=i")
# inet_diag_msg: family, state, timer, retrans, sockid (sport, dport, src, dst, if, cookie[2]),
# expires, rqueue, wqueue, uid, inode.
_DIAG_MSG = struct.Struct("=BBBBHH16s16sIIIIIIII")
_RECV_BUFSIZE = 16384


class DiagEntry(NamedTuple):
    """The parts of a sock_diag reply that decide ownership, addresses already normalised."""

    family: int
    state: int
    local: bytes  # 4 bytes for IPv4 (including v4-mapped sockets), else 16
    local_port: int
    remote: bytes
    remote_port: int
    uid: int
    inode: int


class _StaleReply(SocketLookupError):
    """A datagram answering some earlier request (e.g. one that timed out)."""


def _align4(n: int) -> int:
    return (n + 3) & ~3


def parse_diag_reply(data: bytes, seq: int) -> DiagEntry | None:
    """Decode the kernel's answer to one exact-match request with sequence number ``seq``.

    A pure function so that malformed input can be tested without a kernel. The contract callers
    rely on: ``None`` only when the kernel said "no such socket" (ENOENT, or an empty answer);
    every other oddity
    raises :class:`SocketLookupError`, never :class:`struct.error`.
    """
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < _NLMSGHDR.size:
            raise SocketLookupError(f"truncated netlink header ({end - offset} bytes)")
        length, msg_type, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > end:
            raise SocketLookupError(f"bad netlink message length {length} ({end - offset} left)")
        payload = offset + _NLMSGHDR.size
        msg_end = offset + length
        offset += _align4(length)
        if msg_seq != seq:
            continue
        if msg_type == _NLMSG_ERROR:
            if msg_end - payload < _NLMSGERR_CODE.size:
                raise SocketLookupError("truncated netlink error message")
            (code,) = _NLMSGERR_CODE.unpack_from(data, payload)
            if code == -errno.ENOENT:
                return None
            if code == 0:
                raise SocketLookupError("netlink acknowledged the request but sent no socket")
            raise SocketLookupError(-code, f"sock_diag request failed: {os.strerror(-code)}")
        if msg_type == _NLMSG_DONE:
            return None
        if msg_type != _SOCK_DIAG_BY_FAMILY:
            raise SocketLookupError(f"unexpected netlink message type {msg_type}")
        if msg_end - payload < _DIAG_MSG.size:
            raise SocketLookupError(f"truncated inet_diag_msg ({msg_end - payload} bytes)")
        (family, state, _timer, _retrans, sport, dport, src, dst, _ifindex, _c0, _c1, _expires,
         _rq, _wq, uid, inode) = _DIAG_MSG.unpack_from(data, payload)  # fmt: skip
        if family == socket.AF_INET:
            src, dst = src[:4], dst[:4]
        elif family == socket.AF_INET6:
            src, dst = _normalise_packed(src), _normalise_packed(dst)
        else:
            raise SocketLookupError(f"unexpected address family {family} in sock_diag reply")
        return DiagEntry(family, state, src, socket.ntohs(sport), dst, socket.ntohs(dport), uid,
                         inode)  # fmt: skip
    raise _StaleReply(f"no netlink message with sequence number {seq}")


def _owner_from_entry(entry: DiagEntry | None, local: _Endpoint, remote: _Endpoint) -> int | None:
    """Apply the ownership rules to a decoded reply.

    The kernel's exact lookup may hand back a listener (or a socket in a dead state) rather than
    the connection asked about, so the 4-tuple is checked again before trusting the uid.
    """
    if entry is None or entry.state in _DEAD_STATES:
        return None
    if (entry.local, entry.local_port, entry.remote, entry.remote_port) != (
        local.packed,
        local.port,
        remote.packed,
        remote.port,
    ):
        return None
    if entry.uid == 0 and entry.inode == 0:
        return None
    return entry.uid


class NetlinkLookup:
    """Exact-match ``SOCK_DIAG_BY_FAMILY`` lookups over one long-lived netlink socket.

    The socket is opened in ``__init__`` so that it already exists when a daemon drops privileges
    or locks itself down (sock_diag queries need no privilege, so it keeps working afterwards).
    Reusing one socket also saves a socket() and close() per query.

    Thread-safe: a lock pairs each request with its reply.
    """

    blocking: bool = False

    def __init__(self, *, timeout: float = 1.0) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._seq = 0
        try:
            family = socket.AF_NETLINK
        except AttributeError:  # pragma: no cover - non-Linux
            raise SocketLookupError("netlink is not available on this platform") from None
        try:
            self._sock: socket.socket | None = socket.socket(
                family, socket.SOCK_RAW, _NETLINK_SOCK_DIAG
            )
        except OSError as exc:
            raise SocketLookupError(exc.errno, f"cannot open sock_diag socket: {exc}") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the netlink socket; later lookups raise :class:`SocketLookupError`."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def owner(self, local: Address, remote: Address) -> int | None:
        pair = _query_pair(local, remote)
        if pair is None:
            return None
        lo, re = pair
        uid = self._lookup(lo, re, lo.family)
        if uid is None and lo.family == socket.AF_INET:
            # Maybe an IPv4 peer of a dual-stack AF_INET6 socket. The kernel tested here (6.18)
            # already finds those with the AF_INET query; asking again in the v4-mapped form, as
            # oidentd does, covers kernels that don't, at one extra round trip on misses only.
            uid = self._lookup(lo, re, socket.AF_INET6)
        return uid

    def _lookup(self, lo: _Endpoint, re: _Endpoint, family: int) -> int | None:
        """One request/reply round trip, asking in ``family`` (AF_INET6 for the v4-mapped form)."""
        if family == socket.AF_INET6 and lo.family == socket.AF_INET:
            src, dst = V4_MAPPED_PREFIX + lo.packed, V4_MAPPED_PREFIX + re.packed
        else:
            src, dst = lo.packed, re.packed
        with self._lock:
            sock = self._sock
            if sock is None:
                raise SocketLookupError("NetlinkLookup is closed")
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            seq = self._seq
            request = _REQUEST.pack(
                _REQUEST.size, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, seq, 0,
                family, socket.IPPROTO_TCP, 0, 0, _STATES_WANTED,
                socket.htons(lo.port), socket.htons(re.port), src, dst, lo.ifindex,
                _INET_DIAG_NOCOOKIE, _INET_DIAG_NOCOOKIE,
            )  # fmt: skip
            try:
                sock.send(request)
                entry = self._receive(sock, seq)
            except SocketLookupError:
                raise
            except OSError as exc:
                raise SocketLookupError(exc.errno, f"sock_diag request failed: {exc}") from exc
        return _owner_from_entry(entry, lo, re)

    def _receive(self, sock: socket.socket, seq: int) -> DiagEntry | None:
        """Read until the reply to ``seq`` arrives, dropping leftovers of abandoned requests.

        The kernel answers inside send(), so the first non-blocking recv() nearly always
        succeeds; poll() is only the safety net that bounds a misbehaving kernel.
        """
        while True:
            try:
                data = sock.recv(_RECV_BUFSIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                ready, _, _ = select.select([sock], [], [], self._timeout)
                if not ready:
                    raise SocketLookupError(
                        errno.ETIMEDOUT, "timed out waiting for sock_diag reply"
                    ) from None
                continue
            try:
                return parse_diag_reply(data, seq)
            except _StaleReply:
                continue


# --------------------------------------------------------------------------------------------
# /proc/net/tcp{,6}


def _proc_hex(packed: bytes) -> bytes:
    """Render an address the way /proc/net/tcp prints it: each 32-bit word in host order, %08X."""
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return b"".join(b"%08X" % w for w in words)


def scan_proc_table(table: bytes, local: bytes, remote: bytes) -> int | None:
    """Owner of the connection whose ``ADDR:PORT`` columns equal ``local`` and ``remote``.

    ``local`` and ``remote`` are already in the table's own hex spelling, so matching is a byte
    search instead of parsing every line: the scan is still O(table) but runs at memchr speed.
    A live entry wins over a dead one with the same 4-tuple (a TIME_WAIT remnant can coexist with
    its successor).
    """
    needle = b" " + local + b" " + remote + b" "
    pos = table.find(needle)
    while pos >= 0:
        start = table.rfind(b"\n", 0, pos) + 1
        stop = table.find(b"\n", pos)
        fields = table[start : stop if stop >= 0 else len(table)].split()
        try:
            state, uid, inode = int(fields[3], 16), int(fields[7]), int(fields[9])
        except (IndexError, ValueError):
            raise SocketLookupError(f"malformed /proc/net/tcp line: {fields!r}") from None
        if state not in _DEAD_STATES and not (uid == 0 and inode == 0):
            return uid
        pos = table.find(needle, pos + 1)
    return None


class ProcNetLookup:
    """Scan ``/proc/net/tcp`` and ``/proc/net/tcp6``: the fallback when netlink is refused.

    Reads the whole table per query because the kernel regenerates it on every read anyway; the
    cost is proportional to the number of sockets on the host, hence ``blocking``.
    """

    blocking: bool = True

    def __init__(self, root: str | os.PathLike[str] = "/proc") -> None:
        self._tcp = os.path.join(root, "net", "tcp")
        self._tcp6 = os.path.join(root, "net", "tcp6")

    def owner(self, local: Address, remote: Address) -> int | None:
        pair = _query_pair(local, remote)
        if pair is None:
            return None
        lo, re = pair
        if lo.family == socket.AF_INET6:
            return self._search(self._tcp6, lo.packed, lo.port, re.packed, re.port, required=False)
        uid = self._search(self._tcp, lo.packed, lo.port, re.packed, re.port, required=True)
        if uid is None:
            uid = self._search(
                self._tcp6,
                V4_MAPPED_PREFIX + lo.packed,
                lo.port,
                V4_MAPPED_PREFIX + re.packed,
                re.port,
                required=False,
            )
        return uid

    def _search(
        self, path: str, laddr: bytes, lport: int, raddr: bytes, rport: int, *, required: bool
    ) -> int | None:
        try:
            with open(path, "rb") as f:
                table = f.read()
        except FileNotFoundError as exc:
            if not required:
                return None  # IPv6 disabled: no tcp6 table, so no such socket either
            raise SocketLookupError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc
        except OSError as exc:
            raise SocketLookupError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc
        local = _proc_hex(laddr) + b":%04X" % lport
        remote = _proc_hex(raddr) + b":%04X" % rport
        return scan_proc_table(table, local, remote)


# --------------------------------------------------------------------------------------------
# Test double / application-supplied answers


def _static_key(addr: Address) -> tuple[bytes, int]:
    ep = _endpoint(addr)
    return ep.packed, ep.port


class StaticLookup:
    """A fixed table of connections and their owners.

    Meant as a test double for the server and daemon, and for embedding applications that know
    their own outgoing connections and want to answer without asking the kernel. Addresses are
    normalised like the kernel back ends do, so ``::ffff:1.2.3.4`` and ``1.2.3.4`` are the same.
    """

    blocking: bool = False

    def __init__(self, mapping: Mapping[tuple[Address, Address], int] | None = None) -> None:
        self._table: dict[tuple[tuple[bytes, int], tuple[bytes, int]], int] = {}
        for (local, remote), uid in (mapping or {}).items():
            self.add(local, remote, uid)

    def add(self, local: Address, remote: Address, uid: int) -> None:
        """Record (or replace) the owner of a connection."""
        self._table[_static_key(local), _static_key(remote)] = uid

    def remove(self, local: Address, remote: Address) -> None:
        """Forget a connection; forgetting an unknown one is not an error."""
        self._table.pop((_static_key(local), _static_key(remote)), None)

    def owner(self, local: Address, remote: Address) -> int | None:
        return self._table.get((_static_key(local), _static_key(remote)))


# --------------------------------------------------------------------------------------------


def _probe(lookup: NetlinkLookup) -> None:
    """Check that ``lookup`` can see a connection we own right now.

    Talking to the kernel is not enough: without the inet_diag module every query comes back
    ENOENT, which would silently turn every answer into NO-USER.
    """
    try:
        listener = socket.create_server(("127.0.0.1", 0))
    except OSError:
        # No loopback to test with (odd sandbox): settle for "the kernel answers at all".
        lookup.owner(("127.0.0.1", 1), ("127.0.0.1", 1))
        return
    with listener, socket.create_connection(listener.getsockname()) as client:
        server, _ = listener.accept()
        with server:
            if lookup.owner(client.getsockname(), client.getpeername()) is None:
                raise SocketLookupError("sock_diag cannot see a connection of this process")


def default_lookup() -> SocketLookup:
    """The best lookup this host allows: netlink if it works, else the /proc scanner.

    Probed once here rather than per query, so a refusal is logged once and the daemon's
    behaviour does not flip between back ends at run time.
    """
    try:
        netlink = NetlinkLookup()
    except SocketLookupError as exc:
        reason: OSError = exc
    else:
        try:
            _probe(netlink)
        except OSError as exc:
            netlink.close()
            reason = exc
        else:
            logger.debug("socket owner lookup: using netlink sock_diag")
            return netlink
    logger.warning(
        "socket owner lookup: netlink sock_diag unavailable (%s); falling back to scanning "
        "/proc/net/tcp, which is slower and must run off the event loop",
        reason,
    )
    return ProcNetLookup()
