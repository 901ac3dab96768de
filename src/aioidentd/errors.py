"""Every exception aioidentd raises on purpose, in one hierarchy.

One root, :class:`AioidentdError`, so that an application can catch "anything this
library refused or failed at" in one clause, and one subclass per thing a caller may want
to handle differently, so that nobody parses messages. Each also derives from the
built-in exception it has always been (``ValueError`` for bad input, ``OSError`` for a
failed lookup, ``RuntimeError`` for a process that cannot start), so existing
``except ValueError`` code keeps working. Nothing here imports the rest of the package but
the protocol's values (:mod:`aioidentd.messages`), which an exception carries: this module
sits below the protocol, which raises its errors.

A failed ident exchange is routine (most hosts run no identd, many firewalls drop port
113), so a client caller must tell "the peer answered ERROR" (a normal return value) from
"there was no usable answer" (:class:`IdentError` and its subclasses).
"""

from __future__ import annotations

from aioidentd.messages import ErrorReply, Query, Reply

__all__ = [
    "ActivationError",
    "AioidentdError",
    "ConfigError",
    "DaemonError",
    "IdentConnectError",
    "IdentConnectionClosed",
    "IdentError",
    "IdentPortMismatch",
    "IdentProtocolError",
    "IdentTimeout",
    "InvalidQuery",
    "MalformedReply",
    "PrivilegeError",
    "ReplyFileRefused",
    "SocketLookupError",
]


class AioidentdError(Exception):
    """The root of every exception aioidentd raises on purpose."""


# --------------------------------------------------------------------------- the wire


class InvalidQuery(AioidentdError, ValueError):
    """A query line that cannot be answered; :attr:`reply` is the error line to send.

    ``server_port``/``client_port`` echo the line's numbers when both were numeric (the pair
    was merely out of range), else they are ``0, 0``.
    """

    def __init__(self, message: str, server_port: int = 0, client_port: int = 0) -> None:
        super().__init__(message)
        self.server_port = server_port
        self.client_port = client_port

    @property
    def reply(self) -> ErrorReply:
        return ErrorReply(self.server_port, self.client_port, "INVALID-PORT")


class MalformedReply(AioidentdError, ValueError):
    """A reply line that does not follow RFC 1413's structure."""


# --------------------------------------------------------------------------- the client


class IdentError(AioidentdError):
    """The ident exchange produced no answer; the message says why, for a person.

    ``address`` is the ident server's ``(host, port)`` when known, so a caller logging many
    lookups can group failures by peer without parsing the message.
    """

    def __init__(self, message: str, *, address: tuple[str, int] | None = None) -> None:
        super().__init__(message)
        self.address = address

    @property
    def server(self) -> tuple[str, int] | None:
        """The old name of :attr:`address`."""
        return self.address


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
        self, message: str, *, address: tuple[str, int] | None = None, line: bytes = b""
    ) -> None:
        super().__init__(message, address=address)
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
        address: tuple[str, int] | None = None,
        line: bytes = b"",
        query: Query,
        reply: Reply,
    ) -> None:
        super().__init__(message, address=address, line=line)
        self.query = query
        self.reply = reply


# --------------------------------------------------------------------------- the daemon


class ConfigError(AioidentdError, ValueError):
    """A configuration that cannot be used; ``str()`` is one line, ``file:line: message``."""

    def __init__(self, filename: str, line: int | None, message: str) -> None:
        self.filename = filename
        self.line = line
        self.message = message
        where = filename if line is None else f"{filename}:{line}"
        super().__init__(f"{where}: {message}")


class SocketLookupError(AioidentdError, OSError):
    """The lookup itself failed, as opposed to finding no socket.

    Kept distinct from a ``None`` result because the ident answers differ: "no such connection"
    is NO-USER, while "I could not find out" must be UNKNOWN-ERROR, never a guess.
    """


class ReplyFileRefused(AioidentdError):
    """A user's reply file that exists but must not be used; the message says why."""


class ActivationError(AioidentdError, RuntimeError):
    """The service manager's hand-over (systemd, inetd) is not usable (with the reason)."""


class PrivilegeError(AioidentdError, RuntimeError):
    """The process cannot take, or refuses to keep, the requested identity."""


class DaemonError(AioidentdError, RuntimeError):
    """The daemon cannot start; the message is meant for the administrator."""
