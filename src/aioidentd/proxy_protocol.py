"""HAProxy's PROXY protocol (versions 1 and 2), without any I/O.

Why an identd needs it: RFC 1413 names the connection asked about by the querier's own
address, so an identd that answers exact connections (claims) must know who really
asked. When the host daemon forwards a query to an application's identd, the query
arrives from the daemon; the header written before it carries the real querier and the
address the query arrived at, so the application's server can match its claims as if it
had been asked directly.

Only the part an identd needs is read: TCP over IPv4 or IPv6 with the PROXY command.
``LOCAL`` (v2), ``UNKNOWN`` (v1) and address families other than TCP say "use the
connection's own addresses", as the specification asks of receivers. TLVs are skipped.
Everything is bounded: a v1 line is at most 107 octets, a v2 header at most
:data:`MAX_V2` octets, so a connection in this state holds a few hundred octets at most.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

from aioidentd.errors import AioidentdError
from aioidentd.protocol import Address, ip_of

__all__ = [
    "MAX_V1",
    "MAX_V2",
    "SIGNATURE_V1",
    "SIGNATURE_V2",
    "InvalidProxyHeader",
    "ProxyHeader",
    "ProxyVersion",
    "encode_proxy_header",
    "parse_proxy_header",
]

ProxyVersion = Literal["v1", "v2"]

#: A v1 header starts with these octets and ends with CR LF within :data:`MAX_V1`.
SIGNATURE_V1: Final = b"PROXY "
#: The 12-octet signature of a v2 header (it cannot start an ident query or an HTTP line).
SIGNATURE_V2: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest v1 line the specification allows, CR LF included.
MAX_V1: Final = 107
#: The longest v2 header read: 16 octets of fixed header plus addresses and TLVs. The
#: specification allows 65,535 octets of TLVs; an identd's forwarder sends none, so more
#: than this is refused rather than buffered.
MAX_V2: Final = 16 + 512

_V2_FIXED: Final = struct.Struct("!12sBBH")
_FAMILY_TCP4: Final = 0x11
_FAMILY_TCP6: Final = 0x21
_COMMAND_LOCAL: Final = 0x20
_COMMAND_PROXY: Final = 0x21


class InvalidProxyHeader(AioidentdError, ValueError):
    """Octets that start like a PROXY header but are not a valid one."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header. ``length`` octets of the input were the header (0: there was
    none, the input is a plain query). ``source`` (the real client, here the querier)
    and ``destination`` (the address it connected to) are None when the header says to
    use the connection's own addresses."""

    length: int
    source: Address | None = None
    destination: Address | None = None
    version: ProxyVersion | None = None


#: What :func:`parse_proxy_header` returns for input that is not a PROXY header.
NO_HEADER: Final = ProxyHeader(0)


def _could_start(data: bytes, signature: bytes) -> bool:
    size = min(len(data), len(signature))
    return data[:size] == signature[:size]


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None while more octets are needed.

    Returns :data:`NO_HEADER` (``length == 0``) when ``data`` cannot be the start of a
    header, so that a trusted peer may also send plain queries. Raises
    :class:`InvalidProxyHeader` for a malformed or over-long one.
    """
    if not data:
        return None
    if _could_start(data, SIGNATURE_V2):
        return _parse_v2(data) if len(data) >= _V2_FIXED.size else None
    if _could_start(data, SIGNATURE_V1):
        return _parse_v1(data) if len(data) >= len(SIGNATURE_V1) else None
    return NO_HEADER


def _port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text[:1] == b"0") or len(text) > 5:
        raise InvalidProxyHeader(f"invalid port {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise InvalidProxyHeader(f"port {port} out of range")
    return port


def _host(text: bytes, version: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidProxyHeader(f"invalid address {text[:46]!r}") from None
    if not isinstance(address, version):
        raise InvalidProxyHeader(f"address {address} does not match the protocol")
    return str(address)


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(data) >= MAX_V1:
            raise InvalidProxyHeader(f"PROXY v1 line longer than {MAX_V1} octets")
        return None
    fields = data[:end].split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return ProxyHeader(end + 2, version="v1")
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise InvalidProxyHeader(f"malformed PROXY v1 line {data[:end][:MAX_V1]!r}")
    kind = ipaddress.IPv4Address if fields[1] == b"TCP4" else ipaddress.IPv6Address
    source = (_host(fields[2], kind), _port(fields[4]))
    destination = (_host(fields[3], kind), _port(fields[5]))
    return ProxyHeader(end + 2, source, destination, "v1")


def _parse_v2(data: bytes) -> ProxyHeader | None:
    signature, command, family, length = _V2_FIXED.unpack_from(data)
    if signature != SIGNATURE_V2:
        raise InvalidProxyHeader("bad PROXY v2 signature")
    if command >> 4 != 2:
        raise InvalidProxyHeader(f"PROXY protocol version {command >> 4} is not 2")
    if command not in (_COMMAND_LOCAL, _COMMAND_PROXY):
        raise InvalidProxyHeader(f"unknown PROXY v2 command {command & 0x0F}")
    total = _V2_FIXED.size + length
    if total > MAX_V2:
        raise InvalidProxyHeader(f"PROXY v2 header of {total} octets (at most {MAX_V2} read)")
    if len(data) < total:
        return None
    body = data[_V2_FIXED.size : total]
    if command == _COMMAND_LOCAL:
        return ProxyHeader(total, version="v2")
    kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
    if family == _FAMILY_TCP4:
        size, kind = 4, ipaddress.IPv4Address
    elif family == _FAMILY_TCP6:
        size, kind = 16, ipaddress.IPv6Address
    else:
        # UNSPEC, UDP or UNIX: nothing an identd can use; the connection's own addresses.
        return ProxyHeader(total, version="v2")
    if length < 2 * size + 4:
        raise InvalidProxyHeader(f"PROXY v2 address block of {length} octets is too short")
    src, dst = kind(body[:size]), kind(body[size : 2 * size])
    sport, dport = struct.unpack_from("!HH", body, 2 * size)
    return ProxyHeader(total, (str(src), sport), (str(dst), dport), "v2")


def encode_proxy_header(version: ProxyVersion, source: Address, destination: Address) -> bytes:
    """The header saying that ``source`` connected to ``destination`` over TCP.

    Both must be IP addresses of one family (a v4-mapped IPv6 address counts as IPv4).
    Raises ValueError otherwise.
    """
    src = ip_of(source[0])
    dst = ip_of(destination[0])
    if src.version != dst.version:
        raise ValueError(f"{src} and {dst} are not of one address family")
    sport, dport = int(source[1]), int(destination[1])
    for port in (sport, dport):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
    if version == "v1":
        proto = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode("ascii")
    if version != "v2":
        raise ValueError(f"unknown PROXY protocol version {version!r}")
    family = _FAMILY_TCP4 if src.version == 4 else _FAMILY_TCP6
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    return _V2_FIXED.pack(SIGNATURE_V2, _COMMAND_PROXY, family, len(body)) + body
