"""The RFC 1413 wire protocol, without any I/O.

Everything above this module (server, client, daemon) is a thin shell around these pure
functions and frozen dataclasses, so that the rules of the protocol live in exactly one
place and can be tested (and property-tested) without sockets.

Two rules shape the whole module:

* Be liberal in what is accepted: any run of spaces and tabs (and the seed's VT, FF and
  stray CR) around tokens, CR LF or a bare LF as the end of line.
* Be strict in what is sent: a reply object cannot be built from a value that would put
  something invalid on the wire (an injected CR LF, a colon in the opsys, an oversized id).
  The constructors raise :class:`ValueError` saying what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "ERROR_TOKENS",
    "MAX_LINE",
    "MAX_USER_ID",
    "Address",
    "ErrorReply",
    "InvalidQuery",
    "MalformedReply",
    "Query",
    "Reply",
    "ReplyStyle",
    "UserIdReply",
    "check_port",
    "encode_reply",
    "error_line",
    "parse_query",
    "parse_reply",
    "split_lines",
]

#: RFC 1413 lets a client abort after this many octets without an end of line; the server
#: uses the same bound for its input so that one connection cannot grow a buffer unbounded.
MAX_LINE: Final = 1000
#: A server SHOULD NOT send more than 512 octets of user id (RFC 1413, "Notes on Syntax").
MAX_USER_ID: Final = 512
#: Tokens (opsys, charset, error names) are at most 64 characters long.
MAX_TOKEN: Final = 64

#: The four error names RFC 1413 defines; anything else must be an "X" token.
ERROR_TOKENS: Final = frozenset({"INVALID-PORT", "NO-USER", "HIDDEN-USER", "UNKNOWN-ERROR"})

ReplyStyle = Literal["compact", "spaced"]

# Whitespace accepted between tokens. The RFC names space and tab; the seed (Perl's \s on
# bytes) also took VT, FF and CR, and a stray CR before LF must be harmless anyway.
_WS = rb"[ \t\x0b\x0c\r]*"
_QUERY_RE: Final = re.compile(_WS + rb"([0-9]+)" + _WS + rb"," + _WS + rb"([0-9]+)" + _WS)
_REPLY_RE: Final = re.compile(
    _WS
    + rb"([0-9]+)"
    + _WS
    + rb","
    + _WS
    + rb"([0-9]+)"
    + _WS
    + rb":"
    + _WS
    + rb"([A-Za-z]+)"
    + _WS
    + rb":(.*)",
    re.DOTALL,
)
# Printable US-ASCII except the colon: the RFC's token characters. Commas are refused in
# opsys and charset because the comma separates the two on the wire.
_TOKEN_RE: Final = re.compile(r"[!-9;-~]{1,64}")
_OPSYS_RE: Final = re.compile(r"[!-+\--9;-~]{1,64}")
_X_TOKEN_RE: Final = re.compile(r"X[!-9;-~]{1,63}")
_STRIP: Final = b" \t\x0b\x0c\r"


#: ``(host, port)`` of one end of a TCP connection, as the socket module gives it. The RFC
#: names a connection by two of these; the server, lookups and policy all pass them around
#: (readers look at the first two items only, so an IPv6 4-tuple serves as well).
Address = tuple[str, int]


def check_port(name: str, value: int, low: int = 1, high: int | None = 65535) -> None:
    """Raise TypeError/ValueError unless ``value`` is an int port in ``low..high``
    (``high=None``: no upper bound, for the out-of-range pairs an error reply echoes)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")


@dataclass(frozen=True, slots=True)
class Query:
    """A valid query: the connection between ``server_port`` on the ident host and
    ``client_port`` on the querying host (the RFC's order)."""

    server_port: int
    client_port: int

    def __post_init__(self) -> None:
        check_port("server_port", self.server_port)
        check_port("client_port", self.client_port)

    def encode(self) -> bytes:
        """The query as a client sends it (``6191, 23`` + CR LF, the form most clients use)."""
        return b"%d, %d\r\n" % (self.server_port, self.client_port)


class InvalidQuery(ValueError):
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


def parse_query(line: bytes) -> Query:
    """Parse one query line (with or without its end of line).

    Raises :class:`InvalidQuery` for anything that is not two decimal ports 1..65535
    separated by a comma; its ``reply`` echoes the pair when both numbers parsed.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    match = _QUERY_RE.fullmatch(line)
    if match is None:
        raise InvalidQuery(f"not a port pair: {line[:60]!r}")
    first, second = match.groups()
    # More than 5 digits can only be out of range (or padded with zeros); echo small
    # numbers as given, refuse to echo absurd ones.
    server_port = int(first) if len(first) <= 20 else 0
    client_port = int(second) if len(second) <= 20 else 0
    if not (0 < server_port <= 65535 and 0 < client_port <= 65535):
        if server_port > 99999 or client_port > 99999:
            server_port = client_port = 0
        raise InvalidQuery(f"port out of range 1..65535: {line[:60]!r}", server_port, client_port)
    return Query(server_port, client_port)


@dataclass(frozen=True, slots=True)
class UserIdReply:
    """``USERID``: who owns the connection.

    ``raw`` holds the user id's octets exactly as on the wire; ``user_id`` decodes them by
    ``charset`` (US-ASCII when absent, as the RFC says) and falls back to the raw bytes when
    they do not decode, so nothing a server sent is lost.
    """

    server_port: int
    client_port: int
    opsys: str
    raw: bytes
    charset: str | None = None

    def __post_init__(self) -> None:
        check_port("server_port", self.server_port, 0, None)
        check_port("client_port", self.client_port, 0, None)
        if not isinstance(self.opsys, str) or not _OPSYS_RE.fullmatch(self.opsys):
            raise ValueError(
                f"opsys must be 1-64 printable ASCII characters without ':' or ',', "
                f"got {self.opsys!r}"
            )
        if self.charset is not None and (
            not isinstance(self.charset, str) or not _OPSYS_RE.fullmatch(self.charset)
        ):
            raise ValueError(
                f"charset must be 1-64 printable ASCII characters without ':' or ',', "
                f"got {self.charset!r}"
            )
        if not isinstance(self.raw, bytes):
            raise TypeError(f"raw must be bytes, not {type(self.raw).__name__}")
        if not 1 <= len(self.raw) <= MAX_USER_ID:
            raise ValueError(f"user id must be 1-{MAX_USER_ID} octets, got {len(self.raw)}")
        if b"\r" in self.raw or b"\n" in self.raw or b"\0" in self.raw:
            raise ValueError(f"user id must not contain CR, LF or NUL: {self.raw!r}")

    @classmethod
    def from_text(
        cls,
        server_port: int,
        client_port: int,
        opsys: str,
        user_id: str | bytes,
        charset: str | None = None,
    ) -> UserIdReply:
        """Build a reply from a text user id, encoded by ``charset`` (US-ASCII by default)."""
        if isinstance(user_id, str):
            encoding = charset or "ascii"
            try:
                raw = user_id.encode(encoding)
            except UnicodeEncodeError:
                raise ValueError(
                    f"user id {user_id!r} is not {charset or 'US-ASCII'}; "
                    f"pass charset='UTF-8' to send it"
                ) from None
            except LookupError:
                raise ValueError(f"unknown charset {charset!r}") from None
        elif isinstance(user_id, bytes):
            raw = user_id
        else:
            raise TypeError(f"user id must be str or bytes, not {type(user_id).__name__}")
        return cls(server_port, client_port, opsys, raw, charset)

    @property
    def user_id(self) -> str | bytes:
        """The user id as text, or the raw octets when they do not decode by the charset."""
        try:
            return self.raw.decode(self.charset or "ascii")
        except (UnicodeDecodeError, LookupError):
            return self.raw

    def __str__(self) -> str:
        user = self.user_id
        shown = user if isinstance(user, str) else f"0x{user.hex()}"
        opsys = self.opsys if self.charset is None else f"{self.opsys},{self.charset}"
        return f"USERID {opsys} {shown}"


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """``ERROR``: one of :data:`ERROR_TOKENS` or an ``X`` token.

    Standard names are accepted in any case and stored upper-case (``no-user`` ->
    ``NO-USER``); X tokens are kept as given.
    """

    server_port: int
    client_port: int
    error: str = field()

    def __post_init__(self) -> None:
        check_port("server_port", self.server_port, 0, None)
        check_port("client_port", self.client_port, 0, None)
        if not isinstance(self.error, str):
            raise TypeError(f"error must be str, not {type(self.error).__name__}")
        upper = self.error.upper()
        if upper in ERROR_TOKENS:
            if upper != self.error:
                object.__setattr__(self, "error", upper)
        elif not _X_TOKEN_RE.fullmatch(self.error):
            raise ValueError(
                f"error must be one of {', '.join(sorted(ERROR_TOKENS))} or an X-token "
                f"('X' + 1-63 printable ASCII characters without ':'), got {self.error!r}"
            )

    def __str__(self) -> str:
        return f"ERROR {self.error}"


Reply = UserIdReply | ErrorReply


def encode_reply(reply: Reply, style: ReplyStyle = "compact") -> bytes:
    """The reply line, CR LF included, ready for a single write.

    ``compact`` is the RFC grammar's form (``6193,23:USERID:UNIX:stjohns``), which every
    current client accepts; ``spaced`` is the seed's and the RFC examples' form
    (``6193 , 23 : USERID : UNIX : stjohns``) for old parsers that insist on spaces.
    """
    if style == "compact":
        if isinstance(reply, UserIdReply):
            if reply.charset is None:
                head = b"%d,%d:USERID:%s:" % (
                    reply.server_port,
                    reply.client_port,
                    reply.opsys.encode(),
                )
            else:
                head = b"%d,%d:USERID:%s,%s:" % (
                    reply.server_port,
                    reply.client_port,
                    reply.opsys.encode(),
                    reply.charset.encode(),
                )
            if reply.raw.startswith(b" "):
                # Readers strip one space after the colon (the usual separator); give them
                # one so that an id's own leading space survives.
                head += b" "
            return head + reply.raw + b"\r\n"
        return b"%d,%d:ERROR:%s\r\n" % (
            reply.server_port,
            reply.client_port,
            reply.error.encode(),
        )
    if style == "spaced":
        if isinstance(reply, UserIdReply):
            opsys = reply.opsys if reply.charset is None else f"{reply.opsys} , {reply.charset}"
            return b"%d , %d : USERID : %s : %s\r\n" % (
                reply.server_port,
                reply.client_port,
                opsys.encode(),
                reply.raw,
            )
        return b"%d , %d : ERROR : %s\r\n" % (
            reply.server_port,
            reply.client_port,
            reply.error.encode(),
        )
    raise ValueError(f"reply style must be 'compact' or 'spaced', got {style!r}")


def error_line(
    server_port: int, client_port: int, error: str, style: ReplyStyle = "compact"
) -> bytes:
    """Shorthand for ``encode_reply(ErrorReply(...), style)``."""
    return encode_reply(ErrorReply(server_port, client_port, error), style)


class MalformedReply(ValueError):
    """A reply line that does not follow RFC 1413's structure."""


def parse_reply(line: bytes) -> Reply:
    """Parse one reply line, as a client receives it.

    Liberal in whitespace and in the case of ``USERID``/``ERROR``, strict in structure.
    The user id is everything after the colon that ends the opsys field, verbatim except
    for the end of line and one leading space (the separator most servers write, which
    common practice strips); colons inside it are part of it.
    Raises :class:`MalformedReply` (a :class:`ValueError`) for anything else.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    match = _REPLY_RE.fullmatch(line)
    if match is None:
        raise MalformedReply(f"not an ident reply: {line[:80]!r}")
    first, second, kind, rest = match.groups()
    if len(first) > 5 or len(second) > 5:
        raise MalformedReply(f"port number too long: {line[:80]!r}")
    server_port, client_port = int(first), int(second)
    kind_upper = kind.upper()
    try:
        if kind_upper == b"ERROR":
            token = rest.strip(_STRIP)
            try:
                text = token.decode("ascii")
            except UnicodeDecodeError:
                raise MalformedReply(f"non-ASCII error token: {token[:80]!r}") from None
            if text.upper() in ERROR_TOKENS or _X_TOKEN_RE.fullmatch(text):
                return ErrorReply(server_port, client_port, text)
            if not _TOKEN_RE.fullmatch(text):
                raise MalformedReply(f"invalid error token {token[:80]!r}")
            # A non-standard name that lacks the "X": keep it rather than lose what the
            # server said (liberal in what we accept); it bypasses the sender-side check.
            reply = object.__new__(ErrorReply)
            for name, value in (
                ("server_port", server_port),
                ("client_port", client_port),
                ("error", text),
            ):
                object.__setattr__(reply, name, value)
            return reply
        if kind_upper == b"USERID":
            opsys_field, sep, raw = rest.partition(b":")
            if not sep:
                raise MalformedReply(f"USERID reply without user id: {line[:80]!r}")
            opsys_bytes, comma, charset_bytes = opsys_field.partition(b",")
            try:
                opsys = opsys_bytes.strip(_STRIP).decode("ascii")
                charset = charset_bytes.strip(_STRIP).decode("ascii") if comma else None
            except UnicodeDecodeError:
                raise MalformedReply(f"non-ASCII opsys field: {opsys_field[:80]!r}") from None
            if raw.startswith(b" "):
                raw = raw[1:]
            return UserIdReply(server_port, client_port, opsys, raw, charset)
    except MalformedReply:
        raise
    except (ValueError, TypeError) as exc:
        raise MalformedReply(f"invalid ident reply ({exc}): {line[:80]!r}") from None
    raise MalformedReply(f"unknown reply type {kind!r}: {line[:80]!r}")


def split_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split complete lines (LF-terminated; a CR before it is whitespace) off a buffer.

    Returns the lines without their LF, and what remains after the last LF.
    """
    *lines, rest = buffer.split(b"\n")
    return lines, rest
