"""Listening sockets and the accept loop under the servers (:mod:`aioidentd.driver`).

Why not ``loop.create_server``: on CPython 3.11 its accept loop does not stop at EMFILE;
it goes on calling ``accept()`` for the whole backlog, logging a traceback and scheduling
a retry timer for every failed call (a thousand per wake-up with a backlog of 1024), which
saturates the loop exactly when the server is short of resources. It also makes a
transport and a task per connection. Here an accepted socket goes straight to
``on_accept`` (the driver), and a resource error pauses accepting once, with one log line.

Binding is also ours so that every caller (the embedded server, the daemon's
``SO_REUSEPORT`` workers, sockets inherited from systemd) shares one code path, and so
that ``host=None, port=0`` gives the IPv4 and IPv6 sockets the same ephemeral port.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

from aioidentd._ratelimit import RateLimitedLog

__all__ = ["Listener", "OnAccept", "bind_sockets", "tune"]

logger = logging.getLogger(__name__)

#: Accepts per readiness event: enough to drain a burst, small enough to stay fair to the
#: connections already open.
ACCEPT_BATCH: Final = 64
#: How long accepting pauses after the process or system ran out of descriptors/memory.
RESOURCE_RETRY_DELAY: Final = 0.2
_RESOURCE_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: ``on_accept(sock, addr)``: serve a connection just accepted (the driver's ``accept``).
OnAccept = Callable[[socket.socket, Any], None]


#: How many ports port 0 tries on several addresses before it gives up (see bind_sockets).
PORT_ZERO_TRIES = 8


def bind_sockets(
    host: str | Sequence[str] | None,
    port: int,
    *,
    backlog: int = 1024,
    reuse_port: bool = False,
) -> list[socket.socket]:
    """Bind and listen on every address of ``host`` (``None``: all interfaces, IPv4 and
    IPv6). Raises :class:`OSError` with nothing left open when any bind fails."""
    hosts: Sequence[str | None]
    if host is None:
        hosts = [None]
    elif isinstance(host, str):
        hosts = [host]
    else:
        hosts = list(host)
        if not hosts:
            raise ValueError("no address to listen on")
    infos: list[tuple[socket.AddressFamily, tuple[Any, ...]]] = []
    for name in hosts:
        try:
            found = socket.getaddrinfo(
                name, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
            )
        except socket.gaierror as exc:
            raise OSError(exc.errno, f"cannot listen on {name!r}: {exc.strerror}") from None
        for info in found:
            entry = (info[0], info[4])
            if entry[0] in (socket.AF_INET, socket.AF_INET6) and entry not in infos:
                infos.append(entry)
    # Port 0 with several addresses: the first bind picks the port, the others take the
    # same number, which another program may hold on one of them; then all are tried
    # again on a new port (a few times), rather than failing a start that asked for any.
    for _ in range(PORT_ZERO_TRIES):
        try:
            return _bind_all(infos, port, backlog, reuse_port)
        except _TakenElsewhere as exc:
            taken = exc.error
    raise taken


class _TakenElsewhere(Exception):
    """A port chosen for the first address is in use on a later one."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _bind_all(
    infos: list[tuple[socket.AddressFamily, tuple[Any, ...]]],
    port: int,
    backlog: int,
    reuse_port: bool,
) -> list[socket.socket]:
    socks: list[socket.socket] = []
    chosen_port = port
    try:
        for family, sockaddr in infos:
            # IPPROTO_TCP, not 0: the socket says it is TCP (the driver sets TCP_NODELAY
            # itself on accepted sockets that do not; see Driver.accept).
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # Separate IPv4 and IPv6 sockets, as asyncio does; "::" alone would also
                # take IPv4 as v4-mapped addresses and clash with "0.0.0.0".
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            address = (sockaddr[0], chosen_port, *sockaddr[2:])
            try:
                sock.bind(address)
            except OSError as exc:
                error = OSError(
                    exc.errno, f"cannot bind {sockaddr[0]} port {chosen_port}: {exc.strerror}"
                )
                if port == 0 and chosen_port != 0 and exc.errno == errno.EADDRINUSE:
                    raise _TakenElsewhere(error) from None
                raise error from None
            if chosen_port == 0:
                chosen_port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def tune(sock: socket.socket, send_buffer: int | None = None) -> None:
    """Options every accepted socket inherits from its listening socket, set once here
    instead of once per connection: TCP_NODELAY (answers written in several batches must
    not wait for the peer's delayed ACK) and, when given, a fixed send buffer (which also
    turns off the kernel's send-buffer autotuning: what a peer that never reads can park
    in the kernel stays bounded)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)


class Listener:
    """Accepts connections on one listening socket and hands each to ``on_accept``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_accept: OnAccept,
        name: str = "",
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = loop
        self._on_accept = on_accept
        self._name = name
        self._retry: asyncio.TimerHandle | None = None
        self._log = RateLimitedLog(logger, call_later=loop.call_later)
        self._closed = False

    def start(self) -> None:
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        sock = self.sock
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self._log.log(
                        "resources",
                        logging.WARNING,
                        "pauses for lack of resources",
                        "%s: cannot accept (%s); pausing accepts for %.1f s",
                        self._name,
                        exc.strerror,
                        RESOURCE_RETRY_DELAY,
                    )
                    self._loop.remove_reader(sock.fileno())
                    self._retry = self._loop.call_later(RESOURCE_RETRY_DELAY, self._resume)
                    return
                self._log.log(
                    "failed",
                    logging.ERROR,
                    "failed accepts",
                    "%s: accept failed: %s",
                    self._name,
                    exc,
                )
                return
            self._hand(conn, addr)

    def _hand(self, conn: socket.socket, addr: Any) -> None:
        try:
            self._on_accept(conn, addr)
        except Exception:
            self._log.log(
                "serve",
                logging.ERROR,
                "connections that could not be served",
                "%s: cannot serve a connection",
                self._name,
                exc_info=True,
            )
            conn.close()

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self, drain: bool = False) -> None:
        """Stop accepting and close the listening socket (open connections stay).

        With ``drain``, first accept every connection waiting in the accept queue: their
        clients have connected and may have sent a query already, and closing the
        listening socket over them would reset them (the kernel sends RST) with the
        query unanswered.
        """
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._loop.remove_reader(self.sock.fileno())
        if drain:
            sock = self.sock
            while True:  # ends at an empty queue; the backlog bounds it
                try:
                    conn, addr = sock.accept()
                except OSError:
                    break  # empty (EAGAIN), or out of descriptors: nothing more to save
                self._hand(conn, addr)
        self.sock.close()
        self._log.close()
