"""The asyncio ident (RFC 1413) client.

Real-world clients fail in three recurring ways (see the project notes): they assume the
answer arrives in one segment, they never check that the answer is about the port pair they
asked for, and they leak sockets or hang when the server is silent. This client reads with
an :class:`asyncio.Protocol` that buffers until an end of line, checks the echoed pair, and
runs connect, send and receive under one deadline, closing the socket on every path.

Parsing lives in :mod:`aioidentd.protocol`; this module only moves octets.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

from aioidentd.errors import (
    IdentConnectError,
    IdentConnectionClosed,
    IdentError,
    IdentPortMismatch,
    IdentProtocolError,
    IdentTimeout,
    MalformedReply,
)
from aioidentd.protocol import (
    MAX_LINE,
    WHITESPACE,
    Query,
    Reply,
    check_port,
    check_seconds,
    parse_reply,
    show_address,
    split_lines,
    unmapped,
)

__all__ = ["IDENT_PORT", "query", "query_connection"]

IDENT_PORT = 113
"""The ident service's well-known port (RFC 1413), where :func:`query` asks by default."""


class _IdentClientProtocol(asyncio.Protocol):
    """Sends one query and resolves :attr:`answer` with the first reply line.

    Every outcome, good or bad, goes through :meth:`_finish`, which resolves the future once
    and closes the transport, so no path can leave a socket open or a waiter hanging.
    """

    def __init__(self, query: Query, address: tuple[str, int], prefix: bytes = b"") -> None:
        self._query = query
        #: Sent before the query in the same write (a forwarder's PROXY header).
        self._prefix = prefix
        self._address = address
        self._where = show_address(address)
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance(): uvloop's TCPTransport is a stream transport that does not
        # subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._prefix + self._query.encode())

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        lines, self._buffer = split_lines(self._buffer + data)
        for line in lines:
            if len(line) > MAX_LINE:
                self._fail_line(f"an answer longer than {MAX_LINE} octets", line)
                return
            if not line.strip(WHITESPACE):
                # A blank line says nothing; Net::Ident and POE::Filter::Ident skip such
                # lines too, rather than fail on a server that pads its output.
                continue
            self._handle_line(line)
            return
        if len(self._buffer) > MAX_LINE:
            self._fail_line(f"more than {MAX_LINE} octets without an end of line", self._buffer)

    def _handle_line(self, line: bytes) -> None:
        try:
            reply = parse_reply(line)
        except MalformedReply:
            self._fail_line("a malformed answer", line)
            return
        if (reply.server_port, reply.client_port) != (
            self._query.server_port,
            self._query.client_port,
        ):
            self._finish(
                IdentPortMismatch(
                    f"ident server {self._where} answered about ports "
                    f"{reply.server_port}, {reply.client_port} instead of "
                    f"{self._query.server_port}, {self._query.client_port}",
                    address=self._address,
                    line=line,
                    query=self._query,
                    reply=reply,
                )
            )
            return
        self._finish(reply)

    def _fail_line(self, what: str, line: bytes) -> None:
        shown = f"{line[:80]!r}{'...' if len(line) > 80 else ''}"
        self._finish(
            IdentProtocolError(
                f"ident server {self._where} sent {what}: {shown}",
                address=self._address,
                line=line[: MAX_LINE + 1],
            )
        )

    def eof_received(self) -> bool:
        self._closed_early(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_early(exc)

    def _closed_early(self, exc: Exception | None) -> None:
        if self.answer.done():
            return
        how = "reset" if isinstance(exc, ConnectionResetError) else "closed"
        got = f" after {len(self._buffer)} octets" if self._buffer else ""
        reason = f" ({exc})" if exc is not None and how != "reset" else ""
        error = IdentConnectionClosed(
            f"ident server {self._where} {how} the connection{got} without a complete "
            f"answer{reason}",
            address=self._address,
        )
        if exc is not None:
            error.__cause__ = exc
        self._finish(error)

    def _finish(self, outcome: Reply | IdentError) -> None:
        if not self.answer.done():
            if isinstance(outcome, IdentError):
                self.answer.set_exception(outcome)
            else:
                self.answer.set_result(outcome)
        self.close()

    def close(self) -> None:
        """Close the socket; abort rather than linger when no complete answer arrived."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self.answer.done() and not self.answer.cancelled() and self.answer.exception() is None:
            transport.close()
        else:
            transport.abort()


async def query(
    host: str,
    server_port: int,
    client_port: int,
    *,
    port: int = IDENT_PORT,
    timeout: float | None = 5.0,
    local_addr: tuple[str, int] | None = None,
) -> Reply:
    """Ask the identd on ``host`` who owns its end of a connection.

    An ``ERROR`` answer is a normal outcome, returned like a USERID; only the lack of a
    usable answer raises, so a caller handles "the identd said no" and "the identd could
    not be asked" apart.

    :param host: the identd's host: the other end of the connection asked about.
    :param server_port: the connection's port on ``host`` (the RFC's order: theirs
        first).
    :param client_port: the connection's port on this side.
    :param port: the identd's port.
    :param timeout: seconds for the whole exchange, connect included, or ``None`` for
        no bound (the kernel's connect timeout still applies). 5 s by default: as long as
        InspIRCd and Solanum wait.
    :param local_addr: the query's source address. An identd answers only about
        connections between itself and the querier's address, so on a multi-homed host
        it must be the address of the connection asked about
        (:func:`query_connection` picks it for an accepted connection).
    :returns: a :class:`~aioidentd.protocol.UserIdReply` or an
        :class:`~aioidentd.protocol.ErrorReply`.
    :raises IdentConnectError: the identd could not be reached (refused, no route, a
        host name that does not resolve).
    :raises IdentTimeout: no complete answer within ``timeout``.
    :raises IdentConnectionClosed: the identd closed the connection before a complete
        answer.
    :raises IdentProtocolError: the answer is malformed, or 1000 octets came without an
        end of line.
    :raises IdentPortMismatch: the answer is about another pair of ports.
    :raises ValueError: a port out of range, or a ``timeout`` that is not a positive
        number of seconds.
    :raises TypeError: a port that is not an ``int``, or a ``timeout`` that is not a
        number.
    """
    the_query = Query(server_port, client_port)
    check_port("port", port)
    if timeout is not None:
        check_seconds("timeout", timeout)
    address = (host, port)
    where = show_address((host, port))
    loop = asyncio.get_running_loop()
    protocol: _IdentClientProtocol | None = None
    connected = False
    try:
        async with asyncio.timeout(timeout):
            try:
                _, protocol = await loop.create_connection(
                    lambda: _IdentClientProtocol(the_query, address),
                    host,
                    port,
                    local_addr=local_addr,
                )
            except ConnectionRefusedError:
                raise IdentConnectError(
                    f"ident server {where} refused the connection", address=address
                ) from None
            except socket.gaierror as exc:
                raise IdentConnectError(
                    f"cannot resolve ident server host {host!r}: {exc.strerror}", address=address
                ) from exc
            except OSError as exc:
                if isinstance(exc, TimeoutError):  # the kernel's own connect timeout
                    raise IdentTimeout(
                        f"connecting to ident server {where} timed out", address=address
                    ) from exc
                detail = exc.strerror or str(exc)
                source = (
                    f" from {show_address((local_addr[0], local_addr[1]))}" if local_addr else ""
                )
                raise IdentConnectError(
                    f"cannot connect to ident server {where}{source}: {detail}", address=address
                ) from exc
            connected = True
            try:
                return await protocol.answer
            finally:
                protocol.close()
                answer = protocol.answer
                if answer.done() and not answer.cancelled():
                    # A cancellation can win the race against an answer that failed in
                    # the same loop iteration; mark that failure seen so asyncio does not
                    # log "exception was never retrieved" for it.
                    answer.exception()
    except TimeoutError as exc:
        if isinstance(exc, IdentError):
            raise
        phase = "" if connected else " (connection not established)"
        limit = f"{float(timeout)} s" if timeout is not None else "the connect timeout"
        raise IdentTimeout(
            f"no answer from ident server {where} within {limit}{phase}", address=address
        ) from None


def _host_of(sockaddr: Any) -> tuple[str, int, int]:
    """``(host, port, scope_id)`` from an AF_INET/AF_INET6 socket address."""
    if not isinstance(sockaddr, tuple) or len(sockaddr) not in (2, 4):
        raise ValueError(f"not a TCP/IP connection (address {sockaddr!r})")
    host, port = sockaddr[0], sockaddr[1]
    scope_id = sockaddr[3] if len(sockaddr) == 4 else 0
    return str(host), int(port), int(scope_id)


def _with_scope(host: str, scope_id: int) -> str:
    """Keep a link-local IPv6 address usable: the interface is part of the address."""
    if scope_id and "%" not in host:
        return f"{host}%{scope_id}"
    return host


async def query_connection(
    connection: asyncio.StreamWriter | asyncio.BaseTransport | socket.socket,
    *,
    port: int = IDENT_PORT,
    timeout: float | None = 5.0,
) -> Reply:
    """Ask the peer of an accepted connection who it is, the way an IRC server does.

    The query names (the peer's port, our port), and is sent from the local address the
    peer connected to: the peer's identd only answers about connections between itself and
    the address the query comes from, which on a multi-homed host need not be the default
    route's.

    :param connection: the accepted connection: an :class:`asyncio.StreamWriter`, an
        asyncio transport or a plain socket.
    :param port: the peer's identd's port.
    :param timeout: as for :func:`query`.
    :returns: the answer, as :func:`query` returns it.
    :raises IdentError: as :func:`query` raises (a subclass saying what failed).
    :raises ValueError: a connection with no TCP/IP addresses (closed, or not TCP/IP).
    :raises TypeError: something that is not a connection.
    """
    if isinstance(connection, socket.socket):
        sockname, peername = connection.getsockname(), connection.getpeername()
    elif isinstance(connection, asyncio.StreamWriter | asyncio.BaseTransport):
        sockname = connection.get_extra_info("sockname")
        peername = connection.get_extra_info("peername")
        if sockname is None or peername is None:
            raise ValueError("the connection has no socket addresses (closed, or not TCP/IP)")
    else:
        raise TypeError(
            "connection must be an asyncio.StreamWriter, an asyncio transport or a "
            f"socket.socket, not {type(connection).__name__}"
        )
    local_host, local_port, local_scope = _host_of(sockname)
    peer_host, peer_port, peer_scope = _host_of(peername)
    # A dual-stack listener reports IPv4 peers in the v4-mapped form, but the peer's identd
    # listens on IPv4, and an AF_INET6 socket bound to a mapped source would not reach it
    # reliably; so both ends of the query connection are spoken to over plain IPv4.
    peer_plain, local_plain = unmapped(peer_host), unmapped(local_host)
    if (peer_plain != peer_host) != (local_plain != local_host):
        # One side mapped and the other not cannot share a family: let the kernel choose
        # the source rather than fail to bind.
        source: tuple[str, int] | None = None
    else:
        source = (_with_scope(local_plain, local_scope), 0)
    return await query(
        _with_scope(peer_plain, peer_scope),
        peer_port,
        local_port,
        port=port,
        timeout=timeout,
        local_addr=source,
    )
