"""Connection ends as the back ends compare them: parsed once, every spelling of an
address normalised (``::ffff:a.b.c.d`` is IPv4, a link-local IPv6 address carries its
interface), and the kernel's states that mean "nobody owns this"."""

from __future__ import annotations

import socket
from typing import NamedTuple

from aioidentd.protocol import V4_MAPPED_PREFIX, Address

__all__ = [
    "DEAD_STATES",
    "TCP_CLOSE",
    "TCP_LISTEN",
    "TCP_TIME_WAIT",
    "Endpoint",
    "endpoint",
    "normalise_packed",
    "owned",
    "query_pair",
]

# Linux TCP states (include/net/tcp_states.h) in which a matching entry is not a connection
# anyone owns: TIME_WAIT and CLOSE are remnants; LISTEN can turn up because the kernel's exact
# lookup falls back to listeners when no established socket matches.
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_LISTEN = 10
DEAD_STATES = frozenset({TCP_TIME_WAIT, TCP_CLOSE, TCP_LISTEN})


def owned(state: int, uid: int, inode: int) -> bool:
    """Whether a socket table entry names a connection someone holds: the one rule of every
    back end. Live, and not an orphan: uid 0 with inode 0 means that nobody holds the socket
    any more (a TIME_WAIT remnant or an orphan), not root."""
    return state not in DEAD_STATES and not (uid == 0 and inode == 0)


class Endpoint(NamedTuple):
    family: int  # AF_INET or AF_INET6 after v4-mapped normalisation
    packed: bytes  # 4 or 16 bytes, network order
    port: int
    ifindex: int  # IPv6 scope (link-local); 0 when none


def endpoint(addr: Address) -> Endpoint:
    """Parse and normalise one end, so every spelling of an address compares equal.

    Normalising ``::ffff:a.b.c.d`` to IPv4 here means the lookups only need one rule: try the
    plain family first, then the v4-mapped form. inet_pton rather than ipaddress because this runs
    on every query and is several times cheaper.
    """
    host, port = addr[0], addr[1]
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port!r}")
    try:
        return Endpoint(socket.AF_INET, socket.inet_pton(socket.AF_INET, host), port, 0)
    except OSError:
        pass
    name, _, scope = host.partition("%")
    try:
        packed = socket.inet_pton(socket.AF_INET6, name)
    except (OSError, UnicodeError):
        raise ValueError(f"not an IP address: {host!r}") from None
    if packed[:12] == V4_MAPPED_PREFIX:
        return Endpoint(socket.AF_INET, packed[12:], port, 0)
    return Endpoint(socket.AF_INET6, packed, port, _scope_index(scope))


def _scope_index(scope: str) -> int:
    """Interface index for an IPv6 scope, because link-local sockets only match on their link."""
    if not scope:
        return 0
    if scope.isascii() and scope.isdigit():
        return int(scope)
    try:
        return socket.if_nametoindex(scope)
    except OSError:
        return 0


def normalise_packed(packed: bytes) -> bytes:
    """Reduce a 16-byte v4-mapped address to its 4 IPv4 bytes; leave anything else alone."""
    if len(packed) == 16 and packed[:12] == V4_MAPPED_PREFIX:
        return packed[12:]
    return packed


def query_pair(local: Address, remote: Address) -> tuple[Endpoint, Endpoint] | None:
    """Both ends, or None when the 4-tuple cannot name any live connection."""
    lo, re = endpoint(local), endpoint(remote)
    if lo.family != re.family or lo.port == 0 or re.port == 0:
        # Port 0 never appears on a connected socket; letting it through would match listeners.
        return None
    return lo, re
