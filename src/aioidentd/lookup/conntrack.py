"""Which inner connection a NAT gateway translated: the kernel's connection tracking.

On a masquerading router, an outside server asks the gateway about the gateway's end of
a connection that really belongs to a machine inside. Connection tracking knows the
translation: the entry's *reply* tuple is what the outside sees (server -> gateway's
outer address and port), its *original* tuple is the inner machine's view (inner host
and port -> server). One exact ``IPCTNL_MSG_CT_GET`` request by the reply tuple finds it,
whatever the size of the table (oidentd dumps the whole table for every query).

Where netlink is refused, ``/proc/net/nf_conntrack`` is scanned instead (O(table size),
off the event loop). Both need ``CAP_NET_ADMIN`` / root: the daemon runs this in a small
helper process forked before it drops privileges (:mod:`aioidentd.daemon.nat`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from typing import BinaryIO, Final, NamedTuple

from aioidentd.errors import SocketLookupError
from aioidentd.protocol import Address, ip_of

__all__ = [
    "ConntrackLookup",
    "Translation",
    "encode_get_request",
    "parse_conntrack_reply",
    "scan_nf_conntrack",
]

NETLINK_NETFILTER: Final = 12
_NFNL_SUBSYS_CTNETLINK: Final = 1
_IPCTNL_MSG_CT_NEW: Final = 0
_IPCTNL_MSG_CT_GET: Final = 1
_NLMSG_ERROR: Final = 2
_NLM_F_REQUEST: Final = 0x01
_NLA_F_NESTED: Final = 0x8000
_NLA_TYPE_MASK: Final = 0x3FFF
_CTA_TUPLE_ORIG: Final = 1
_CTA_TUPLE_REPLY: Final = 2
_CTA_TUPLE_IP: Final = 1
_CTA_TUPLE_PROTO: Final = 2
_CTA_IP_V4_SRC, _CTA_IP_V4_DST, _CTA_IP_V6_SRC, _CTA_IP_V6_DST = 1, 2, 3, 4
_CTA_PROTO_NUM, _CTA_PROTO_SRC_PORT, _CTA_PROTO_DST_PORT = 1, 2, 3
_NLMSGHDR: Final = struct.Struct("=IHHII")
_NFGENMSG: Final = struct.Struct("=BBH")
_NLATTR: Final = struct.Struct("=HH")


class Translation(NamedTuple):
    """The inner view of a translated connection: the inner machine's end
    (``inner``) and the outside server as the inner machine addressed it (``server``)."""

    inner: Address
    server: Address


def _attr(kind: int, payload: bytes) -> bytes:
    header = _NLATTR.pack(_NLATTR.size + len(payload), kind)
    padding = b"\0" * (-len(payload) % 4)
    return header + payload + padding


def encode_get_request(outer: Address, server: Address, seq: int) -> tuple[int, bytes]:
    """``(address family, message)``: the GET of the entry whose *reply* tuple is
    ``server`` -> ``outer`` (what the outside sees of the connection)."""
    src, dst = ip_of(server[0]), ip_of(outer[0])
    if src.version != dst.version:
        raise ValueError(f"{src} and {dst} are not of one address family")
    if src.version == 4:
        family, kinds = socket.AF_INET, (_CTA_IP_V4_SRC, _CTA_IP_V4_DST)
    else:
        family, kinds = socket.AF_INET6, (_CTA_IP_V6_SRC, _CTA_IP_V6_DST)
    ips = _attr(kinds[0], src.packed) + _attr(kinds[1], dst.packed)
    proto = (
        _attr(_CTA_PROTO_NUM, bytes([socket.IPPROTO_TCP]))
        + _attr(_CTA_PROTO_SRC_PORT, struct.pack("!H", server[1]))
        + _attr(_CTA_PROTO_DST_PORT, struct.pack("!H", outer[1]))
    )
    tuple_ = _attr(_CTA_TUPLE_IP | _NLA_F_NESTED, ips) + _attr(
        _CTA_TUPLE_PROTO | _NLA_F_NESTED, proto
    )
    body = _NFGENMSG.pack(family, 0, 0) + _attr(_CTA_TUPLE_REPLY | _NLA_F_NESTED, tuple_)
    kind = (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_GET
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, _NLM_F_REQUEST, seq, 0)
    return family, header + body


def _attrs(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size or offset + length > len(data):
            raise SocketLookupError("malformed conntrack attribute")
        found.setdefault(kind & _NLA_TYPE_MASK, data[offset + _NLATTR.size : offset + length])
        offset += (length + 3) & ~3
    return found


def _tuple(data: bytes) -> tuple[Address, Address]:
    parts = _attrs(data)
    ips = _attrs(parts.get(_CTA_TUPLE_IP, b""))
    proto = _attrs(parts.get(_CTA_TUPLE_PROTO, b""))
    if _CTA_IP_V4_SRC in ips:
        src = str(ipaddress.IPv4Address(ips[_CTA_IP_V4_SRC]))
        dst = str(ipaddress.IPv4Address(ips[_CTA_IP_V4_DST]))
    elif _CTA_IP_V6_SRC in ips:
        src = str(ipaddress.IPv6Address(ips[_CTA_IP_V6_SRC]))
        dst = str(ipaddress.IPv6Address(ips[_CTA_IP_V6_DST]))
    else:
        raise SocketLookupError("conntrack tuple without addresses")
    try:
        (sport,) = struct.unpack("!H", proto[_CTA_PROTO_SRC_PORT])
        (dport,) = struct.unpack("!H", proto[_CTA_PROTO_DST_PORT])
    except (KeyError, struct.error):
        raise SocketLookupError("conntrack tuple without ports") from None
    return (src, sport), (dst, dport)


def parse_conntrack_reply(data: bytes, seq: int) -> Translation | None:
    """The translation in the kernel's answer to :func:`encode_get_request`; None when
    there is no such entry (ENOENT)."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise SocketLookupError("truncated netlink message")
        body = data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3
        if got_seq != seq:
            continue
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", body)
            if code == 0:
                continue  # an acknowledgement
            if -code == errno.ENOENT:
                return None
            if -code == errno.EPERM:
                raise PermissionError(errno.EPERM, "conntrack needs CAP_NET_ADMIN")
            raise SocketLookupError(f"conntrack: {os.strerror(-code)}")
        if kind == (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_NEW:
            attrs = _attrs(body[_NFGENMSG.size :])
            if _CTA_TUPLE_ORIG not in attrs:
                raise SocketLookupError("conntrack entry without its original tuple")
            inner, server = _tuple(attrs[_CTA_TUPLE_ORIG])
            return Translation(inner, server)
    raise SocketLookupError("no conntrack answer")


def scan_nf_conntrack(text: str, outer: Address, server: Address) -> Translation | None:
    """The same from ``/proc/net/nf_conntrack``'s lines: the TCP entry whose second
    (reply) tuple is ``server`` -> ``outer``."""
    src, dst = str(ip_of(server[0])), str(ip_of(outer[0]))
    want = (f"src={src}", f"dst={dst}", f"sport={server[1]}", f"dport={outer[1]}")
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[2] != "tcp":
            continue
        tuples = [f for f in fields if f.startswith(("src=", "dst=", "sport=", "dport="))]
        if len(tuples) < 8 or tuple(tuples[4:8]) != want:
            continue
        values = [f.split("=", 1)[1] for f in tuples[:4]]
        try:
            return Translation(
                (str(ipaddress.ip_address(values[0])), int(values[2])),
                (str(ipaddress.ip_address(values[1])), int(values[3])),
            )
        except ValueError:
            continue
    return None


class ConntrackLookup:
    """Exact conntrack queries over netlink, or a scan of ``/proc/net/nf_conntrack``
    when netlink is refused. Needs ``CAP_NET_ADMIN``; blocking (a scan can be long)."""

    blocking = True

    def __init__(
        self,
        *,
        timeout: float = 1.0,
        proc: str = "/proc/net/nf_conntrack",
        proc_file: BinaryIO | None = None,
    ) -> None:
        self.proc = proc
        #: ``proc`` opened beforehand (by root, for a process that cannot open it later):
        #: read again from its start for each scan.
        self.proc_file = proc_file
        self._seq = 0
        self._sock: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            sock.settimeout(timeout)
            sock.bind((0, 0))
            self._sock = sock
        except OSError:
            self._sock = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def translation(self, outer: Address, server: Address) -> Translation | None:
        """The inner view of the connection ``outer`` (this host) <-> ``server``; None
        when conntrack has no such TCP entry. Raises SocketLookupError when neither
        netlink nor the /proc table can be read."""
        if self._sock is not None:
            try:
                return self._ask(outer, server)
            except SocketLookupError:
                raise
            except OSError:
                self.close()  # refused (EPERM) or broken: the /proc table from now on
        try:
            if self.proc_file is not None:
                self.proc_file.seek(0)
                text = self.proc_file.read().decode("ascii", errors="replace")
            else:
                with open(self.proc, encoding="ascii", errors="replace") as file:
                    text = file.read()
        except OSError as exc:
            raise SocketLookupError(f"cannot read {self.proc}: {exc.strerror}") from None
        return scan_nf_conntrack(text, outer, server)

    def _ask(self, outer: Address, server: Address) -> Translation | None:
        assert self._sock is not None
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        _family, message = encode_get_request(outer, server, self._seq)
        self._sock.send(message)
        while True:
            data = self._sock.recv(65536)
            try:
                return parse_conntrack_reply(data, self._seq)
            except SocketLookupError as exc:
                if str(exc) == "no conntrack answer":
                    continue  # a late answer to an earlier request
                raise
