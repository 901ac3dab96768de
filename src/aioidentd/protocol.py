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
from typing import Final, Literal

from aioidentd.errors import InvalidQuery, MalformedReply
from aioidentd.messages import (
    _TOKEN_RE,
    _X_TOKEN_RE,
    ERROR_TOKENS,
    MAX_TOKEN,
    MAX_USER_ID,
    RANDOM_ALPHABET,
    RANDOM_LENGTH,
    SENDABLE_CHARSETS,
    Address,
    ErrorReply,
    Query,
    Reply,
    UserIdReply,
    check_charset,
    check_port,
    check_seconds,
    check_token,
    check_user_id_octets,
    check_user_id_text,
    encode_user_id,
    ip_of,
    random_numeric_id,
    random_user_id,
    safe_user_id,
    show_address,
    unmapped,
)

__all__ = [
    "ERROR_TOKENS",
    "MAX_LINE",
    "MAX_TOKEN",
    "MAX_USER_ID",
    "RANDOM_ALPHABET",
    "RANDOM_LENGTH",
    "SENDABLE_CHARSETS",
    "V4_MAPPED_PREFIX",
    "WHITESPACE",
    "Address",
    "ErrorReply",
    "InvalidQuery",
    "MalformedReply",
    "Query",
    "Reply",
    "ReplyStyle",
    "UserIdReply",
    "check_charset",
    "check_port",
    "check_seconds",
    "check_token",
    "check_user_id_octets",
    "check_user_id_text",
    "encode_reply",
    "encode_reply_tail",
    "encode_user_id",
    "error_line",
    "ip_of",
    "parse_ports",
    "parse_query",
    "parse_reply",
    "port_pair",
    "random_numeric_id",
    "random_user_id",
    "safe_user_id",
    "show_address",
    "split_lines",
    "unmapped",
]

#: RFC 1413 lets a client abort after this many octets without an end of line; the server
#: uses the same bound for its input so that one connection cannot grow a buffer unbounded.
MAX_LINE: Final = 1000
ReplyStyle = Literal["compact", "spaced"]

#: Whitespace accepted between tokens (and a line of nothing else is blank). The RFC
#: names space and tab; the seed (Perl's \s on bytes) also took VT, FF and CR, and a stray
#: CR before LF must be harmless anyway.
WHITESPACE: Final = b" \t\x0b\x0c\r"
_WS: Final = b"[" + re.escape(WHITESPACE) + b"]*"
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
#: The port pair at the start of a reply line, by reply style.
_PORT_PAIR: Final[dict[str, bytes]] = {"compact": b"%d,%d", "spaced": b"%d , %d"}

#: The first 12 octets of an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``).
V4_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"


def parse_query(line: bytes) -> Query:
    """Parse one query line (with or without its end of line).

    Raises :class:`InvalidQuery` for anything that is not two decimal ports 1..65535
    separated by a comma; its ``reply`` echoes the pair when both numbers parsed.
    """
    return Query(*parse_ports(line))


def parse_ports(line: bytes) -> tuple[int, int]:
    """:func:`parse_query` without the :class:`Query` object: the server's per-query path,
    which needs only the two numbers (same rules, same errors)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    # The usual query, without the regular expression: two runs of ASCII digits around
    # the one comma, whitespace allowed around each (bytes.isdigit() is ASCII only).
    first, comma, second = line.partition(b",")
    if comma:
        first = first.strip(WHITESPACE)
        second = second.strip(WHITESPACE)
        if 0 < len(first) <= 5 and 0 < len(second) <= 5 and first.isdigit() and second.isdigit():
            server_port, client_port = int(first), int(second)
            if 0 < server_port <= 65535 and 0 < client_port <= 65535:
                return server_port, client_port
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
    return server_port, client_port


def port_pair(server_port: int, client_port: int, style: ReplyStyle = "compact") -> bytes:
    """The port pair that starts a reply line in ``style`` (``6193,23`` or ``6193 , 23``)."""
    try:
        form = _PORT_PAIR[style]
    except KeyError:
        raise ValueError(f"reply style must be 'compact' or 'spaced', got {style!r}") from None
    return form % (server_port, client_port)


def encode_reply_tail(reply: Reply, style: ReplyStyle = "compact") -> bytes:
    """The reply line after its port pair, CR LF included: what does not change from one
    query to the next for the same answer, so that a server can keep it."""
    if style == "compact":
        if isinstance(reply, UserIdReply):
            if reply.charset is None:
                head = b":USERID:%s:" % reply.opsys.encode()
            else:
                head = b":USERID:%s,%s:" % (reply.opsys.encode(), reply.charset.encode())
            if reply.raw.startswith(b" "):
                # Readers strip one space after the colon (the usual separator); give them
                # one so that an id's own leading space survives.
                head += b" "
            return head + reply.raw + b"\r\n"
        return b":ERROR:%s\r\n" % reply.error.encode()
    if style == "spaced":
        if isinstance(reply, UserIdReply):
            opsys = reply.opsys if reply.charset is None else f"{reply.opsys} , {reply.charset}"
            return b" : USERID : %s : %s\r\n" % (opsys.encode(), reply.raw)
        return b" : ERROR : %s\r\n" % reply.error.encode()
    raise ValueError(f"reply style must be 'compact' or 'spaced', got {style!r}")


def encode_reply(reply: Reply, style: ReplyStyle = "compact") -> bytes:
    """The reply line, CR LF included, ready for a single write.

    ``compact`` is the RFC grammar's form (``6193,23:USERID:UNIX:stjohns``), which every
    current client accepts; ``spaced`` is the seed's and the RFC examples' form
    (``6193 , 23 : USERID : UNIX : stjohns``) for old parsers that insist on spaces.
    """
    tail = encode_reply_tail(reply, style)
    return _PORT_PAIR[style] % (reply.server_port, reply.client_port) + tail


def error_line(
    server_port: int, client_port: int, error: str, style: ReplyStyle = "compact"
) -> bytes:
    """Shorthand for ``encode_reply(ErrorReply(...), style)``."""
    return encode_reply(ErrorReply(server_port, client_port, error), style)


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
            token = rest.strip(WHITESPACE)
            try:
                text = token.decode("ascii")
            except UnicodeDecodeError:
                raise MalformedReply(f"non-ASCII error token: {token[:80]!r}") from None
            if text.upper() in ERROR_TOKENS or _X_TOKEN_RE.fullmatch(text):
                return ErrorReply(server_port, client_port, text)
            if not _TOKEN_RE.fullmatch(text):
                raise MalformedReply(f"invalid error token {token[:80]!r}")
            # A non-standard name that lacks the "X": keep it rather than lose what the
            # server said.
            return ErrorReply._received(server_port, client_port, text)
        if kind_upper == b"USERID":
            opsys_field, sep, raw = rest.partition(b":")
            if not sep:
                raise MalformedReply(f"USERID reply without user id: {line[:80]!r}")
            opsys_bytes, comma, charset_bytes = opsys_field.partition(b",")
            try:
                opsys = opsys_bytes.strip(WHITESPACE).decode("ascii")
                charset = charset_bytes.strip(WHITESPACE).decode("ascii") if comma else None
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
