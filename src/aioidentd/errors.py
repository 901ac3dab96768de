"""Exceptions shared across aioidentd.

A failed ident exchange is routine (most hosts run no identd, many firewalls drop port
113), so callers need to tell "the peer answered ERROR" (a normal return value) from "there
was no usable answer" (these exceptions), and to tell the reasons apart without parsing
messages: one base class to catch them all, one subclass per way the exchange can fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aioidentd.protocol import Query, Reply

__all__ = [
    "IdentConnectError",
    "IdentConnectionClosed",
    "IdentError",
    "IdentPortMismatch",
    "IdentProtocolError",
    "IdentTimeout",
]


class IdentError(Exception):
    """The ident exchange produced no answer; the message says why, for a person.

    ``server`` is the ident server's ``(host, port)`` when known, so a caller logging many
    lookups can group failures by peer without parsing the message.
    """

    def __init__(self, message: str, *, server: tuple[str, int] | None = None) -> None:
        super().__init__(message)
        self.server = server


class IdentConnectError(IdentError):
    """The ident server could not be reached: refused, unreachable, unresolvable, or the
    source address could not be bound."""


class IdentTimeout(IdentError, TimeoutError):
    """No complete answer within the deadline.

    Also a :class:`TimeoutError` so that code which already handles timeouts generically
    (``except TimeoutError``) keeps working.
    """


class IdentConnectionClosed(IdentError):
    """The server closed or reset the connection before a complete answer line.

    RFC 1413 gives a premature close the meaning of ``ERROR : UNKNOWN-ERROR``; it is an
    exception here rather than a synthesised reply so that callers can tell a server that
    said something from one that said nothing.
    """


class IdentProtocolError(IdentError):
    """The server answered, but not with a usable RFC 1413 reply line.

    ``line`` holds the offending octets (possibly truncated) for diagnostics.
    """

    def __init__(
        self, message: str, *, server: tuple[str, int] | None = None, line: bytes = b""
    ) -> None:
        super().__init__(message, server=server)
        self.line = line


class IdentPortMismatch(IdentProtocolError):
    """A well-formed reply about a different port pair than the one asked about.

    Kept distinct because it is the one protocol error where the server did say something
    meaningful (``reply``), just not about our connection; trusting it would attribute a
    connection to the wrong user.
    """

    def __init__(
        self,
        message: str,
        *,
        server: tuple[str, int] | None = None,
        line: bytes = b"",
        query: Query,
        reply: Reply,
    ) -> None:
        super().__init__(message, server=server, line=line)
        self.query = query
        self.reply = reply
