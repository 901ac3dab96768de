"""The query a handler sees, and the one way its answer reaches the connection.

Why a class of its own: a handler (the application's, the daemon's responder) holds an
:class:`IdentRequest` for as long as it likes, possibly past the connection's life, and
answers it from any coroutine; the request keeps the connection's slot, and every answer
(a handler's, a claim's, the fallback's) is handed to the sans-IO connection by slot
(:meth:`aioidentd.server.conn.IdentConnection.answer`), which refuses a second one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aioidentd.driver import Channel
from aioidentd.protocol import Address, ErrorReply, UserIdReply, encode_reply
from aioidentd.server.conn import IdentConnection

if TYPE_CHECKING:
    from aioidentd.server.server import IdentServer

__all__ = ["Handler", "IdentRequest"]

Handler = Callable[["IdentRequest"], Awaitable[None] | None]


class IdentRequest:
    """One valid query, handed to every registered handler.

    A handler answers with :meth:`reply` or :meth:`error`, now or later, from any
    coroutine on the server's event loop. Only the first answer counts; later calls
    return ``False`` and write nothing.
    """

    __slots__ = (
        "_answer",
        "_channel",
        "_server",
        "_session",
        "_slot",
        "arrived",
        "client_port",
        "deadline",
        "local",
        "peer",
        "server_port",
    )

    def __init__(
        self,
        server: IdentServer,
        channel: Channel,
        session: IdentConnection,
        slot: int,
        server_port: int,
        client_port: int,
        arrived: float,
        deadline: float,
    ) -> None:
        self._server = server
        self._channel = channel
        self._session = session
        self._slot = slot
        self._answer: bytes | None = None
        #: The port on this host, as queried (the RFC's "port-on-server").
        self.server_port = server_port
        #: The port on the querying host.
        self.client_port = client_port
        #: ``(host, port)`` of the querier.
        self.peer: Address = session.peer
        #: ``(host, port)`` of our end of the ident connection; its host is the local
        #: address of the connection being asked about.
        self.local: Address = session.local
        #: Loop time at which the query was read.
        self.arrived = arrived
        #: Loop time after which the fallback answer goes out.
        self.deadline = deadline

    @property
    def answered(self) -> bool:
        """True once an answer (a handler's, a claim's or the fallback) has been decided."""
        return self._answer is not None or self._session.answered(self._slot)

    @property
    def server(self) -> IdentServer | None:
        """The server that received the query (None once the connection is gone)."""
        return None if self._channel.closed else self._server

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
        if self.answered or self._channel.closed:
            return self._set_line(b"")  # refused, or too late: nothing to write
        stats = self._server.stats
        if isinstance(reply, UserIdReply):
            stats.answers_userid += 1
        else:
            stats.answers_error += 1
        return self._set_line(encode_reply(reply, self._server.reply_style))

    def _set_line(self, line: bytes) -> bool:
        """The answer, already encoded in the server's reply style: the one way in."""
        if self._answer is not None:
            return False
        channel = self._channel
        if not line or channel.closed:
            self._answer = b""
            return False
        server = self._server
        now = server._now()
        if not self._session.answer(self._slot, line, now):
            self._answer = b""
            return False
        self._answer = line
        server.stats._observe(now - self.arrived)
        server._written(channel)
        return True

    def __repr__(self) -> str:
        state = "answered" if self.answered else "pending"
        return (
            f"<IdentRequest {self.server_port},{self.client_port} "
            f"from {self.peer[0]}:{self.peer[1]} {state}>"
        )
