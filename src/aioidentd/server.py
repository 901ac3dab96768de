"""The embeddable asyncio ident server: the application decides every answer.

Design notes (the why):

* One :class:`asyncio.Protocol` per connection and no task per connection: the event loop
  calls us back, which is cheaper than a coroutine parked on ``readline()``.
* One timer per connection. Every pending query's response deadline and the idle deadline
  are plain numbers; the single timer is armed for the earliest of them and, when it
  fires early (because activity pushed a deadline back), it re-arms itself instead of
  being cancelled and re-created on every byte.
* Answers leave in query order, each in one ``write()`` (ngircd and InspIRCd read a
  single segment). A query answered before an earlier one is held until the earlier
  one has been answered.
* The first answer to a query wins; the fallback (``default``, then ``random``, then
  ``HIDDEN-USER``) goes out when no handler answered within ``response_timeout``.
* Closing never risks an RST over an answer in flight: after the last answer we
  half-close (FIN) and keep reading, discarding, until the peer closes or a short
  linger expires.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, cast

from aioidentd.claims import (
    Claim,
    ClaimRegistry,
    ClaimTarget,
    PendingConnection,
    connect_claimed,
)
from aioidentd.listener import Listener, bind_sockets
from aioidentd.protocol import (
    MAX_LINE,
    Address,
    ErrorReply,
    InvalidQuery,
    ReplyStyle,
    UserIdReply,
    check_port,
    check_seconds,
    encode_reply,
    encode_reply_tail,
    encode_user_id,
    error_line,
    parse_query,
    port_pair,
    random_user_id,
)

__all__ = ["Handler", "IdentRequest", "IdentServer"]

logger = logging.getLogger(__name__)

Handler = Callable[["IdentRequest"], Awaitable[None] | None]

#: How long a connection that got its last answer may stay half-closed waiting for the
#: peer's FIN before we close it ourselves.
LINGER: Final = 2.0
#: How long close() waits for connections to flush their last answers before aborting.
CLOSE_GRACE: Final = 1.0


def _check_claim_wait(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"claim_wait must be a number of seconds >= 0, got {value!r}")
    if value != value or value == float("inf"):
        raise ValueError(f"claim_wait must be finite, got {value!r}")


def _address(sockaddr: Any) -> Address:
    """``(host, port)`` of a socket address, dropping IPv6 flow info and scope id."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return str(sockaddr[0]), int(sockaddr[1])
    return (str(sockaddr), 0)


class IdentRequest:
    """One valid query, handed to every registered handler.

    A handler answers with :meth:`reply` or :meth:`error`, now or later, from any
    coroutine on the server's event loop. Only the first answer counts; later calls
    return ``False`` and write nothing.
    """

    __slots__ = ("_answer", "_conn", "client_port", "deadline", "local", "peer", "server_port")

    def __init__(
        self,
        conn: _IdentConnection,
        server_port: int,
        client_port: int,
        deadline: float,
    ) -> None:
        self._conn: _IdentConnection | None = conn
        self._answer: bytes | None = None
        #: The port on this host, as queried (the RFC's "port-on-server").
        self.server_port = server_port
        #: The port on the querying host.
        self.client_port = client_port
        #: ``(host, port)`` of the querier.
        self.peer: Address = conn.peer
        #: ``(host, port)`` of our end of the ident connection; its host is the local
        #: address of the connection being asked about.
        self.local: Address = conn.local
        #: Loop time after which the fallback answer goes out.
        self.deadline = deadline

    @property
    def answered(self) -> bool:
        """True once an answer (a handler's or the fallback) has been decided."""
        return self._answer is not None

    @property
    def server(self) -> IdentServer | None:
        """The server that received the query (None once the connection is gone)."""
        return self._conn.server if self._conn is not None else None

    def reply(self, opsys: str, user_id: str | bytes, charset: str | None = None) -> bool:
        """Answer ``USERID : opsys[,charset] : user_id``.

        Raises :class:`ValueError` for a value that would be invalid on the wire (empty,
        longer than 512 octets, CR/LF/NUL, a colon in opsys, non-ASCII without charset).
        Returns ``False`` if the query already has its answer.
        """
        reply = UserIdReply.from_text(self.server_port, self.client_port, opsys, user_id, charset)
        return self._set(reply)

    def error(self, error: str) -> bool:
        """Answer ``ERROR : error`` (``NO-USER``, ``HIDDEN-USER``, ``INVALID-PORT``,
        ``UNKNOWN-ERROR`` in any case, or an ``X`` token)."""
        return self._set(ErrorReply(self.server_port, self.client_port, error))

    def answer(self, reply: UserIdReply | ErrorReply) -> bool:
        """Answer with a ready-made reply object (its port pair must be this query's).

        For callers that decide with protocol objects, such as the daemon's policy.
        """
        if (reply.server_port, reply.client_port) != (self.server_port, self.client_port):
            raise ValueError(
                f"reply is for {reply.server_port},{reply.client_port}, "
                f"the query was {self.server_port},{self.client_port}"
            )
        return self._set(reply)

    def _set(self, reply: UserIdReply | ErrorReply) -> bool:
        if self._answer is not None or self._conn is None:
            return self._set_line(b"")  # refused, or too late: nothing to write
        return self._set_line(encode_reply(reply, self._conn.server.reply_style))

    def _set_line(self, line: bytes) -> bool:
        """:meth:`_set` with the answer already encoded in the server's reply style."""
        if self._answer is not None:
            return False
        conn = self._conn
        if conn is None:
            self._answer = b""
            return False
        self._answer = line
        conn.answer_ready()
        return True

    def __repr__(self) -> str:
        state = "answered" if self.answered else "pending"
        return (
            f"<IdentRequest {self.server_port},{self.client_port} "
            f"from {self.peer[0]}:{self.peer[1]} {state}>"
        )


class _IdentConnection(asyncio.Protocol):
    """State of one ident connection (see the module notes)."""

    __slots__ = (
        "_buffer",
        "_closing",
        "_eof",
        "_idle_deadline",
        "_in_process",
        "_loop",
        "_lost",
        "_paused",
        "_pending",
        "_timer",
        "_timer_when",
        "_transport",
        "local",
        "peer",
        "server",
    )

    def __init__(self, server: IdentServer) -> None:
        self.server = server
        self._loop = server._loop_or_raise()
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._pending: collections.deque[IdentRequest] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._idle_deadline = 0.0
        self._closing = False  # no more queries will be read
        self._eof = False
        self._paused = False
        self._in_process = False
        #: Resolved when the connection is gone (only for serve_connection()).
        self._lost: asyncio.Future[None] | None = None
        self.peer: Address = ("", 0)
        self.local: Address = ("", 0)

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport subclass: uvloop's
        # TCPTransport is not one, so an isinstance() check would refuse every connection.
        self._transport = cast(asyncio.Transport, transport)
        server = self.server
        if len(server._connections) >= server.max_connections or server._closing:
            logger.warning(
                "%s: connection limit (%d) reached, closing new connection",
                server,
                server.max_connections,
            )
            transport.close()
            self._transport = None
            return
        server._connections.add(self)
        self.peer = _address(transport.get_extra_info("peername"))
        self.local = _address(transport.get_extra_info("sockname"))
        now = self._loop.time()
        self._idle_deadline = now + server.idle_timeout
        # Armed no later than the linger that follows the last answer, so that _finish()
        # finds the timer due first and keeps it: one timer handle per short connection
        # instead of one for the idle deadline, cancelled and replaced for the linger.
        # Firing early costs one callback that re-arms for the idle deadline.
        self._arm(min(self._idle_deadline, now + LINGER))

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # draining after the last answer
        self._idle_deadline = self._loop.time() + self.server.idle_timeout
        self._buffer += data
        self._process()

    def eof_received(self) -> bool:
        self._eof = True
        if not self._closing and self._buffer.strip(b" \t\r"):
            # A last query without its end of line: answer it like any other.
            self._buffer += b"\n"
            self._process()
        if self._pending:
            # Half-closed with queries in flight: answer them, then close.
            self._closing = True
            return True
        self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        transport, self._transport = self._transport, None
        if transport is None:
            return
        self.server._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for request in self._pending:
            request._conn = None
        self._pending.clear()
        self._buffer = b""

    # -- queries ------------------------------------------------------------------------

    def _process(self) -> None:
        """Parse and dispatch complete lines while the pending-query limit allows."""
        server = self.server
        buffer = self._buffer
        multiple = server.multiple
        self._in_process = True
        while True:
            if len(self._pending) >= server.max_pending:
                if not self._paused and self._transport is not None:
                    self._transport.pause_reading()
                    self._paused = True
                break
            end = buffer.find(b"\n")
            if end > MAX_LINE or (end < 0 and len(buffer) > MAX_LINE):
                self._overlong()
                return
            if end < 0:
                break
            line = buffer[:end]
            buffer = buffer[end + 1 :]
            if not multiple:
                # One query per connection: whatever follows is never read.
                self._closing = True
                buffer = b""
            try:
                query = parse_query(line)
            except InvalidQuery as exc:
                logger.debug("%s: invalid query from %s: %s", server, self.peer, exc)
                self._query_done(encode_reply(exc.reply, server.reply_style))
            else:
                self._dispatch(query.server_port, query.client_port)
            if self._closing or self._transport is None:
                break
        self._buffer = buffer
        self._in_process = False
        if self._paused and len(self._pending) < server.max_pending and not self._closing:
            self._paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    def _dispatch(self, server_port: int, client_port: int) -> None:
        server = self.server
        request = IdentRequest(
            self, server_port, client_port, self._loop.time() + server.response_timeout
        )
        self._pending.append(request)
        claims = server._claims
        if claims and claims.intercept(request, self._handle):
            return  # answered by a claim, or held by the bounded wait
        self._handle(request)

    def _handle(self, request: IdentRequest) -> None:
        """No claim answered: the handlers, then the fallback."""
        server = self.server
        server_port, client_port = request.server_port, request.client_port
        handlers = server._handlers
        if not handlers:
            # Nobody can answer: do not make the client wait for the deadline.
            request._set_line(server._fallback_line(server_port, client_port))
            return
        for handler in handlers:
            try:
                result = handler(request)
            except Exception:
                logger.exception("%s: handler %r failed on %r", server, handler, request)
                continue
            if result is not None:
                server._spawn(result, request)
        if not request.answered and self._transport is not None:
            self._arm(request.deadline)

    def _query_done(self, line: bytes) -> None:
        """Queue an already-decided answer (an INVALID-PORT line) in its place."""
        request = IdentRequest.__new__(IdentRequest)
        request._conn = None
        request._answer = line
        self._pending.append(request)
        self.answer_ready()

    def answer_ready(self) -> None:
        """Write every answer at the head of the queue that is decided, in order."""
        transport = self._transport
        pending = self._pending
        if transport is None:
            return
        out: list[bytes] = []
        while pending and pending[0]._answer is not None:
            request = pending.popleft()
            request._conn = None
            out.append(request._answer)  # type: ignore[arg-type]
        if not out:
            return
        if len(out) == 1:
            transport.write(out[0])
        else:
            transport.writelines(out)
        self._idle_deadline = self._loop.time() + self.server.idle_timeout
        if pending:
            return
        if self._closing or self._eof:
            self._finish()
        elif self._paused and not self._in_process:
            self._process()

    def _overlong(self) -> None:
        """A line over MAX_LINE octets: answer INVALID-PORT and close, reading no more."""
        logger.info("%s: line over %d octets from %s", self.server, MAX_LINE, self.peer)
        self._buffer = b""
        self._in_process = False
        self._closing = True
        self._query_done(error_line(0, 0, "INVALID-PORT", self.server.reply_style))

    def _finish(self) -> None:
        """All answers written: half-close, drain the peer, close on its FIN or linger."""
        self._closing = True
        transport = self._transport
        if transport is None:
            return
        if self._eof or not transport.can_write_eof():
            transport.close()
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        try:
            transport.write_eof()
        except OSError as exc:
            # The peer read its answer and reset the connection before we half-closed
            # (ENOTCONN): nothing is left to drain. Never let this reach the handler
            # that called reply()/error().
            logger.debug("%s: half-close failed for %s: %s", self.server, self.peer, exc)
            transport.close()
            return
        self._idle_deadline = self._loop.time() + min(LINGER, self.server.idle_timeout)
        self._arm(self._idle_deadline)

    # -- the one timer ------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_when <= when:
                return  # fires first and re-arms for the rest
            timer.cancel()
        self._timer_when = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        now = self._loop.time()
        server = self.server
        # A copy: each answer may pop requests off the head of the queue (answer_ready).
        for request in list(self._pending):
            if request._answer is None and request.deadline <= now:
                request._set_line(server._fallback_line(request.server_port, request.client_port))
                if self._transport is None:
                    return
        if self._transport is None:
            return
        waiting = [r.deadline for r in self._pending if r._answer is None]
        if waiting:
            self._arm(min(waiting))
            return
        if now >= self._idle_deadline:
            if self._closing:
                logger.debug("%s: linger over for %s", server, self.peer)
            else:
                logger.debug("%s: idle timeout for %s", server, self.peer)
            self._transport.close()
            return
        self._arm(self._idle_deadline)

    def shutdown(self) -> None:
        """Answer every waiting query with the fallback, then close."""
        server = self.server
        for request in list(self._pending):
            if request._answer is None:
                request._set_line(server._fallback_line(request.server_port, request.client_port))
        if self._transport is not None:
            self._closing = True
            self._transport.close()


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

    ``host`` may be one address, a list, or ``None`` for every interface (IPv4 and IPv6).
    ``response_timeout`` defaults to 1 s because the IRC servers that ask give up after
    1.5-10 s (Ergo 1.5, InspIRCd and Solanum 5, ngircd 4 in practice): a fallback sent at
    1 s still reaches the most impatient of them. ``claim_wait`` (0.5 s) leaves the
    handlers the other half of that second.
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
    ) -> None:
        try:
            check_port("port", port, 0)
            check_seconds("idle_timeout", idle_timeout)
            check_seconds("response_timeout", response_timeout)
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
        self.host = host
        self.port = port
        self.multiple = bool(multiple)
        self.idle_timeout = float(idle_timeout)
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
        self._listeners: list[Listener] = []
        self._connections: set[_IdentConnection] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closing = False
        self._closed: asyncio.Event | None = None
        #: (default, reply_style, the default answer's line after its port pair)
        self._default_tail: tuple[str, ReplyStyle, bytes] | None = None

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        where = ", ".join(f"{a[0]}:{a[1]}" for a in self.addresses) or "not listening"
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
        sock, _claim = await connect_claimed(
            self,
            host,
            port,
            user_id=user_id,
            opsys=opsys,
            charset=charset,
            error=error,
            family=family,
            local_addr=local_addr,
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
        sock, claim = await connect_claimed(
            self,
            host,
            port,
            user_id=user_id,
            opsys=opsys,
            charset=charset,
            error=error,
            family=family,
            local_addr=local_addr,
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

    async def start(self) -> None:
        """Bind and listen. Raises :class:`OSError` (nothing left listening) on failure."""
        if self._listeners:
            raise RuntimeError("server already started")
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._closed = asyncio.Event()

        def factory() -> _IdentConnection:
            return _IdentConnection(self)

        socks: list[socket.socket]
        if self._sock is None:
            try:
                socks = bind_sockets(self.host, self.port, backlog=self.backlog)
            except BaseException:
                self._closed.set()
                raise
        elif isinstance(self._sock, socket.socket):
            socks = [self._sock]
        else:
            socks = list(self._sock)
        name = str(self.name or "aioidentd")
        self._listeners = [Listener(self._loop, sock, factory, name) for sock in socks]
        for listener in self._listeners:
            listener.start()
        logger.info("%s: listening", self)

    async def close(self) -> None:
        """Stop listening, answer every waiting query with its fallback, close every
        connection and wait until nothing (socket, task, timer) is left."""
        if self._closing:
            if self._closed is not None:
                await self._closed.wait()
            return
        self._closing = True
        for listener in self._listeners:
            listener.close()
        for listener in self._listeners:
            await listener.wait_closed()
        self._claims.close()
        for conn in list(self._connections):
            conn.shutdown()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # Give closing transports a moment to flush the fallback answers; a peer that does
        # not read must not hold close() forever.
        loop = self._loop_or_raise()
        grace = loop.time() + CLOSE_GRACE
        while self._connections and loop.time() < grace:
            await asyncio.sleep(0.005)
        for conn in list(self._connections):
            if conn._transport is not None:
                conn._transport.abort()
        # connection_lost() follows an abort on the next loop iterations; do not spin
        # forever on an event loop that fails to deliver it.
        grace = loop.time() + CLOSE_GRACE
        while self._connections and loop.time() < grace:
            await asyncio.sleep(0.001)
        if self._connections:
            logger.warning(
                "%s: %d connections never reported closing", self, len(self._connections)
            )
            self._connections.clear()
        self._listeners = []
        if self._closed is not None:
            self._closed.set()
        logger.info("%s: closed", self)

    async def serve_connection(self, sock: socket.socket) -> None:
        """Serve one connection accepted elsewhere (inetd mode, systemd ``Accept=yes``)
        until it closes. Needs no listening socket and no :meth:`start`."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._closed = asyncio.Event()
        lost = self._loop.create_future()

        def factory() -> _IdentConnection:
            conn = _IdentConnection(self)
            conn._lost = lost
            return conn

        sock.setblocking(False)
        await self._loop.connect_accepted_socket(factory, sock)
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
        return len(self._connections)

    # -- answers ------------------------------------------------------------------------

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

    def _spawn(self, awaitable: Awaitable[None], request: IdentRequest) -> None:
        try:
            task = asyncio.ensure_future(awaitable)
        except TypeError:
            logger.error("%s: handler returned a non-awaitable %r", self, awaitable)
            return
        self._tasks.add(task)

        def done(fut: asyncio.Future[Any]) -> None:
            self._tasks.discard(fut)
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None:
                logger.error("%s: async handler failed on %r", self, request, exc_info=exc)

        task.add_done_callback(done)
