"""The embeddable asyncio ident server: the application decides every answer.

:class:`IdentServer` is the facade: options, handlers, claims, start and close. What
happens on a connection is elsewhere, each in one room: the bytes and every RFC rule in
the sans-IO :mod:`~aioidentd.server.conn` (all of a connection's state), the sockets in
:mod:`aioidentd.driver` (the only I/O), the listening sockets in :mod:`aioidentd.listener`
and the query a handler sees in :mod:`~aioidentd.server.answers`. This module connects
them: a query goes to a claim (:mod:`aioidentd.claims`), then the handlers, then the
fallback, and its answer back to the connection by slot.

Design notes (the why):

* No transport, no protocol object and no task per connection: the driver reads the
  socket (the first time inside the accept callback: with ``defer_accept`` the query is
  usually there, and a one-query connection is answered and closed without ever being
  registered with the selector) and the connection answers.
* No timer per connection or per query: every deadline (first query, response, idle,
  linger) is a number the connection keeps, on the driver's one deadline wheel.
* Answers leave in query order, each batch in one ``send()`` (ngircd and InspIRCd read a
  single segment); the first answer to a query wins; the fallback (``default``, then
  ``random``, then ``HIDDEN-USER``) goes out when no handler answered within
  ``response_timeout``.
* Closing never risks an RST over an answer in flight: a connection that received more
  than its query half-closes after its answer and reads until the peer's FIN or a short
  linger.
* Hostile clients cost bounded memory and never lock out a querier: a peer that does not
  read its answers stops being read (the driver's write buffer, and a small kernel send
  buffer set on the listening socket), a client that pipelines thousands of queries is
  served a budget at a time, a full house closes the connection silent longest, and log
  lines an outsider can trigger are rate-limited.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Iterable, Sequence
from contextlib import suppress
from typing import Any, Final

from aioidentd._ratelimit import RateLimitedLog
from aioidentd.claims.connect import Answer, connect_claimed
from aioidentd.claims.registry import (
    Claim,
    ClaimRegistry,
    ClaimTarget,
    ConnectionKey,
    PendingConnection,
    Wait,
    original_destination,
)
from aioidentd.driver import KEEP, SHUT_WR, Channel, Driver, closed_future
from aioidentd.listener import Listener, bind_sockets, tune
from aioidentd.protocol import (
    Address,
    ErrorReply,
    ReplyStyle,
    UserIdReply,
    check_port,
    check_seconds,
    encode_reply,
    encode_reply_tail,
    encode_user_id,
    ip_of,
    port_pair,
    random_user_id,
    show_address,
    unmapped,
)
from aioidentd.server.answers import Handler, IdentRequest
from aioidentd.server.conn import (
    LINGER,
    BadProxyHeader,
    Expired,
    IdentConnection,
    Invalid,
    NewQuery,
    Rules,
)
from aioidentd.stats import ServerStats

__all__ = ["CLOSE_GRACE", "LINGER", "SEND_BUFFER", "IdentServer"]

logger = logging.getLogger("aioidentd.server")

#: How long close() waits for connections to flush their last answers before aborting.
CLOSE_GRACE: Final = 1.0
#: The kernel send buffer of every ident connection (set on the listening socket, which
#: its connections inherit; Linux doubles it). Answers are short lines: a peer that reads
#: them never fills it, and one that never reads can park this much in the kernel, not
#: the megabytes that send-buffer autotuning would grant it.
SEND_BUFFER: Final = 16 * 1024


def _check_claim_wait(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"claim_wait must be a number of seconds >= 0, got {value!r}")
    if value != value or value == float("inf"):
        raise ValueError(f"claim_wait must be finite, got {value!r}")


def _networks(
    name: str, items: Iterable[str]
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if isinstance(items, str):
        items = (items,)
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(unmapped(str(item)), strict=True))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return tuple(networks)


def _address(sockaddr: Any) -> Address:
    """``(host, port)`` of a socket address, dropping IPv6 flow info and scope id (an
    IPv4 address is that already, and is kept as it is)."""
    if isinstance(sockaddr, tuple):
        if len(sockaddr) == 2:
            return sockaddr
        if len(sockaddr) > 2:
            return str(sockaddr[0]), int(sockaddr[1])
    return (str(sockaddr), 0)


class IdentServer:
    """An RFC 1413 server whose answers come from claims, then registered handlers.

    Each query is answered, in this order, by:

    1. a **claim** on the exact connection asked about (:meth:`claim`,
       :meth:`open_connection`), at once; if there is none and the application said it is
       connecting to the querier (:meth:`connecting`), the query waits up to
       ``claim_wait`` seconds for that claim;
    2. the **handlers**: ``handler(request)`` is called for every valid query (a plain
       function or an async one); it answers with ``request.reply(opsys, user_id)`` or
       ``request.error(name)``;
    3. the **fallback**, when nothing answered within ``response_timeout`` seconds of the
       query's arrival (at once when no handler is registered): ``USERID:UNIX:<default>``
       if ``default`` is set, else a fresh random id if ``random``, else
       ``ERROR:HIDDEN-USER``.

    Every argument is checked here, so a wrong one fails when the server is made, not at
    its first query. The limits bound what any client can make the server hold: a
    connection, its queries, its handler tasks, its time.

    :param host: where to listen: one address, a list of them, or ``None`` for every
        interface (IPv4 and IPv6). Ignored when ``sock`` is given.
    :param port: the port to listen on. 0 picks a free one (:attr:`addresses` tells
        which): what tests and applications that pass the port on want. 113, where
        clients ask, needs privileges; the embedding guide's "Port 113" shows a
        redirect instead.
    :param multiple: answer many queries per connection (pipelined ones in order), as
        RFC 1413 allows. Off, one answer and the connection closes, as oidentd does: an
        IRC server asks once, and a raw client gets its answer without waiting out
        ``idle_timeout``.
    :param idle_timeout: seconds a connection may stay silent between queries before it
        is closed (RFC 1413 suggests 60-180 s); octets that do not complete a query do
        not count, so a client cannot keep a connection by trickling bytes.
    :param response_timeout: seconds from a query's arrival within which claims and
        handlers must answer, else the fallback goes out. 1 s because the IRC servers
        that ask give up after 1.5-10 s (Ergo 1.5, InspIRCd and Solanum 5, ngircd 4 in
        practice): a fallback sent at 1 s still reaches the most impatient of them.
    :param claim_wait: seconds a query from a host declared by :meth:`connecting` waits
        for the claim being made (never past ``response_timeout``; 0: no wait). 0.5 s
        leaves the handlers the other half of the default second.
    :param default: the fallback's id, sent as ``USERID:UNIX:<default>``; checked now by
        the rules every id the server sends keeps, so nothing invalid reaches the wire.
    :param random: with no ``default``, the fallback is a fresh random id per query
        (8 characters of ``[a-z0-9]``, from :mod:`secrets`): a querier learns nothing,
        and two queries cannot be linked.
    :param name: what the logs and ``repr`` call this server (and the
        :class:`~aioidentd.Controller`'s thread), when an application runs several.
    :param reply_style: ``"compact"`` (``6193,23:USERID:UNIX:stjohns``), or ``"spaced"``
        (``6193 , 23 : USERID : UNIX : stjohns``) for very old clients that split on
        spaces.
    :param handlers: handlers to :meth:`register` at once.
    :param max_connections: connections served at once. A new one beyond it closes the
        connection that has sent no query for the longest (never one whose query is
        being answered), so a full house still answers the next IRC server.
    :param max_pending: queries one connection may have waiting for their answers (and,
        per open connection, handler tasks kept after their query got the fallback, the
        oldest cancelled first). Beyond it, reading that connection pauses until it
        catches up: nothing is lost, and memory stays bounded.
    :param backlog: the accept queue (``listen(2)``) of the sockets the server binds,
        so that a burst of connections waits instead of being refused.
    :param sock: a listening socket, or several, to serve instead of binding ``host``
        and ``port``: one from systemd socket activation, or bound before privileges
        were dropped. The server closes them when it closes.
    :param first_query_timeout: seconds a new connection may stay silent before its
        first query (at most ``idle_timeout``): a connection that never asks holds a
        slot for seconds, not for the whole idle timeout.
    :param defer_accept: Linux's ``TCP_DEFER_ACCEPT``: ``accept()`` completes once the
        query has arrived, so a connection that sends nothing costs the server nothing
        for its first second. Ignored where the option does not exist.
    :param trusted_proxies: addresses or networks (e.g. ``["127.0.0.1"]``) whose
        connections may start with a PROXY protocol header (v1 or v2) naming the real
        querier and the address it asked at, as the host daemon's ``forward_proxy``
        sends; claims are then matched against those, exactly as if the querier had
        asked directly. A header from any other address is an invalid query like any
        other text. Trusting an address trusts every process that can connect from it to
        tell the truth about who asked: on a multi-user host prefer a loopback address
        only the daemon uses.
    :raises ValueError: an argument out of its range or of the wrong type (a port, a
        number of seconds, a count below 1, a ``reply_style``, a ``default`` id that
        cannot be sent, a ``trusted_proxies`` entry that is not an address or network),
        naming the argument.
    :raises TypeError: a ``default`` that is not ``str`` or ``bytes``, or a handler in
        ``handlers`` that is not callable.
    """

    def __init__(
        self,
        host: str | Sequence[str] | None = "127.0.0.1",
        port: int = 113,
        *,
        multiple: bool = False,
        idle_timeout: float = 60.0,
        response_timeout: float = 1.0,
        claim_wait: float = 0.5,
        default: str | None = None,
        random: bool = False,
        name: str | None = None,
        reply_style: ReplyStyle = "compact",
        handlers: Iterable[Handler] = (),
        max_connections: int = 1024,
        max_pending: int = 32,
        backlog: int = 1024,
        sock: socket.socket | Sequence[socket.socket] | None = None,
        first_query_timeout: float = 10.0,
        defer_accept: bool = False,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        try:
            check_port("port", port, 0)
            check_seconds("idle_timeout", idle_timeout)
            check_seconds("response_timeout", response_timeout)
            check_seconds("first_query_timeout", first_query_timeout)
        except TypeError as exc:
            raise ValueError(str(exc)) from None  # this constructor has always said ValueError
        _check_claim_wait(claim_wait)
        for label, count in (
            ("max_connections", max_connections),
            ("max_pending", max_pending),
            ("backlog", backlog),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{label} must be a positive int, got {count!r}")
        if reply_style not in ("compact", "spaced"):
            raise ValueError(f"reply_style must be 'compact' or 'spaced', got {reply_style!r}")
        if default is not None:
            encode_user_id(default)  # raises ValueError when invalid
        self._trusted_proxies = _networks("trusted_proxies", trusted_proxies)
        self.host = host
        self.port = port
        self.multiple = bool(multiple)
        self.idle_timeout = float(idle_timeout)
        self.first_query_timeout = float(first_query_timeout)
        self.defer_accept = bool(defer_accept)
        self.response_timeout = float(response_timeout)
        self.default = default
        self.random = bool(random)
        self.name = name
        self.reply_style: ReplyStyle = reply_style
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.backlog = backlog
        self._sock = sock
        self._claims = ClaimRegistry(float(claim_wait))
        self._handlers: list[Handler] = []
        for handler in handlers:
            self.register(handler)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver: Driver | None = None
        self._rules = self._make_rules()
        self._listeners: list[Listener] = []
        #: Every handler task, and per connection its own (cancelled when it is gone).
        self._tasks: set[asyncio.Future[Any]] = set()
        self._channel_tasks: dict[Channel, dict[asyncio.Future[Any], IdentRequest]] = {}
        #: The connection whose events are being handled: its answers are flushed by the
        #: driver once they all are (one send for a batch of pipelined answers).
        self._dispatching: Channel | None = None
        self._locals: dict[Any, Address] = {}
        self._log = RateLimitedLog(logger)
        #: What the server did since it was created (see :class:`~aioidentd.stats.ServerStats`).
        self.stats = ServerStats(lambda: len(self._driver) if self._driver is not None else 0)
        self._closing = False
        self._closed: asyncio.Event | None = None
        #: (default, reply_style, the default answer's line after its port pair)
        self._default_tail: tuple[str, ReplyStyle, bytes] | None = None

    def _trusts(self, host: str) -> bool:
        """Whether ``host`` may send a PROXY header (see ``trusted_proxies``)."""
        try:
            address = ip_of(host)
        except ValueError:
            return False
        return any(address in network for network in self._trusted_proxies)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        where = ", ".join(show_address(a) for a in self.addresses) or "not listening"
        return f"<IdentServer{label} {where}>"

    __str__ = __repr__

    # -- handlers -----------------------------------------------------------------------

    def register(self, handler: Handler) -> None:
        """Call ``handler(request)`` for every valid query (once, however often registered)."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        if handler not in self._handlers:
            self._handlers.append(handler)

    def unregister(self, handler: Handler) -> None:
        """Stop calling ``handler``; unregistering an unknown handler does nothing."""
        if handler in self._handlers:
            self._handlers.remove(handler)

    @property
    def handlers(self) -> tuple[Handler, ...]:
        return tuple(self._handlers)

    # -- claims -------------------------------------------------------------------------

    def claim(
        self,
        target: ClaimTarget,
        user_id: str | bytes | None = None,
        *,
        opsys: str = "UNIX",
        charset: str | None = None,
        error: str | None = None,
        remote: tuple[str, int] | None = None,
    ) -> Claim:
        """Answer for one of the application's connections: ``user_id`` (with ``opsys``
        and ``charset``), or ``error`` (``HIDDEN-USER``, ``NO-USER``, an X token) instead.

        ``target`` is a :class:`asyncio.StreamWriter`, a transport, a connected
        :class:`socket.socket` (or a bound one with ``remote=(host, port)``, the address it
        will connect to), or ``((local_host, local_port), (remote_host, remote_port))``.
        Only a query from the remote host about exactly that pair of ports, arriving at
        that local address, gets the answer. A new claim on the same connection replaces
        the old one. The claim ends with :meth:`Claim.release` (or the ``with`` block), or
        when its socket or transport is closed; a claim on one already closed never
        answers. Raises :class:`ValueError` for an invalid answer or address,
        :class:`TypeError` for something that is not a connection. Callable from any
        thread.
        """
        return self._claims.add(
            target, user_id, opsys=opsys, charset=charset, error=error, remote=remote
        )

    @property
    def claims(self) -> tuple[Claim, ...]:
        """The claims that answer now (released and closed ones excluded)."""
        return tuple(self._claims.claims())

    def connecting(self, host: str) -> PendingConnection:
        """Declare a connection to ``host`` that will be claimed once it exists.

        Until the returned object's ``done()`` (or the end of its ``with`` /
        ``async with`` block), a query from ``host`` that matches no claim waits up to
        :attr:`claim_wait` seconds for one before going to the handlers. Queries from any
        other host never wait. An IP address registers at once; a host name is resolved
        by ``async with`` (or ``await pending.resolve()``).
        """
        return PendingConnection(self._claims, host)

    @property
    def claim_wait(self) -> float:
        """How long a query may wait for a claim being made (see :meth:`connecting`)."""
        return self._claims.claim_wait

    @claim_wait.setter
    def claim_wait(self, value: float) -> None:
        _check_claim_wait(value)
        self._claims.claim_wait = float(value)

    async def connect_socket(
        self,
        host: str,
        port: int,
        *,
        user_id: str | bytes | None = None,
        opsys: str = "UNIX",
        charset: str | None = None,
        error: str | None = None,
        family: int = 0,
        local_addr: tuple[str, int] | None = None,
    ) -> socket.socket:
        """A connected, claimed, non-blocking socket, for libraries that take ``sock=``.

        The socket is bound and claimed before its first packet leaves, so the server's
        ident query cannot arrive before the claim. The claim ends when the socket is
        closed (by the library's transport, typically).
        """
        answer = Answer(user_id, opsys, charset, error)
        sock, _claim = await connect_claimed(
            self._claims, host, port, answer, family=family, local_addr=local_addr
        )
        return sock

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        user_id: str | bytes | None = None,
        opsys: str = "UNIX",
        charset: str | None = None,
        error: str | None = None,
        ssl: Any = None,
        family: int = 0,
        local_addr: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """:func:`asyncio.open_connection`, already claimed for ``user_id`` (or ``error``).

        The local port is bound and claimed before the connection's first packet leaves
        (no race with the peer's ident query, which may come before the TLS handshake or
        even before this coroutine resumes). ``ssl`` and the other keyword arguments are
        :func:`asyncio.open_connection`'s (``server_hostname`` defaults to ``host`` with
        TLS). The claim ends when the writer is closed.
        """
        answer = Answer(user_id, opsys, charset, error)
        sock, claim = await connect_claimed(
            self._claims, host, port, answer, family=family, local_addr=local_addr
        )
        if ssl:
            kwargs.setdefault("server_hostname", host)
        try:
            return await asyncio.open_connection(sock=sock, ssl=ssl, **kwargs)
        except BaseException:
            claim.release()
            sock.close()
            raise

    # -- life cycle ---------------------------------------------------------------------

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("server not started")
        return self._loop

    def _now(self) -> float:
        return self._loop_or_raise().time()

    def _make_rules(self) -> Rules:
        return Rules(
            multiple=self.multiple,
            max_pending=self.max_pending,
            idle_timeout=self.idle_timeout,
            first_query_timeout=self.first_query_timeout,
            response_timeout=self.response_timeout,
            linger=LINGER,
            style=self.reply_style,
        )

    def _begin(self) -> Driver:
        """The loop, the driver and the logs, for start() and serve_connection()."""
        loop = asyncio.get_running_loop()
        if self._driver is None or self._loop is not loop:
            self._loop = loop
            self._closed = asyncio.Event()
            self._log = RateLimitedLog(logger, call_later=loop.call_later)
            self._driver = Driver(
                loop,
                self,
                self,
                max_connections=self.max_connections,
                counters=self.stats,
            )
        self._rules = self._make_rules()
        return self._driver

    async def start(self) -> None:
        """Bind and listen. Raises :class:`OSError` (nothing left listening) on failure."""
        if self._listeners:
            raise RuntimeError("server already started")
        self._closing = False
        self._driver = None
        driver = self._begin()
        socks: list[socket.socket]
        if self._sock is None:
            try:
                socks = bind_sockets(self.host, self.port, backlog=self.backlog)
            except BaseException:
                assert self._closed is not None
                self._closed.set()
                raise
        elif isinstance(self._sock, socket.socket):
            socks = [self._sock]
        else:
            socks = list(self._sock)
        name = str(self.name or "aioidentd")
        for sock in socks:
            tune(sock, SEND_BUFFER)
            if self.defer_accept:
                _defer_accept(sock)
        loop = self._loop_or_raise()
        self._listeners = [Listener(loop, sock, driver.accept, name) for sock in socks]
        for listener in self._listeners:
            listener.start()
        logger.info("%s: listening", self)

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        """Stop accepting and close every connection without losing a query already sent,
        then wait until nothing (socket, task, timer) is left.

        Connections still waiting in the listening socket's accept queue are accepted;
        every connection's queries already sent (buffered, or still in the kernel) are
        read and answered: by the handlers if they answer at once, else by the fallback,
        as is every query already waiting for a handler. Each connection is closed once
        nothing it sent is left unread (so the kernel sends FIN, not an RST that would
        destroy the answers). Whatever is not done within ``grace`` seconds (a peer that
        does not read its answers) is aborted. A server never started has nothing to do.
        """
        if self._closing:
            if self._closed is not None:
                await self._closed.wait()
            return
        loop = self._loop
        if loop is None:
            return
        self._closing = True
        for listener in self._listeners:
            listener.close(drain=True)  # the queue's connections are served (see open())
        self._claims.close()
        driver = self._driver
        if driver is not None:
            now = loop.time()
            for channel in list(driver.channels):
                channel.read_now()
                session = channel.session
                if channel.closed or not isinstance(session, IdentConnection):
                    continue
                self._run(channel, session.stop(now))
            deadline = now + grace
            while driver.channels and loop.time() < deadline:
                for channel in list(driver.channels):
                    self._close_when_drained(channel, loop.time())
                if not driver.channels:
                    break
                await asyncio.sleep(0.005)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if driver is not None:
            driver.close_all()
        self._channel_tasks.clear()
        self._listeners = []
        self._log.close()
        if self._closed is not None:
            self._closed.set()
        logger.info("%s: closed", self)

    def _close_when_drained(self, channel: Channel, now: float) -> None:
        """Closing: close a connection once everything its peer sent is answered and the
        kernel holds nothing unread (closing over unread data sends an RST that destroys
        the answers in flight)."""
        session = channel.session
        if not isinstance(session, IdentConnection) or session.end not in (KEEP, SHUT_WR):
            return
        if session.drained() and not channel.buffered and channel.unread() == 0:
            session.close(now)
            channel.update()

    def _run(self, channel: Channel, events: Iterable[Any] | None) -> None:
        """Act on events from outside a driver callback, then flush."""
        if events:
            self.events(channel, events)
        channel.update()

    async def serve_connection(self, sock: socket.socket) -> None:
        """Serve one connection accepted elsewhere (inetd mode, systemd ``Accept=yes``)
        until it closes. Needs no listening socket and no :meth:`start`."""
        driver = self._driver if self._driver is not None else self._begin()
        channel = driver.adopt(sock)
        if channel is None:
            return
        lost = closed_future(channel)
        if lost is not None:
            await lost

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` is called (from elsewhere) or the task is cancelled."""
        if not self._listeners:
            await self.start()
        assert self._closed is not None
        await self._closed.wait()

    async def __aenter__(self) -> IdentServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (empty before :meth:`start` and after :meth:`close`)."""
        return tuple(listener.sock for listener in self._listeners)

    @property
    def addresses(self) -> list[Address]:
        """``(host, port)`` of every listening socket; the port is the real one when 0 was
        asked for."""
        return [_address(s.getsockname()) for s in self.sockets]

    @property
    def connections(self) -> int:
        """The number of open ident connections."""
        return len(self._driver) if self._driver is not None else 0

    # -- the driver's service: connections and their events -----------------------------

    def open(self, channel: Channel, now: float) -> IdentConnection | None:
        """A new connection: its sans-IO state machine."""
        try:
            sockname = channel.sock.getsockname()
        except OSError:
            return None  # reset before we got here: nobody to answer
        peer = _address(channel.peer)
        proxied = bool(self._trusted_proxies) and self._trusts(peer[0])
        # Our addresses are few: one tuple each, shared by their connections.
        local = self._locals.get(sockname)
        if local is None:
            if len(self._locals) >= 64:
                self._locals.clear()
            local = self._locals[sockname] = _address(sockname)
        session = IdentConnection(self._rules, peer, local, now, proxied)
        if self._closing:
            session.stop(now)  # accepted while closing: answer what it sent, then close
        return session

    def closed(self, channel: Channel) -> None:
        tasks = self._channel_tasks.pop(channel, None)
        if tasks:
            # The connection is gone: nobody can receive what its handlers would answer.
            for task in tasks:
                task.cancel()

    def events(self, channel: Channel, events: Iterable[Any]) -> None:
        session = channel.session
        assert isinstance(session, IdentConnection)
        previous, self._dispatching = self._dispatching, channel
        try:
            instant = 0
            for event in events:
                kind = type(event)
                if kind is NewQuery:
                    if self._handlers or self._claims:
                        self._query(channel, session, event)
                    else:
                        # Nobody can answer but the fallback: no request object, no wait.
                        sp, cp = event.server_port, event.client_port
                        session.answer(event.slot, self._fallback_line(sp, cp), event.arrived)
                        instant += 1
                elif kind is Expired:
                    if session.answer(event.slot, self._fallback_line(*event[1:3]), self._now()):
                        self.stats.fallbacks += 1
                        self.stats._observe(self._now() - event.arrived)
                elif kind is Invalid:
                    self._invalid(session, event)
                elif kind is BadProxyHeader:
                    self._log.log(
                        "proxy",
                        logging.INFO,
                        "invalid PROXY headers",
                        "%s: invalid PROXY header from %s: %s",
                        self,
                        show_address(session.peer),
                        event.reason,
                    )
            if instant:
                self.stats._instant_fallbacks(instant)
        finally:
            self._dispatching = previous

    def _invalid(self, session: IdentConnection, event: Invalid) -> None:
        self.stats.invalid_lines += 1
        if event.overlong:
            self._log.log(
                "overlong",
                logging.INFO,
                "over-long lines",
                "%s: %s from %s",
                self,
                event.reason,
                show_address(session.peer),
            )
        else:
            self._log.log(
                "invalid",
                logging.DEBUG,
                "invalid queries",
                "%s: invalid query from %s: %s",
                self,
                show_address(session.peer),
                event.reason,
            )

    def _written(self, channel: Channel) -> None:
        """An answer was handed to the connection: flush it now, unless the driver will
        once the batch being handled is done."""
        if self._dispatching is not channel:
            channel.update()

    # -- claims, handlers, fallback -----------------------------------------------------

    def _query(self, channel: Channel, session: IdentConnection, event: NewQuery) -> None:
        self.stats.queries += 1
        sp, cp, arrived = event.server_port, event.client_port, event.arrived
        request = IdentRequest(
            self, channel, session, event.slot, sp, cp, arrived, arrived + self.response_timeout
        )
        claims = self._claims
        if claims:
            key = ConnectionKey(session.local[0], sp, session.peer[0], cp)
            if session.peer[0].startswith("fe80") or session.local[0].startswith("fe80"):
                # Link-local: the scope (interface) is part of the address.
                with suppress(OSError):
                    key = key._replace(sockname=channel.sock.getsockname(), peername=channel.peer)
            found = claims.match(key, may_wait=not self._closing)
            if found is None and claims.redirectable:
                original = original_destination(channel.sock)
                if original is not None:
                    found = claims.match(
                        key._replace(original=original), may_wait=not self._closing
                    )
            if isinstance(found, Claim):
                self._claimed(request, found)
                return
            if isinstance(found, Wait):
                claims.hold(
                    found,
                    min(claims.claim_wait, request.deadline - arrived),
                    lambda claim: self._claimed(request, claim),
                    lambda: self._handle(request),
                    lambda: request.answered or channel.closed,
                )
                return
        self._handle(request)

    def _claimed(self, request: IdentRequest, claim: Claim) -> None:
        if request._set_line(
            claim.answer_line(request.server_port, request.client_port, self.reply_style)
        ):
            self.stats.claimed += 1

    def _handle(self, request: IdentRequest) -> None:
        """No claim answered: the handlers, then the fallback."""
        handlers = self._handlers
        if not handlers:
            # Nobody can answer: do not make the client wait for the deadline.
            self._give_fallback(request)
            return
        for handler in handlers:
            try:
                result = handler(request)
            except Exception:
                self._handler_failed(handler, request)
                continue
            if result is not None:
                self._spawn(result, request, handler)
        if self._closing and not request.answered:
            # Closing: no query waits; what the handlers did not answer at once gets the
            # fallback now.
            self._give_fallback(request)

    def _give_fallback(self, request: IdentRequest) -> None:
        if request._set_line(self._fallback_line(request.server_port, request.client_port)):
            self.stats.fallbacks += 1

    def _fallback(self, server_port: int, client_port: int) -> UserIdReply | ErrorReply:
        if self.default is not None:
            return UserIdReply.from_text(server_port, client_port, "UNIX", self.default)
        if self.random:
            return UserIdReply(server_port, client_port, "UNIX", random_user_id().encode())
        return ErrorReply(server_port, client_port, "HIDDEN-USER")

    def _fallback_line(self, server_port: int, client_port: int) -> bytes:
        """``encode_reply(self._fallback(...), self.reply_style)``, without building and
        validating a reply object per query when the answer is the fixed ``default``."""
        default, style = self.default, self.reply_style
        if default is None:
            return encode_reply(self._fallback(server_port, client_port), style)
        cached = self._default_tail
        if cached is None or cached[0] != default or cached[1] != style:
            tail = encode_reply_tail(UserIdReply.from_text(0, 0, "UNIX", default), style)
            cached = self._default_tail = (default, style, tail)
        return port_pair(server_port, client_port, style) + cached[2]

    def _handler_failed(self, handler: object, request: IdentRequest, exc: Any = True) -> None:
        self.stats.handler_failures += 1
        # The first failure of each handler with its traceback, then a count per interval:
        # a query that makes a handler raise is something any outsider can send.
        self._log.log(
            ("handler", id(handler)),
            logging.ERROR,
            f"failures of handler {handler!r}",
            "%s: handler %r failed on %r",
            self,
            handler,
            request,
            exc_info=exc,
        )

    def _spawn(self, awaitable: Awaitable[None], request: IdentRequest, handler: object) -> None:
        try:
            task = asyncio.ensure_future(awaitable)
        except TypeError:
            self._log.log(
                ("handler", id(handler)),
                logging.ERROR,
                f"non-awaitable results of handler {handler!r}",
                "%s: handler %r returned a non-awaitable %r",
                self,
                handler,
                awaitable,
            )
            return
        self._tasks.add(task)
        channel = request._channel
        tasks: dict[asyncio.Future[Any], IdentRequest] | None = None
        if not channel.closed:
            # Cancelled when the connection is gone: nobody can receive what it would
            # answer (see the handler contract in the IdentServer docs).
            tasks = self._channel_tasks.get(channel)
            if tasks is None:
                tasks = self._channel_tasks[channel] = {}
            elif len(tasks) >= self.max_pending:
                # A handler that hangs after its query got the fallback must not pile up
                # tasks on a kept-open connection: the oldest such task makes room.
                for old, owner in tasks.items():
                    if owner.answered:
                        old.cancel()  # done at the next loop iteration: no longer counted
                        del tasks[old]
                        self._tasks.discard(old)
                        break
            tasks[task] = request

        def done(fut: asyncio.Future[Any]) -> None:
            self._tasks.discard(fut)
            if tasks is not None:
                tasks.pop(fut, None)
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None:
                self._handler_failed(handler, request, exc)

        task.add_done_callback(done)


def _defer_accept(sock: socket.socket) -> None:
    """Linux's TCP_DEFER_ACCEPT: accept() completes once the client has sent data, so the
    query is usually there when the connection is accepted. A connection that sends
    nothing is accepted after about a second (one SYN-ACK retransmission) and then gets
    the first-query deadline like any other; meanwhile it costs the server nothing."""
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)
