"""Asking an application's own identd on behalf of the host daemon (``answer = "forward"``).

oidentd's forward relays whatever the target says, without checking the ports, and gives
HIDDEN-USER after a fixed 5 s when the target hangs: later than Ergo waits (1.5 s), and
never the user's own answer. Here:

* only a connection the kernel says the user owns is forwarded (the policy decides that
  before anyone is asked), and the target identd itself must be run by that user (or
  root) when it is on this host: a port another user grabbed cannot answer for them.
  Who runs it is the owner of the socket that accepted our connection or, until one
  has (a listener with ``TCP_DEFER_ACCEPT`` accepts only once data arrives, and the
  kernel shows such a connection with no owner), of the listening socket it waits on;
  a target on this host whose owner cannot be told is refused, never trusted;
* the answer is read by the strict client (one line, bounded, ports must match);
* the whole exchange, connect included, has a deadline well inside the querier's
  patience; a timeout, refusal or bad answer is reported, and the responder sends the
  policy's own answer in time;
* a forward whose port pair is already being forwarded is refused, so a forward that
  reaches this daemon again (itself, or a chain back to it) ends at once;
* with a PROXY header (per forward) the target learns who really asked, so a server that
  matches exact connections (``IdentServer`` with claims and ``trusted_proxies``) answers
  as if asked directly.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Final

from aioidentd._printable import printable
from aioidentd.client import _IdentClientProtocol
from aioidentd.errors import (
    IdentConnectError,
    IdentError,
    IdentPortMismatch,
    SocketLookupError,
)
from aioidentd.lookup import SocketLookup
from aioidentd.policy.settings import ForwardTarget
from aioidentd.protocol import Address, Query, Reply
from aioidentd.proxy_protocol import encode_proxy_header

__all__ = ["Forwarder"]

#: Time kept back from the querier's deadline for our own answer when a forward fails.
MARGIN: Final = 0.05


class Forwarder:
    """Forwards one query at a time per port pair; ``timeout`` bounds each forward."""

    def __init__(self, lookup: SocketLookup | None, timeout: float) -> None:
        self.lookup = lookup
        self.timeout = timeout
        #: Port pairs being forwarded now: a second forward of one of them is a loop.
        self._in_flight: set[tuple[int, int]] = set()

    async def ask(
        self,
        target: ForwardTarget,
        uid: int | None,
        server_port: int,
        client_port: int,
        querier: Address,
        asked_at: Address,
        budget: float,
    ) -> tuple[Reply | None, str | None]:
        """Ask ``target`` about ``server_port, client_port``: ``(reply, None)``, or
        ``(None, why not)``. ``querier`` and ``asked_at`` are the ident connection's ends,
        sent in the PROXY header; ``budget`` is the time left before the querier's
        deadline. Never raises for anything the target does."""
        pair = (server_port, client_port)
        if pair in self._in_flight:
            return None, "this port pair is already being forwarded (a forwarding loop)"
        budget = min(self.timeout, budget - MARGIN)
        if budget <= 0:
            return None, "no time left before the querier's deadline"
        prefix = b""
        if target.proxy != "none":
            try:
                prefix = encode_proxy_header(target.proxy, querier, asked_at)
            except ValueError as exc:
                return None, f"no PROXY header possible: {exc}"
        self._in_flight.add(pair)
        try:
            async with asyncio.timeout(budget):
                return await self._exchange(target, uid, Query(*pair), prefix), None
        except TimeoutError:
            return None, f"no answer within {budget:.2f} s"
        except _Refused as exc:
            return None, str(exc)
        except IdentPortMismatch as exc:
            # Escaped: it is the target's text, and it goes to logs and to explain.
            return None, f"it answered about other ports ({printable(str(exc.reply))})"
        except IdentError as exc:
            return None, str(exc)
        finally:
            self._in_flight.discard(pair)

    async def _exchange(
        self, target: ForwardTarget, uid: int | None, query: Query, prefix: bytes
    ) -> Reply:
        loop = asyncio.get_running_loop()
        address = (target.host, target.port)
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
            except ConnectionRefusedError:
                raise IdentConnectError("refused the connection", address=address) from None
            except OSError as exc:
                raise IdentConnectError(
                    f"cannot connect: {exc.strerror or exc}", address=address
                ) from None
            # Who runs the target is checked before it learns anything.
            await self._check_owner(target, uid, sock.getsockname())
            _, protocol = await loop.create_connection(
                lambda: _IdentClientProtocol(query, address, prefix), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        try:
            return await protocol.answer
        finally:
            protocol.close()
            if protocol.answer.done() and not protocol.answer.cancelled():
                protocol.answer.exception()  # seen: no "never retrieved" warning

    async def _check_owner(self, target: ForwardTarget, uid: int | None, ours: object) -> None:
        """Refuse a target on this host that someone other than the user (or root) runs
        (:meth:`~aioidentd.lookup.NetlinkLookup.server_owner`: the accepted socket's
        owner, or the listener's while nobody accepted it yet)."""
        lookup = self.lookup
        if lookup is None or uid is None or not isinstance(ours, tuple):
            return
        theirs = (target.host, target.port)
        mine = (str(ours[0]), int(ours[1]))
        # A lookup without server_owner (an application's own) only knows connections.
        ask: Callable[[Address, Address], int | None] = getattr(
            lookup, "server_owner", lookup.owner
        )
        try:
            if lookup.blocking:
                loop = asyncio.get_running_loop()
                owner = await loop.run_in_executor(None, ask, theirs, mine)
            else:
                owner = ask(theirs, mine)
        except (SocketLookupError, ValueError) as exc:
            raise _Refused(f"cannot tell who runs it: {exc}") from None
        # None: not a connection of this host's (another machine, another namespace):
        # the administrator pointed there, nothing to compare.
        if owner is not None and owner not in (uid, 0):
            raise _Refused(f"it is run by uid {owner}, not by the user (uid {uid})")


class _Refused(Exception):
    """The target answered nothing we may use (the message says why)."""
