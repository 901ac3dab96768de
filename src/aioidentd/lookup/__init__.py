"""Which local user owns a given TCP connection.

An ident server answers one question: "who owns the connection from my port X to your port Y?".
This package hides the operating-system specific ways of answering it behind one tiny protocol,
:class:`SocketLookup` (here, with :func:`default_lookup`), so the embedded server, the daemon
and tests can each plug in what suits them, one back end per module:

* :class:`NetlinkLookup` (:mod:`.netlink`) asks the Linux kernel directly with one
  exact-match ``sock_diag`` request. Its cost does not grow with the number of sockets on the
  host, it needs no privilege (so it keeps working after the daemon drops root) and it is cheap
  enough to call on the event loop.
* :class:`ProcNetLookup` (:mod:`.procnet`) scans ``/proc/net/tcp`` and ``/proc/net/tcp6``. It
  is the fallback for kernels or sandboxes that refuse netlink. It costs O(table size) per
  query, so callers must run it off the event loop (``blocking`` is True).
* :class:`StaticLookup` (:mod:`.static`) is a test double, and also serves applications that
  already know which of their own connections belongs to whom.

Two traps that naive identds fall into are handled by both kernel back ends (the address
rules they share are in :mod:`._endpoints`):

* A TIME_WAIT (or orphaned) socket is reported with uid 0 and inode 0. That is "nobody owns this
  any more", not "root owns this", so it maps to ``None``.
* A dual-stack ``AF_INET6`` socket carries IPv4 connections as ``::ffff:a.b.c.d``. An IPv4 query
  that misses is retried in that form, and v4-mapped input is normalised to plain IPv4 first, so
  both spellings of the same connection give the same answer.

The kernel back ends (and :class:`StaticLookup`) also answer ``server_owner(local, remote)``:
who answers on the server end of a connection, the accepted socket's owner or, until a process
accepted it, the listening socket's (a connection that a ``TCP_DEFER_ACCEPT`` listener holds is
reported with no owner until data arrives). The forwarder asks it of a forward target, which
an attacker's deferred listener must not be able to pass off as nobody's.

No asyncio here on purpose: the caller decides how to schedule a lookup, guided by ``blocking``.
"""

from __future__ import annotations

import logging
import socket
from typing import Protocol

from aioidentd.errors import SocketLookupError
from aioidentd.lookup.netlink import DiagEntry, NetlinkLookup, parse_diag_reply
from aioidentd.lookup.procnet import ProcNetLookup, scan_proc_table
from aioidentd.lookup.static import StaticLookup
from aioidentd.protocol import Address

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
