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
* The common case is served at once (``IdentServer._at_once``): a fresh one-query
  connection whose whole query is already readable when it is accepted (``defer_accept``
  makes the kernel wait for it) and is answered synchronously gets its answer and its
  close inside the accept callback: no transport, no selector registration, no timer. It
  halves the server's CPU per connection; anything else becomes a normal connection.
* A connection with nothing to read yet is parked (``IdentServer._park``): a bare socket
  watched by the selector, one timer for every parked connection's first-query deadline,
  and its transport only once it speaks. Silent connections, the stuff of floods and of
  clients that connect early, cost under 1 KiB each instead of 2.
* Hostile clients cost bounded memory and never lock out a querier: a peer that does not
  read its answers stops being read (write backpressure), a full house closes the
  connection silent longest, and log lines an outsider can trigger are rate-limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
import termios
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, cast

from aioidentd._ratelimit import RateLimitedLog
from aioidentd.claims import (
    Answer,
    Claim,
    ClaimRegistry,
    ClaimTarget,
    PendingConnection,
    connect_claimed,
)
from aioidentd.listener import Listener, bind_sockets, nagle_off
from aioidentd.protocol import (
    MAX_LINE,
    WHITESPACE,
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
    ip_of,
    parse_ports,
    port_pair,
    random_user_id,
    show_address,
    unmapped,
)
from aioidentd.proxy_protocol import InvalidProxyHeader, parse_proxy_header
from aioidentd.stats import ServerStats

__all__ = ["Handler", "IdentRequest", "IdentServer"]

logger = logging.getLogger(__name__)

Handler = Callable[["IdentRequest"], Awaitable[None] | None]

#: How long a connection that got its last answer may stay half-closed waiting for the
#: peer's FIN before we close it ourselves.
LINGER: Final = 2.0
#: How long close() waits for connections to flush their last answers before aborting.
CLOSE_GRACE: Final = 1.0
#: How long a deadline that finds unread data waits for the loop to read it.
READ_GRACE: Final = 0.05


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

    __slots__ = (
        "_answer",
        "_conn",
        "arrived",
        "client_port",
        "deadline",
        "local",
        "peer",
        "server_port",
    )

    def __init__(
        self,
        conn: _IdentConnection,
        server_port: int,
        client_port: int,
        arrived: float,
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
        #: Loop time at which the query was read (0.0 for an INVALID-PORT line).
        self.arrived = arrived
        #: Loop time after which the fallback answer goes out.
        self.deadline = deadline

    @classmethod
    def _decided(cls, conn: _IdentConnection, line: bytes) -> IdentRequest:
        """A request whose answer is already decided (the INVALID-PORT line to an invalid
        or over-long line), queued so that it leaves in its place among the answers."""
        request = cls(conn, 0, 0, 0.0, 0.0)
        request._conn = None
        request._answer = line
        return request

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
        conn = self._conn
        if self._answer is not None or conn is None:
            return self._set_line(b"")  # refused, or too late: nothing to write
        stats = conn.server.stats
        if isinstance(reply, UserIdReply):
            stats.answers_userid += 1
        else:
            stats.answers_error += 1
        return self._set_line(encode_reply(reply, conn.server.reply_style))

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
        "_sock",
        "_stopping",
        "_tasks",
        "_timer",
        "_timer_when",
        "_transport",
        "_write_paused",
        "local",
        "peer",
        "server",
    )

    def __init__(self, server: IdentServer) -> None:
        self.server = server
        self._loop = server._loop_or_raise()
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        # A list, not a deque: at most max_pending entries, and an empty list costs a
        # tenth of an empty deque on every idle connection.
        self._pending: list[IdentRequest] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._idle_deadline = 0.0
        self._closing = False  # no more queries will be read
        self._eof = False
        self._paused = False  # reading paused (pending limit or write backpressure)
        self._write_paused = False  # the transport's write buffer is over its high-water mark
        self._in_process = False
        self._stopping = False  # the server is closing: answer what was sent, then close
        #: Handler tasks still running for this connection's queries (None: none yet).
        self._tasks: dict[asyncio.Future[Any], IdentRequest] | None = None
        #: The socket while served at once, before it has a transport (IdentServer._at_once).
        self._sock: socket.socket | None = None
        #: Resolved when the connection is gone (only for serve_connection()).
        self._lost: asyncio.Future[None] | None = None
        self.peer: Address = ("", 0)
        self.local: Address = ("", 0)

    def extra(self, name: str) -> Any:
        """``transport.get_extra_info(name)`` ("socket", "sockname", "peername"), also
        while the connection is served at once and has no transport yet."""
        transport = self._transport
        if transport is not None:
            return transport.get_extra_info(name)
        sock = self._sock
        if sock is None:
            return None
        if name == "socket":
            return sock
        try:
            if name == "sockname":
                return sock.getsockname()
            if name == "peername":
                return sock.getpeername()
        except OSError:
            return None
        return None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport subclass: uvloop's
        # TCPTransport is not one, so an isinstance() check would refuse every connection.
        self._transport = cast(asyncio.Transport, transport)
        server = self.server
        server._setting_up -= 1
        connections = server._connections
        parked = self in connections  # counted when it was parked (IdentServer._park)
        if server._closing:
            # Accepted while closing (the accept queue is drained on close): answer what
            # it has already sent, like every other connection.
            self._stopping = True
        elif parked:
            pass
        elif len(connections) >= server.max_connections and not server._make_room():
            server.stats.connections_refused += 1
            transport.close()
            self._transport = None
            self._drop_tasks()
            return
        if not parked:
            connections[self] = None
            server.stats.connections_accepted += 1
        self.peer = _address(transport.get_extra_info("peername"))
        self.local = _address(transport.get_extra_info("sockname"))
        if server._trusted_proxies and server._trusts(self.peer[0]):
            # A forwarder we trust may first say who really asked (see _ProxiedConnection).
            self.__class__ = _ProxiedConnection
        now = self._loop.time()
        # Until its first query a connection gets the (shorter) first-query deadline: a
        # silent connection holds a slot for seconds, not for the whole idle timeout.
        if not parked:
            self._idle_deadline = now + server._first_deadline
        # Armed no later than the linger that follows the last answer, so that _finish()
        # finds the timer due first and keeps it: one timer handle per short connection
        # instead of one for the idle deadline, cancelled and replaced for the linger.
        # Firing early costs one callback that re-arms for the idle deadline.
        self._arm(min(self._idle_deadline, now + LINGER))
        if self._pending:
            # Served at once until its handlers needed time (IdentServer._at_once): the
            # query waits here for its answer, which may have come meanwhile.
            self._idle_deadline = now + server.idle_timeout
            self._arm(min(r.deadline for r in self._pending))
            self.answer_ready()
        elif self._buffer:
            self._process()  # read by IdentServer._at_once, not a single whole line
        if self._stopping:
            self.shutdown()  # accepted while the server closes: nothing waits

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # draining after the last answer
        self._buffer += data
        self._process()

    def eof_received(self) -> bool:
        self._eof = True
        if not self._closing and self._buffer.strip(WHITESPACE):
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
        self.server._connections.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for request in self._pending:
            request._conn = None
        self._pending.clear()
        self._buffer = b""
        self._drop_tasks()

    def _drop_tasks(self) -> None:
        """The connection is gone: nobody can receive what its handlers would answer."""
        tasks, self._tasks = self._tasks, None
        if tasks:
            for task in tasks:
                task.cancel()

    def pause_writing(self) -> None:
        # The peer does not read its answers: stop reading (and dispatching) its queries
        # until it does, so that memory per connection stays bounded.
        self._write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._write_paused = False
        # Parse what is already buffered first, then read on.
        if not self._in_process and not self._closing and self._buffer:
            self._process()
        else:
            self._flow()

    # -- queries ------------------------------------------------------------------------

    def _flow(self) -> None:
        """Pause or resume reading: paused while the write buffer is over its high-water
        mark or max_pending queries wait for their answers; resumed once neither holds."""
        transport = self._transport
        if transport is None:
            return
        full = len(self._pending) >= self.server.max_pending
        stop = not self._closing and (self._write_paused or full)
        if stop != self._paused:
            self._paused = stop
            if stop:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _process(self) -> None:
        """Parse and dispatch complete lines while the pending-query limit and the write
        buffer allow, in batches: the answers decided while a batch is parsed (up to
        max_pending) leave in one write, so pipelined queries cost one send, not one each.
        With no handler and no claim (a static answer) a query needs no request object:
        its line is queued straight for the batch's write."""
        server = self.server
        multiple = server.multiple
        limit = server.max_pending
        pending = self._pending
        stats = server.stats
        style = server.reply_style
        # Straight to the batch when nothing can answer but the fallback and there is a
        # transport to write to (IdentServer._at_once reads its answer off the queue).
        static = not server._handlers and not server._claims and self._transport is not None
        self._in_process = True
        try:
            while True:
                buffer = self._buffer
                start = 0
                out: list[bytes] = []
                overlong = more = False
                instant = 0  # static answers in this batch, counted once at its end
                now = self._loop.time()
                while not self._write_paused:
                    if len(pending) >= limit or len(out) >= limit:
                        more = True
                        break
                    end = buffer.find(b"\n", start)
                    if end - start > MAX_LINE or (end < 0 and len(buffer) - start > MAX_LINE):
                        overlong = True
                        break
                    if end < 0:
                        break
                    line = buffer[start:end]
                    start = end + 1
                    self._idle_deadline = now + server.idle_timeout
                    server._touch(self)
                    if not multiple:
                        # One query per connection: whatever follows is never read.
                        self._closing = True
                    try:
                        server_port, client_port = parse_ports(line)
                    except InvalidQuery as exc:
                        server._log.log(
                            "invalid",
                            logging.DEBUG,
                            "invalid queries",
                            "%s: invalid query from %s: %s",
                            server,
                            self.peer,
                            exc,
                        )
                        stats.invalid_lines += 1
                        answer = encode_reply(exc.reply, style)
                        if static and not pending:
                            out.append(answer)
                        else:
                            pending.append(IdentRequest._decided(self, answer))
                    else:
                        if static and not pending:
                            instant += 1
                            out.append(server._fallback_line(server_port, client_port))
                        else:
                            stats.queries += 1
                            self._dispatch(server_port, client_port, now)
                    transport = self._transport
                    if self._closing or transport is None or transport.is_closing():
                        break
                if instant:
                    stats._instant_fallbacks(instant)
                if self._transport is None:
                    self._buffer = b""
                    return
                if overlong:
                    server._log.log(
                        "overlong",
                        logging.INFO,
                        "over-long lines",
                        "%s: line over %d octets from %s",
                        server,
                        MAX_LINE,
                        self.peer,
                    )
                    self._closing = True
                    stats.invalid_lines += 1
                    answer = error_line(0, 0, "INVALID-PORT", style)
                    if static and not pending:
                        out.append(answer)
                    else:
                        pending.append(IdentRequest._decided(self, answer))
                if self._closing:
                    self._buffer = b""  # never read: a single query, or an over-long line
                elif start:
                    self._buffer = buffer[start:]
                self._flush(out)
                if not more or self._closing or self._write_paused or len(pending) >= limit:
                    break
                if self._transport is None:
                    return
        finally:
            self._in_process = False
        self._flow()

    def _dispatch(self, server_port: int, client_port: int, now: float) -> None:
        server = self.server
        request = IdentRequest(self, server_port, client_port, now, now + server.response_timeout)
        self._pending.append(request)
        claims = server._claims
        if claims and claims.intercept(request, self._handle):
            if request._answer is not None:
                server.stats.claimed += 1
            return  # answered by a claim, or held by the bounded wait
        self._handle(request)

    def _handle(self, request: IdentRequest) -> None:
        """No claim answered: the handlers, then the fallback."""
        server = self.server
        server_port, client_port = request.server_port, request.client_port
        handlers = server._handlers
        if not handlers:
            # Nobody can answer: do not make the client wait for the deadline.
            server.stats.fallbacks += 1
            request._set_line(server._fallback_line(server_port, client_port))
            return
        for handler in handlers:
            try:
                result = handler(request)
            except Exception:
                server._handler_failed(handler, request)
                continue
            if result is not None:
                server._spawn(result, request, handler)
        if request._answer is None:
            if self._stopping:
                # Closing: no query waits; what the handlers did not answer at once gets
                # the fallback now.
                self._give_fallback(request)
            elif self._transport is not None:
                self._arm(request.deadline)

    def _give_fallback(self, request: IdentRequest) -> None:
        """The fallback answer, for a query its handlers did not answer in time."""
        server = self.server
        server.stats.fallbacks += 1
        request._set_line(server._fallback_line(request.server_port, request.client_port))

    def answer_ready(self) -> None:
        """An answer was decided: write it, and every answer decided after it in order,
        unless a batch being parsed will (see _process)."""
        if not self._in_process:
            self._flush()

    def _flush(self, out: list[bytes] | None = None) -> None:
        """Write ``out`` (answers decided without a request object), then every answer
        at the head of the queue that is decided, in order, in one write."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # closed, or the peer reset it: connection_lost() follows
        pending = self._pending
        lines = out if out is not None else []
        if pending and pending[0]._answer is not None:
            observe = self.server.stats._observe
            now = self._loop.time()
            ready = 0
            for request in pending:
                answer = request._answer
                if answer is None:
                    break
                request._conn = None
                if request.arrived:  # 0.0: an INVALID-PORT line, never waited for
                    observe(now - request.arrived)
                lines.append(answer)
                ready += 1
            del pending[:ready]
        if not lines:
            return
        # One write() of the joined lines, not writelines(): asyncio's selector transport
        # on Python 3.12.0-3.12.8 and 3.13.0-3.13.1 never pauses the protocol from
        # writelines() (CPython gh-127655), so a peer that does not read would grow the
        # buffer without bound. (3.11's writelines() is this join.)
        transport.write(lines[0] if len(lines) == 1 else b"".join(lines))
        if self._transport is None:
            return  # the write failed and the connection is gone
        self._idle_deadline = self._loop.time() + self.server.idle_timeout
        if pending:
            return
        if self._closing or self._eof:
            self._finish()
        elif self._paused and not self._in_process:
            self._process()

    def _finish(self) -> None:
        """All answers written: half-close, drain the peer, close on its FIN or linger."""
        self._closing = True
        transport = self._transport
        if transport is None:
            return
        if self._eof or self._stopping or not transport.can_write_eof():
            self._close()
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
            self._close()
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
        transport = self._transport
        if transport is None:
            return
        now = self._loop.time()
        if transport.is_closing():
            # Closed with answers still queued (see _close): the peer had its linger.
            if now >= self._idle_deadline:
                transport.abort()
            else:
                self._arm(self._idle_deadline)
            return
        server = self.server
        # A copy: each answer may pop requests off the head of the queue (answer_ready).
        for request in list(self._pending):
            if request._answer is None and request.deadline <= now:
                self._give_fallback(request)
                if self._transport is None:
                    return
        if self._transport is None:
            return
        waiting = [r.deadline for r in self._pending if r._answer is None]
        if waiting:
            self._arm(min(waiting))
            return
        if now >= self._idle_deadline:
            unread = not self._closing and not self._paused
            if unread and _unread(transport.get_extra_info("socket")):
                # A query arrived but was not read yet (the process was stopped across
                # the deadline, and on resume the timers run first): read it, don't reset it.
                self._arm(now + READ_GRACE)
                return
            if self._closing:
                logger.debug("%s: linger over for %s", server, self.peer)
            else:
                logger.debug("%s: idle timeout for %s", server, self.peer)
            self._close()
            return
        self._arm(self._idle_deadline)

    def _close(self) -> None:
        """Close after the answers already written; a peer that does not read them gets
        LINGER seconds, then the connection is aborted: a closing transport waits for its
        buffer to drain, and one nobody reads would otherwise hold its descriptor and its
        memory for ever."""
        transport = self._transport
        if transport is None:
            return
        self._closing = True
        transport.close()
        if transport.get_write_buffer_size():
            self._idle_deadline = self._loop.time() + LINGER
            self._arm(self._idle_deadline)

    # -- closing ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The server is closing: queries waiting for a handler get the fallback now;
        queries already sent but not yet read will be read and answered (see
        :meth:`drained`); nothing new is waited for."""
        if self in self.server._parked:
            if _unread(self._sock):
                self._unpark()  # its connection_made() sees the server closing
            else:
                self._close_parked()
            return
        self._stopping = True
        for request in list(self._pending):
            if request._answer is None:
                self._give_fallback(request)
        if self._transport is not None and not self._closing and not self._in_process:
            self._process()

    def drained(self) -> bool:
        """True when everything the peer sent before close() has been answered: no query
        waits, no complete line is buffered and the kernel holds no unread octet (closing
        over unread data would send an RST that destroys the answers in flight)."""
        transport = self._transport
        if transport is None:
            return True
        if self._pending or (not self._closing and b"\n" in self._buffer):
            return False
        return _unread(transport.get_extra_info("socket")) == 0

    def evict(self) -> None:
        """Closed to make room for a new connection (see IdentServer._make_room)."""
        self.server._connections.pop(self, None)
        if self in self.server._parked:
            self._close_parked()
        else:
            self._close()

    def _unpark(self) -> None:
        """The parked socket is readable (a query, an EOF or a reset): give it its
        transport, which reads it from here on (see IdentServer._park)."""
        server = self.server
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        server._loop_or_raise().remove_reader(sock.fileno())
        deadline = server._parked.pop(self, 0.0)
        try:
            peername = sock.getpeername()
        except OSError:
            server._connections.pop(self, None)
            sock.close()  # reset meanwhile: nothing to read, nobody to answer
            return
        self._idle_deadline = deadline  # the first-query deadline it was parked with
        sock.setblocking(False)
        nagle_off(sock)
        server._handed(self)
        try:
            server._make_transport(sock, self, extra={"peername": peername})
        except Exception:
            server._setting_up -= 1
            server._connections.pop(self, None)
            logger.exception("%s: cannot set up connection", server)
            sock.close()

    def _close_parked(self) -> None:
        server = self.server
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        server._parked.pop(self, None)
        server._connections.pop(self, None)
        server._loop_or_raise().remove_reader(sock.fileno())
        sock.close()


class _ProxiedConnection(_IdentConnection):
    """A connection from a trusted forwarder, before its PROXY header (if any) is read.

    The state lasts until the first octets show a header or a plain query; then the
    connection becomes an ordinary :class:`_IdentConnection` again, with ``peer`` and
    ``local`` taken from the header. Connections from other addresses never enter this
    class, so they pay nothing for it. The header is bounded (``proxy_protocol.MAX_V2``)
    and its wait by the first-query deadline.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        try:
            header = parse_proxy_header(self._buffer)
        except InvalidProxyHeader as exc:
            server = self.server
            server._log.log(
                "proxy",
                logging.INFO,
                "invalid PROXY headers",
                "%s: invalid PROXY header from %s: %s",
                server,
                show_address(self.peer),
                exc,
            )
            self._buffer = b""
            self._close()
            return
        if header is None:
            return  # more to come
        if header.source is not None and header.destination is not None:
            self.peer, self.local = header.source, header.destination
        rest, self._buffer = self._buffer[header.length :], b""
        self.__class__ = _IdentConnection  # type: ignore[assignment]
        if rest:
            self.data_received(rest)

    def eof_received(self) -> bool:
        self._buffer = b""  # an unfinished header is not a query
        self.__class__ = _IdentConnection  # type: ignore[assignment]
        return self.eof_received()


def _defer_accept(sock: socket.socket) -> None:
    """Linux's TCP_DEFER_ACCEPT: accept() completes once the client has sent data, so the
    query is usually there when the connection is accepted. A connection that sends
    nothing is accepted after about a second (one SYN-ACK retransmission) and then gets
    the first-query deadline like any other; meanwhile it costs the server nothing."""
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)


def _unread(sock: Any) -> int:
    """Octets the kernel has received on ``sock`` and nobody has read."""
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0  # closed meanwhile: nothing left to read
    count: int = struct.unpack("i", raw)[0]
    return count


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

    ``trusted_proxies`` (addresses or networks, e.g. ``["127.0.0.1"]``) lets the host
    daemon forward queries here: a connection from one of them may start with a PROXY
    protocol header (v1 or v2) naming the real querier and the address it asked at, and
    claims are then matched against those, exactly as if the querier had asked directly.
    A header from any other address is an invalid query like any other text. Trusting
    an address trusts every process that can connect from it to tell the truth about
    who asked; on a multi-user host prefer a loopback address only the daemon uses.
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
        self._listeners: list[Listener] = []
        #: Open connections, the one that sent no query for the longest first (a dict as
        #: an ordered set: eviction takes from the front, a query moves its connection to
        #: the back).
        self._connections: dict[_IdentConnection, None] = {}
        #: Accepted connections whose protocol has not seen connection_made() yet.
        self._setting_up = 0
        #: Connections parked before their first octet, oldest first, with their deadline
        #: (see _park); one timer for all of them.
        self._parked: dict[_IdentConnection, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._make_transport: Any = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._log = RateLimitedLog(logger)
        #: What the server did since it was created (see :class:`~aioidentd.stats.ServerStats`).
        self.stats = ServerStats(lambda: len(self._connections))
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
            self, host, port, answer, family=family, local_addr=local_addr
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
            self, host, port, answer, family=family, local_addr=local_addr
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
        self._log = RateLimitedLog(logger, call_later=self._loop.call_later)

        def factory() -> _IdentConnection:
            return self._handed(_IdentConnection(self))

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
        if self.defer_accept:
            for sock in socks:
                _defer_accept(sock)
        # The selector loop's own transport constructor, for connections parked before
        # their first octet (see _park); other loops (uvloop) never park.
        self._make_transport = getattr(self._loop, "_make_socket_transport", None)
        self._listeners = [
            Listener(self._loop, sock, factory, name, self._at_once) for sock in socks
        ]
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
            listener.close(drain=True)
        for listener in self._listeners:
            await listener.wait_closed()
        self._claims.close()
        for conn in list(self._connections):
            conn.shutdown()
        deadline = loop.time() + grace
        while True:
            for conn in list(self._connections):
                transport = conn._transport
                if transport is not None and not transport.is_closing() and conn.drained():
                    conn._close()  # flushes the answers, then FIN
            if (not self._connections and self._setting_up <= 0) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.005)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self._connections):
            if conn._transport is not None:
                conn._transport.abort()
        # connection_lost() follows an abort on the next loop iterations; do not spin
        # forever on an event loop that fails to deliver it.
        deadline = loop.time() + CLOSE_GRACE
        while self._connections and loop.time() < deadline:
            await asyncio.sleep(0.001)
        if self._connections:
            logger.warning(
                "%s: %d connections never reported closing", self, len(self._connections)
            )
            self._connections.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._parked):
            conn._close_parked()
        self._setting_up = 0
        self._listeners = []
        self._log.close()
        if self._closed is not None:
            self._closed.set()
        logger.info("%s: closed", self)

    async def serve_connection(self, sock: socket.socket) -> None:
        """Serve one connection accepted elsewhere (inetd mode, systemd ``Accept=yes``)
        until it closes. Needs no listening socket and no :meth:`start`."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._closed = asyncio.Event()
            self._log = RateLimitedLog(logger, call_later=self._loop.call_later)
        lost = self._loop.create_future()

        def factory() -> _IdentConnection:
            conn = _IdentConnection(self)
            conn._lost = lost
            return self._handed(conn)

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

    def _at_once(self, sock: socket.socket, addr: Any) -> _IdentConnection | None:
        """Serve a fresh one-query connection inside the accept callback, when it can be.

        The usual ident client connects and sends its query at once; with
        ``defer_accept`` the kernel even waits for that query before completing accept().
        If the query is already there (one whole line, nothing after it) and is answered
        at once (a claim, a synchronous handler, or the fallback when there is no
        handler), the answer is sent and the socket closed here: no transport, no
        selector registration, no timer, no further callback. Nothing is left unread, so
        the close sends FIN, not RST. Anything else (no data yet, a partial or longer
        input, an answer that takes time) goes on as a normal connection, with what was
        read and the query already waiting for its answer handed over (see
        connection_made).
        """
        conn = _IdentConnection(self)
        if self._closing or (self._trusted_proxies and self._trusts(_address(addr)[0])):
            # A trusted forwarder's PROXY header is read by _ProxiedConnection.
            return self._handed(conn)
        try:
            data = sock.recv(MAX_LINE + 2, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if self._make_transport is not None:
                self._park(conn, sock, addr)
                return None
            return self._handed(conn)
        except OSError:
            data = b""  # reset before its first octet: nothing to answer
        if not data:
            sock.close()  # connected and closed (or reset) without a query
            return None
        if self.multiple or data.find(b"\n") != len(data) - 1:
            conn._buffer = data  # not one whole query: the connection's own rules apply
            return self._handed(conn)
        conn.peer = _address(addr)
        try:
            conn.local = _address(sock.getsockname())
        except OSError:
            sock.close()
            return None
        conn._buffer = data
        conn._sock = sock
        conn._process()
        conn._sock = None
        pending = conn._pending
        request = pending[0]
        answer = request._answer
        if answer is None:
            # Its connection_made() adopts the query waiting for its answer.
            return self._handed(conn)
        pending.clear()
        conn._drop_tasks()  # a handler still running after the answer: its connection is gone
        stats = self.stats
        stats.connections_accepted += 1
        if request.arrived:
            stats._observe(self._loop_or_raise().time() - request.arrived)
        with contextlib.suppress(OSError):
            # One short line into an empty send buffer; if the peer reset the connection
            # meanwhile, it cannot read the answer anyway.
            sock.send(answer, socket.MSG_DONTWAIT)
        sock.close()
        return None

    def _handed(self, conn: _IdentConnection) -> _IdentConnection:
        """``conn`` goes to a transport: close() waits for its connection_made(), which
        counts it off again (``_setting_up``)."""
        self._setting_up += 1
        return conn

    def _park(self, conn: _IdentConnection, sock: socket.socket, addr: Any) -> None:
        """A connection with nothing to read yet waits as a bare socket watched by the
        selector: no transport, no buffer, no timer of its own (one timer serves every
        parked connection, whose deadlines come in order). It gets its transport when its
        first octet arrives (_IdentConnection._unpark). An idle connection costs less than
        half as much memory this way, which is what a flood of silent connections, or a
        hundred thousand clients keeping connections open, is made of."""
        loop = self._loop_or_raise()
        if len(self._connections) >= self.max_connections and not self._make_room():
            self.stats.connections_refused += 1
            sock.close()
            return
        conn.peer = _address(addr)
        conn._sock = sock
        self._connections[conn] = None
        self.stats.connections_accepted += 1
        deadline = loop.time() + self._first_deadline
        self._parked[conn] = deadline
        if self._sweeper is None:
            self._sweeper = loop.call_at(deadline, self._sweep)
        loop.add_reader(sock.fileno(), conn._unpark)

    def _sweep(self) -> None:
        """Close the parked connections past their first-query deadline."""
        self._sweeper = None
        loop = self._loop_or_raise()
        now = loop.time()
        parked = self._parked
        while parked:
            conn, deadline = next(iter(parked.items()))
            if deadline > now:
                self._sweeper = loop.call_at(deadline, self._sweep)
                return
            if _unread(conn._sock):
                conn._unpark()  # its query arrived (see _IdentConnection._on_timer)
                continue
            logger.debug("%s: no query from %s in time", self, conn.peer)
            conn._close_parked()

    @property
    def _first_deadline(self) -> float:
        return min(self.first_query_timeout, self.idle_timeout)

    def _touch(self, conn: _IdentConnection) -> None:
        """A query arrived: ``conn`` is now the last one to be evicted."""
        connections = self._connections
        if connections.pop(conn, 0) is None:
            connections[conn] = None

    def _make_room(self) -> bool:
        """The connection limit is reached and a new connection arrives: close the one
        that has sent no query for the longest, unless every connection has a query
        waiting for its answer (then the new one is refused). A flood of silent connections thus
        costs the flooder its own oldest slots, never a querier its answer."""
        # Oldest first; a connection whose query already waits in the kernel (sent, not
        # yet read: it may have been accepted in the same batch as the new one) is passed
        # over while a silent one is left.
        spare: _IdentConnection | None = None
        for conn in self._connections:
            if conn._pending:
                continue
            if _unread(conn.extra("socket")):
                spare = spare or conn
                continue
            self._evict(conn)
            return True
        if spare is not None:
            self._evict(spare)
            return True
        self._log.log(
            "refused",
            logging.WARNING,
            "connections refused",
            "%s: connection limit (%d) reached and every connection waits for an answer; "
            "refusing a new connection",
            self,
            self.max_connections,
        )
        return False

    def _evict(self, conn: _IdentConnection) -> None:
        self.stats.connections_evicted += 1
        self._log.log(
            "evicted",
            logging.INFO,
            "connections closed to make room",
            "%s: connection limit (%d) reached; closing the connection from %s, "
            "silent longest, to serve a new one",
            self,
            self.max_connections,
            show_address(conn.peer),
        )
        conn.evict()

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
        conn = request._conn
        if conn is not None:
            # Cancelled when the connection is gone: nobody can receive what it would
            # answer (see the handler contract in the IdentServer docs).
            tasks = conn._tasks
            if tasks is None:
                tasks = conn._tasks = {}
            elif len(tasks) >= self.max_pending:
                # A handler that hangs after its query got the fallback must not pile up
                # tasks on a kept-open connection: the oldest such task makes room.
                for old, owner in tasks.items():
                    if owner._answer is not None:
                        old.cancel()
                        del tasks[old]
                        break
            tasks[task] = request

        def done(fut: asyncio.Future[Any]) -> None:
            self._tasks.discard(fut)
            if conn is not None and conn._tasks is not None:
                conn._tasks.pop(fut, None)
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None:
                self._handler_failed(handler, request, exc)

        task.add_done_callback(done)
