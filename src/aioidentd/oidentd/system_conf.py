"""oidentd's system-wide configuration file (``/etc/oidentd.conf``), read as oidentd 2.5
reads it, without any I/O.

The grammar (oidentd.conf(5)): at the top, ``default { RANGES }`` and ``user NAME {
RANGES }`` blocks; a range is ``default { STATEMENTS }`` or filters (``to HOST``,
``fport PORTS``, ``from HOST``, ``lport PORTS``, each at most once, in any order) and
``{ STATEMENTS }``; a statement is ``allow CAP``, ``deny CAP`` or ``force`` followed by a
capability, ``reply "a" ["b" ...]`` or ``forward HOST PORT``. Keywords are
case-insensitive; strings are bare words or quoted, with the user file's escapes (one
tokenizer for both files: :func:`aioidentd.policy.oidentd_conf.tokenize`).

What the file means, as oidentd evaluates it (facts this module keeps, because the
converter must reproduce them):

* a range's capabilities start from the *default capabilities* at the point where the
  range begins: those of the ``default`` range of the ``default`` block, once that range
  has been read (ranges written before it start from none);
* ``allow``/``deny`` add and remove capabilities; ``force X`` replaces them with X and
  makes the range forced, but a later ``allow``/``deny`` in the same range ends the force
  (its capability stays granted);
* within a block the **last** range written that matches a connection applies (oidentd
  prepends each range to its list); a user whose block has no matching range gets the
  ``default`` block's; a later ``default`` block replaces an earlier one.

A file oidentd would refuse to start with (syntax errors, a user named twice, a bad
port) raises :class:`OidentdSyntaxError` with its line.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Final

from aioidentd.errors import ReplyFileRefused
from aioidentd.policy.oidentd_conf import Token, tokenize

__all__ = [
    "CAPABILITIES",
    "Block",
    "Force",
    "OidentdSyntaxError",
    "Range",
    "SystemFile",
    "parse_port_range",
    "parse_system_file",
]

#: The capabilities ``allow``/``deny``/``force`` name (``reply`` is forced only).
CAPABILITIES: Final = (
    "spoof",
    "spoof_all",
    "spoof_privport",
    "hide",
    "random",
    "random_numeric",
    "numeric",
    "forward",
)
_STATEMENT_CAPS: Final = frozenset(CAPABILITIES) - {"forward"}
_FILTERS: Final = ("to", "fport", "from", "lport")
#: Replies ``force reply`` may list in the system file.
MAX_SYSTEM_REPLIES: Final = 255


class OidentdSyntaxError(ValueError):
    """An oidentd file oidentd itself would refuse: ``line N: what``."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class Force:
    """``force``: what the range answers whatever the user's file says."""

    kind: str  #: a capability, ``"reply"`` or ``"forward"``
    replies: tuple[str, ...] = ()
    forward: tuple[str, str] | None = None  #: (host, port) as written

    def __str__(self) -> str:
        if self.kind == "reply":
            return "force reply " + " ".join(f'"{reply}"' for reply in self.replies)
        if self.forward is not None:
            return f"force forward {self.forward[0]} {self.forward[1]}"
        return f"force {self.kind}"


@dataclass(frozen=True, slots=True)
class Range:
    """One range directive with its effective capabilities."""

    line: int
    #: The filters as written (``fport 6667 lport 1024:``), or ``default``.
    head: str
    to: str | None = None
    fport: tuple[int, int] | None = None
    source: str | None = None
    lport: tuple[int, int] | None = None
    caps: frozenset[str] = frozenset()
    force: Force | None = None
    #: ``(line, text)`` of each statement, for the converter's comments.
    statements: tuple[tuple[int, str], ...] = ()

    @property
    def is_default(self) -> bool:
        return self.head == "default"

    def filters(self) -> tuple[object, ...]:
        """What decides which connections the range matches (equal: the later one
        shadows the earlier)."""
        return (self.to, self.fport, self.source, self.lport)


@dataclass(frozen=True, slots=True)
class Block:
    """``default { ... }`` (``user`` None) or ``user NAME { ... }``, ranges in file order."""

    line: int
    user: str | None
    ranges: tuple[Range, ...]


@dataclass(frozen=True, slots=True)
class SystemFile:
    """The blocks that take effect: the last ``default`` block, and the user blocks in
    file order. ``replaced`` names default blocks a later one replaced."""

    default: Block | None = None
    users: tuple[Block, ...] = ()
    replaced: tuple[int, ...] = field(default=())


def parse_port_range(text: str) -> tuple[int, int] | None:
    """``N``, ``MIN:MAX``, ``:MAX``, ``MIN:`` or ``:``, each side a number or a service
    name (looked up in the services database, as oidentd does at start); None when not
    a port range."""
    low_text, sep, high_text = text.partition(":")
    low = _port(low_text) if low_text else 1
    high = low if not sep else (_port(high_text) if high_text else 65535)
    if low is None or high is None or low > high:
        return None
    return low, high


def _port(text: str) -> int | None:
    if text.isascii() and text.isdigit():
        number = int(text)
        return number if 1 <= number <= 65535 else None
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        return None


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.default_caps: frozenset[str] = frozenset()

    def line(self) -> int:
        if self.index < len(self.tokens):
            return self.tokens[self.index][2]
        return self.tokens[-1][2] if self.tokens else 1

    def peek(self) -> Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def word(self) -> str | None:
        """The next token as a keyword (lower case), or None when it is not a bare word."""
        token = self.peek()
        return token[1].lower() if token is not None and token[0] == "word" else None

    def take(self, what: str) -> Token:
        token = self.peek()
        if token is None:
            raise OidentdSyntaxError(self.line(), f"{what} expected, the file ends")
        self.index += 1
        return token

    def brace(self, brace: str) -> None:
        token = self.take(f"'{brace}'")
        if token[:2] != ("brace", brace):
            raise OidentdSyntaxError(token[2], f"'{brace}' expected, got {token[1]!r}")

    def string(self, what: str) -> str:
        kind, value, line = self.take(what)
        if kind == "brace" or (kind == "word" and value.lower() in _KEYWORDS):
            raise OidentdSyntaxError(line, f"{what} expected, got {value!r}")
        return value

    def parse(self) -> SystemFile:
        default: Block | None = None
        replaced: list[int] = []
        users: dict[str, Block] = {}
        while self.peek() is not None:
            word, line = self.word(), self.line()
            if word == "default":
                self.index += 1
                if default is not None:
                    replaced.append(default.line)
                default = self.block(line, None)
            elif word == "user":
                self.index += 1
                name = self.string("a user name")
                if name in users:
                    raise OidentdSyntaxError(
                        line, f"user {name!r} already has a block (line {users[name].line})"
                    )
                users[name] = self.block(line, name)
            else:
                shown = self.tokens[self.index][1]
                raise OidentdSyntaxError(
                    line,
                    f"{shown!r}: the system file holds only 'default' and 'user NAME' "
                    f"blocks ('global' and bare ranges are for users' files)",
                )
        return SystemFile(default, tuple(users.values()), tuple(replaced))

    def block(self, line: int, user: str | None) -> Block:
        self.brace("{")
        ranges: list[Range] = []
        while True:
            token = self.peek()
            if token is not None and token[:2] == ("brace", "}"):
                self.index += 1
                break
            ranges.append(self.range(user is None))
        if not ranges:
            raise OidentdSyntaxError(line, "a block needs at least one range")
        return Block(line, user, tuple(ranges))

    def range(self, in_default_block: bool) -> Range:
        line = self.line()
        caps = self.default_caps
        filters: dict[str, object] = {}
        words: list[str] = []
        if self.word() == "default":
            self.index += 1
            head = "default"
        else:
            while self.word() in _FILTERS:
                word = self.word() or ""
                at = self.line()
                self.index += 1
                value = self.string(f"a value after {word!r}")
                if word in filters:
                    raise OidentdSyntaxError(at, f"'{word}' can only be given once per range")
                if word.endswith("port"):
                    ports = parse_port_range(value)
                    if ports is None:
                        raise OidentdSyntaxError(at, f"bad port or port range: {value!r}")
                    filters[word] = ports
                else:
                    filters["source" if word == "from" else word] = value
                words.append(f"{word} {value}")
            if not words:
                bad = self.take("a range")
                raise OidentdSyntaxError(
                    bad[2],
                    f"a range ('default' or to/fport/from/lport) expected, got {bad[1]!r}",
                )
            head = " ".join(words)
        self.brace("{")
        force: Force | None = None
        statements: list[tuple[int, str]] = []
        while True:
            token = self.peek()
            if token is not None and token[:2] == ("brace", "}"):
                self.index += 1
                break
            at = self.line()
            action = self.word()
            self.index += 1
            if action in ("allow", "deny"):
                cap = self.word()
                if cap not in CAPABILITIES:
                    raise OidentdSyntaxError(
                        at, f"'{action}' needs a capability, got {self.take('a capability')[1]!r}"
                    )
                self.index += 1
                caps = caps | {cap} if action == "allow" else caps - {cap}
                force = None
                statements.append((at, f"{action} {cap}"))
            elif action == "force":
                force, caps = self.force(at)
                statements.append((at, str(force)))
            else:
                shown = token[1] if token is not None else "the end of the file"
                raise OidentdSyntaxError(at, f"'allow', 'deny' or 'force' expected, got {shown!r}")
        if not statements:
            raise OidentdSyntaxError(line, "a range needs at least one statement")
        result = Range(
            line,
            head,
            caps=caps,
            force=force,
            statements=tuple(statements),
            **filters,  # type: ignore[arg-type]
        )
        if in_default_block and result.is_default:
            # What every range read from here on starts from.
            self.default_caps = caps
        return result

    def force(self, at: int) -> tuple[Force, frozenset[str]]:
        what = self.word()
        if what in _STATEMENT_CAPS:
            self.index += 1
            return Force(what or ""), frozenset({what or ""})
        if what == "reply":
            self.index += 1
            replies = [self.string("a reply")]
            while (token := self.peek()) is not None and (
                token[0] == "string" or (token[0] == "word" and token[1].lower() not in _KEYWORDS)
            ):
                replies.append(token[1])
                self.index += 1
            if len(replies) > MAX_SYSTEM_REPLIES:
                raise OidentdSyntaxError(at, f"no more than {MAX_SYSTEM_REPLIES} replies")
            return Force("reply", tuple(replies)), frozenset({"reply"})
        if what == "forward":
            self.index += 1
            host = self.string("a host after 'force forward'")
            port = self.string("a port after 'force forward HOST'")
            if _port(port) is None:
                raise OidentdSyntaxError(at, f"bad port: {port!r}")
            return Force("forward", forward=(host, port)), frozenset({"forward"})
        shown = self.peek()[1] if self.peek() is not None else "the end of the file"  # type: ignore[index]
        raise OidentdSyntaxError(at, f"'force' needs a capability, reply or forward, got {shown!r}")


_KEYWORDS: Final = frozenset(
    {"user", "default", "global", "allow", "deny", "force", "reply", *_FILTERS, *CAPABILITIES}
)


def parse_system_file(text: str) -> SystemFile:
    """Read an oidentd system-wide configuration (see the module notes)."""
    try:
        tokens = tokenize(text)
    except ReplyFileRefused as exc:
        message = str(exc)
        number = message.removeprefix("line ").partition(":")[0]
        line = int(number) if number.isdigit() else 1
        raise OidentdSyntaxError(line, message.partition(": ")[2] or message) from None
    return _Parser(tokens).parse()
