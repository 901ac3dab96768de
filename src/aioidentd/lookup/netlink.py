"""Who owns a connection, asked of the Linux kernel with one exact-match ``sock_diag``
request: its cost does not grow with the number of sockets on the host, it needs no
privilege (so it keeps working after the daemon drops root), and it is cheap enough to
call on the event loop."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
from types import TracebackType
from typing import NamedTuple, Self

from aioidentd.errors import SocketLookupError
from aioidentd.lookup._endpoints import (
    TCP_CLOSE,
    TCP_LISTEN,
    TCP_TIME_WAIT,
    Endpoint,
    normalise_packed,
    owned,
    query_pair,
)
from aioidentd.protocol import V4_MAPPED_PREFIX, Address, show_address

__all__ = ["DiagEntry", "NetlinkLookup", "parse_diag_reply"]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_INET_DIAG_NOCOOKIE = 0xFFFFFFFF
# Every state except TIME_WAIT and CLOSE. Current kernels ignore the mask for an exact-match
# request, so replies are filtered again in parse_diag_reply.
_STATES_WANTED = 0xFFFFFFFF & ~((1 << TCP_TIME_WAIT) | (1 << TCP_CLOSE))

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
            src, dst = normalise_packed(src), normalise_packed(dst)
        else:
            raise SocketLookupError(f"unexpected address family {family} in sock_diag reply")
        return DiagEntry(family, state, src, socket.ntohs(sport), dst, socket.ntohs(dport), uid,
                         inode)  # fmt: skip
    raise _StaleReply(f"no netlink message with sequence number {seq}")


def _owner_from_entry(entry: DiagEntry | None, local: Endpoint, remote: Endpoint) -> int | None:
    """Apply the ownership rules to a decoded reply.

    The kernel's exact lookup may hand back a listener (or a socket in a dead state) rather than
    the connection asked about, so the 4-tuple is checked again before trusting the uid.
    """
    entry = _same_connection(entry, local, remote)
    if entry is None or not owned(entry.state, entry.uid, entry.inode):
        return None
    return entry.uid


def _same_connection(
    entry: DiagEntry | None, local: Endpoint, remote: Endpoint
) -> DiagEntry | None:
    """``entry`` if it is the connection asked about (not the listener the kernel's exact
    lookup falls back to), else None."""
    if entry is None or (entry.local, entry.local_port, entry.remote, entry.remote_port) != (
        local.packed,
        local.port,
        remote.packed,
        remote.port,
    ):
        return None
    return entry


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
        #: Whether a miss must be asked again in the v4-mapped form (None: not known yet;
        #: see _families).
        self._mapped_retry: bool | None = None
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
        pair = query_pair(local, remote)
        if pair is None:
            return None
        lo, re = pair
        uid = self._lookup(lo, re, lo.family)
        if uid is None and lo.family == socket.AF_INET and self._mapped_retry_needed():
            # Maybe an IPv4 peer of a dual-stack AF_INET6 socket, on a kernel whose AF_INET
            # query does not find those: ask again in the v4-mapped form, as oidentd does.
            uid = self._lookup(lo, re, socket.AF_INET6)
        return uid

    def _mapped_retry_needed(self) -> bool:
        """Whether misses need the second, v4-mapped request. Linux files a dual-stack
        socket's IPv4 connection in the IPv4 table, so the AF_INET query finds it (seen on
        every kernel tested) and the retry would double the cost of every miss for nothing;
        checked once, on a dual-stack loopback connection of our own, and kept when the
        check cannot be made (no loopback, no IPv6)."""
        needed = self._mapped_retry
        if needed is None:
            needed = self._mapped_retry = not self._finds_dual_stack_by_ipv4()
        return needed

    def _finds_dual_stack_by_ipv4(self) -> bool:
        try:
            with (
                socket.create_server(("127.0.0.1", 0)) as listener,
                socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as client,
            ):
                listener.settimeout(self._timeout)
                client.settimeout(self._timeout)
                client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                port = listener.getsockname()[1]
                client.connect(("::ffff:127.0.0.1", port))
                accepted, _ = listener.accept()
                with accepted:
                    pair = query_pair(("127.0.0.1", client.getsockname()[1]), ("127.0.0.1", port))
                    if pair is None:
                        return False
                    return self._lookup(*pair, socket.AF_INET) is not None
        except (OSError, SocketLookupError):
            return False

    def server_owner(self, local: Address, remote: Address) -> int | None:
        """Who answers on ``local``, the server end of the connection from ``remote``:
        the uid of the socket a process accepted, or, until one has (in a listener's
        queue, or held back by ``TCP_DEFER_ACCEPT`` until data arrives: the kernel
        reports such a connection with uid 0 and no inode), the uid of the listening
        socket it waits on, which its owner cannot blank out.

        ``None``: this host has no such connection (it ends on another machine or in
        another network namespace). Raises :class:`SocketLookupError` when the connection
        is here but who answers on it cannot be told; never "unknown" as ``None``."""
        pair = query_pair(local, remote)
        if pair is None:
            return None
        lo, re = pair
        mapped = lo.family == socket.AF_INET and self._mapped_retry_needed()
        families = [lo.family] + ([socket.AF_INET6] if mapped else [])
        for family in families:
            entry = _same_connection(self._request(lo, re, family), lo, re)
            if entry is not None:
                break
        else:
            return None
        if owned(entry.state, entry.uid, entry.inode):
            return entry.uid
        if entry.state in (TCP_TIME_WAIT, TCP_CLOSE):
            raise SocketLookupError(f"the connection to {show_address(local)} is closing")
        # Not accepted yet: asked without a remote end, the kernel's exact lookup finds
        # the listener it queued the connection on, by the rules it used for the SYN.
        anyone = Endpoint(lo.family, bytes(len(lo.packed)), 0, 0)
        for family in families:
            listener = self._request(lo, anyone, family)
            if (
                listener is not None
                and listener.state == TCP_LISTEN
                and (listener.local_port == lo.port)
            ):
                return listener.uid
        raise SocketLookupError(
            f"no listening socket on {show_address(local)} for a connection waiting there"
        )

    def _lookup(self, lo: Endpoint, re: Endpoint, family: int) -> int | None:
        return _owner_from_entry(self._request(lo, re, family), lo, re)

    def _request(self, lo: Endpoint, re: Endpoint, family: int) -> DiagEntry | None:
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
                return self._receive(sock, seq)
            except SocketLookupError:
                raise
            except OSError as exc:
                raise SocketLookupError(exc.errno, f"sock_diag request failed: {exc}") from exc

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
