"""The protocol's values: a query, the two kinds of reply, and the rules that make a reply
impossible to build wrong.

Apart from :mod:`aioidentd.protocol` (which parses and formats lines) so that the
exceptions can name these values without importing the parser that raises them: this
module imports nothing of the package, :mod:`aioidentd.errors` sits on it, and the
protocol on both. Every name here is also :mod:`aioidentd.protocol`'s, where users find
them.

Strict in what is sent: a reply object cannot be built from a value that would put
something invalid on the wire (an injected CR LF, a colon in the opsys, an oversized id).
The constructors raise :class:`ValueError` saying what is wrong.
"""

from __future__ import annotations

import codecs
import ipaddress
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ERROR_TOKENS",
    "MAX_TOKEN",
    "MAX_USER_ID",
    "RANDOM_ALPHABET",
    "RANDOM_LENGTH",
    "SENDABLE_CHARSETS",
    "Address",
    "ErrorReply",
    "Query",
    "Reply",
    "UserIdReply",
    "check_charset",
    "check_port",
    "check_seconds",
    "check_token",
    "check_user_id_octets",
    "check_user_id_text",
    "encode_user_id",
    "ip_of",
    "random_numeric_id",
    "random_user_id",
    "safe_user_id",
    "show_address",
    "unmapped",
]

#: A server SHOULD NOT send more than 512 octets of user id (RFC 1413, "Notes on Syntax").
MAX_USER_ID: Final = 512
#: Tokens (opsys, charset, error names) are at most 64 characters long.
MAX_TOKEN: Final = 64

#: The four error names RFC 1413 defines; anything else must be an "X" token.
ERROR_TOKENS: Final = frozenset({"INVALID-PORT", "NO-USER", "HIDDEN-USER", "UNKNOWN-ERROR"})

# Printable US-ASCII except the colon: the RFC's token characters. Commas are refused in
# opsys and charset because the comma separates the two on the wire.
_TOKEN_RE: Final = re.compile(f"[!-9;-~]{{1,{MAX_TOKEN}}}")
_OPSYS_RE: Final = re.compile(f"[!-+\\--9;-~]{{1,{MAX_TOKEN}}}")
_X_TOKEN_RE: Final = re.compile(f"X[!-9;-~]{{1,{MAX_TOKEN - 1}}}")

#: Random user ids: 8 characters of [a-z0-9] (41 bits, so two queries never link), a
#: name every IRC server accepts.
RANDOM_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
RANDOM_LENGTH: Final = 8

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


def check_seconds(name: str, value: float) -> None:
    """Raise TypeError/ValueError unless ``value`` is a positive, finite number of seconds
    (a timeout, a deadline): the one rule for the server, the client, the configuration
    and the command line."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):  # also refuses NaN
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def check_token(name: str, value: str) -> None:
    """Raise TypeError/ValueError unless ``value`` can be an opsys or a charset on the wire:
    1-64 printable US-ASCII characters, no colon (it ends the field), no comma (it
    separates opsys from charset)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
    if not _OPSYS_RE.fullmatch(value):
        raise ValueError(
            f"{name} must be 1-{MAX_TOKEN} printable ASCII characters without ':' or ',', "
            f"got {value!r}"
        )


#: Characters no user id given as text may contain, by class: each either ends a line for
#: some reader (CR, LF, NEL, LS, PS), drives a terminal (ESC, the 8-bit CSI U+009B), or
#: makes the id display as something else than it is (the bidirectional controls, which
#: can make ``evil`` read as ``live`` in a log or an IRC client).
_REFUSED_CHARACTERS: Final = (
    ("\x00-\x1f\x7f", "control characters (CR, LF, ...)"),
    ("\x80-\x9f", "C1 control characters (U+0080-U+009F: NEL, CSI, ...)"),
    ("\u2028\u2029", "line or paragraph separators (U+2028, U+2029)"),
    (
        "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069",
        "bidirectional controls (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069)",
    ),
)
_REFUSED_RE: Final = re.compile("[" + "".join(chars for chars, _ in _REFUSED_CHARACTERS) + "]")
_REFUSED_CLASSES: Final = tuple(
    (re.compile(f"[{chars}]"), what) for chars, what in _REFUSED_CHARACTERS
)


def check_user_id_text(text: str) -> None:
    """Raise ValueError if ``text`` contains a character no user id may carry: C0 and C1
    controls, DEL, the Unicode line and paragraph separators, bidirectional controls.

    The one rule for every id this package sends from text (a fixed answer, ``serve
    --default``, a user's reply file, a claim, ``IdentRequest.reply``): a querier logs the
    id and shows it to people, so nothing in it may break a line, start a terminal
    sequence or reorder what is displayed. Ids given as bytes are the caller's octets and
    are only held to the wire's rule (no CR, LF or NUL).
    """
    found = _REFUSED_RE.search(text)
    if found is None:
        return
    for pattern, what in _REFUSED_CLASSES:  # pragma: no branch - one of them matched
        if pattern.match(found.group()):
            raise ValueError(f"user id must not contain {what}: {text!r}")


#: The charsets an id given as text may be sent in, as :func:`codecs.lookup` names them
#: (any alias it knows is accepted: ``UTF8``, ``latin1``, ``ISO_8859-15``). Each is a
#: superset of US-ASCII octet for octet, so a reader that ignores the charset (most do)
#: still reads every ASCII character as what it is, and none sends a control octet for a
#: printable character. Refused: EBCDIC (``cp037``: ``e`` is octet 0x85, NEL for
#: everyone else), the UTF-16 and UTF-32 families (NUL octets), UTF-7 (ASCII letters
#: that mean other characters), the Windows and KOI8 code pages (printable characters
#: at octets 0x80-0x9F, C1 controls to a Latin-1 reader), and Python's text transforms
#: (``unicode_escape``, ``idna``, ``rot13``).
SENDABLE_CHARSETS: Final = frozenset(
    {"ascii", "utf-8"} | {f"iso8859-{n}" for n in (*range(1, 12), *range(13, 17))}
)

#: Octets no id sent from text may carry, whatever its charset says they mean: C0 and
#: DEL end lines and drive terminals for every reader.
_CONTROL_OCTETS: Final = re.compile(b"[\x00-\x1f\x7f]")
#: Octets that are C1 controls (NEL, CSI) to a Latin-1 reader: allowed only inside a
#: UTF-8 sequence (as continuation octets), which no reader takes for a control.
_C1_OCTETS: Final = re.compile(b"[\x80-\x9f]")


def _codec_of(charset: str) -> str:
    try:
        codec = codecs.lookup(charset).name
    except LookupError:
        raise ValueError(f"unknown charset {charset!r} (try 'UTF-8')") from None
    if codec not in SENDABLE_CHARSETS:
        raise ValueError(
            f"charset {charset!r} cannot be sent (US-ASCII, UTF-8 and ISO-8859-1..16 can)"
        )
    return codec


def check_charset(name: str, value: str) -> str:
    """Raise TypeError/ValueError unless ids given as text may be sent in charset
    ``value`` (a token naming one of :data:`SENDABLE_CHARSETS`, by any alias); return
    the codec's name. :func:`encode_user_id` applies the same rule to every id it
    encodes (a claim's, a forwarded or NAT-relayed answer's, ``IdentRequest.reply``'s);
    this is its form for a setting (``[reply] charset``), checked at load."""
    check_token(name, value)
    try:
        return _codec_of(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def check_user_id_octets(raw: bytes, charset: str | None = None) -> None:
    """Raise ValueError if the octets ``raw`` (an id sent in ``charset``) hold an octet
    that is a control to some reader: C0 or DEL for everyone, 0x80-0x9F (C1 controls to a
    Latin-1 reader) unless ``charset`` is UTF-8 and they continue a UTF-8 sequence.

    The rule holds for what leaves, not for the text before encoding: it is what a
    querier logs and shows, whichever charset it decodes by."""
    found = _CONTROL_OCTETS.search(raw) or _C1_OCTETS.search(raw)
    if found is not None and found.group()[0] >= 0x80 and _is_utf8(raw, charset):
        found = None  # continuation octets of UTF-8 sequences
    if found is not None:
        raise ValueError(f"user id would send the control octet 0x{found.group()[0]:02x}: {raw!r}")


def _is_utf8(raw: bytes, charset: str | None) -> bool:
    if charset is None or _codec_of(charset) != "utf-8":
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode_user_id(user_id: str | bytes, charset: str | None = None) -> bytes:
    """The octets a USERID reply carries for ``user_id``; ValueError says why it cannot
    be sent (not encodable by ``charset``, US-ASCII by default; a charset outside
    :data:`SENDABLE_CHARSETS`; empty; over 512 octets; CR, LF or NUL; for text, any
    character :func:`check_user_id_text` refuses and any octet
    :func:`check_user_id_octets` refuses), TypeError when it is neither text nor bytes."""
    if isinstance(user_id, str):
        try:
            raw = user_id.encode("ascii" if charset is None else _codec_of(charset))
        except UnicodeEncodeError:
            raise ValueError(
                f"user id {user_id!r} is not {charset or 'US-ASCII'}; "
                f"pass charset='UTF-8' to send it"
            ) from None
        _check_raw_user_id(raw)
        check_user_id_text(user_id)
        if charset is not None:  # in US-ASCII the octets are the text, checked just above
            check_user_id_octets(raw, charset)
        return raw
    if isinstance(user_id, bytes):
        _check_raw_user_id(user_id)
        return user_id
    raise TypeError(f"user id must be str or bytes, not {type(user_id).__name__}")


def _check_raw_user_id(raw: bytes) -> None:
    if not isinstance(raw, bytes):
        raise TypeError(f"raw must be bytes, not {type(raw).__name__}")
    if not 1 <= len(raw) <= MAX_USER_ID:
        raise ValueError(f"user id must be 1-{MAX_USER_ID} octets, got {len(raw)}")
    if b"\r" in raw or b"\n" in raw or b"\0" in raw:
        raise ValueError(f"user id must not contain CR, LF or NUL: {raw!r}")


def safe_user_id(text: str, charset: str | None = None) -> bytes:
    """The octets to send for an id an administrator or a user chose (a fixed answer,
    ``serve --default``, a reply file); ValueError says why not.

    Stricter than :func:`encode_user_id`, which takes colons and blanks (an embedding
    application's handler may mean them): a colon breaks clients that count colons
    (InspIRCd), and surrounding blanks are stripped by most parsers (so the id would not
    be what was configured). Control characters are refused by both
    (:func:`check_user_id_text`).
    """
    if not text:
        raise ValueError("user id must not be empty")
    if text != text.strip():
        raise ValueError(f"user id must not start or end with blanks: {text!r}")
    if ":" in text:
        raise ValueError(f"user id must not contain ':' (clients count colons): {text!r}")
    check_user_id_text(text)
    return encode_user_id(text, charset)


def random_user_id() -> str:
    """A fresh random user id (:data:`RANDOM_ALPHABET`, :data:`RANDOM_LENGTH` long), drawn
    with :mod:`secrets` so that one answer says nothing about the next."""
    return "".join(secrets.choice(RANDOM_ALPHABET) for _ in range(RANDOM_LENGTH))


def random_numeric_id() -> str:
    """``user`` and a fresh number from 0 to 99999 (``user4711``): oidentd's
    ``random_numeric``, kept in its exact form so that hosts moving from oidentd send
    the same kind of id."""
    return f"user{secrets.randbelow(100000)}"


def show_address(address: Address) -> str:
    """``host:port`` for people (logs, messages, explain), IPv6 hosts in brackets as in
    URLs (``[::1]:113``) so that the port is not read as part of the address."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``host`` as an IP address to compare or to put on the wire: v4-mapped hosts as
    IPv4 (:func:`unmapped`), an IPv6 scope (``%eth0``) dropped. Raises :class:`ValueError`
    for a host that is not an IP address."""
    return ipaddress.ip_address(unmapped(host).partition("%")[0])


def unmapped(host: str) -> str:
    """``1.2.3.4`` for ``::ffff:1.2.3.4``; any other host unchanged.

    A dual-stack socket reports IPv4 peers in the v4-mapped form; everything that compares
    or reaches addresses (policy networks, the client's source address, the lookups)
    treats both spellings as the one IPv4 host.
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return host


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
        check_token("opsys", self.opsys)
        if self.charset is not None:
            check_token("charset", self.charset)
        _check_raw_user_id(self.raw)

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
        return cls(server_port, client_port, opsys, encode_user_id(user_id, charset), charset)

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

    @classmethod
    def _received(cls, server_port: int, client_port: int, error: str) -> ErrorReply:
        """A reply as a peer sent it, trusted as :func:`parse_reply` has checked it: keeps
        a non-standard error name that lacks the ``X`` (liberal in what is accepted),
        which the sender-side check of the constructor refuses."""
        reply = object.__new__(cls)
        object.__setattr__(reply, "server_port", server_port)
        object.__setattr__(reply, "client_port", client_port)
        object.__setattr__(reply, "error", error)
        return reply

    def __str__(self) -> str:
        return f"ERROR {self.error}"


Reply = UserIdReply | ErrorReply
