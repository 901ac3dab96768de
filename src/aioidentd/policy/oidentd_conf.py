"""The subset of oidentd's *user* configuration file (``~/.config/oidentd.conf``,
``~/.oidentd.conf``) that users' tools write, without any I/O.

Switching from oidentd must not break what users run: ZNC's identfile module writes
``global { reply "NAME" }``; The Lounge rewrites one line per open connection,
``fport RPORT lport LPORT { reply "NAME" }`` (older releases) or
``to ADDR fport RPORT from ADDR lport LPORT { reply "NAME" }`` (since 4.4). So this reads
``global`` and range blocks (``to``/``fport``/``from``/``lport``, in any order, ports as
``N``, ``MIN:MAX``, ``:MAX`` or ``MIN:``) holding ``reply "a" ["b" ...]``, ``random``,
``random_numeric``, ``numeric`` and ``hide``, with ``#`` and ``/* */`` comments and
oidentd's string escapes.

What it does not understand (host names, service names, ``forward``, unknown words) is
never guessed at: the block or statement is left out and named, with its line, in
:attr:`UserFile.problems`, which the daemon logs and ``check-config --user-file`` prints.
A file whose braces or quotes do not close is refused as a whole
(:class:`~aioidentd.errors.ReplyFileRefused`).

Which block applies: the **last** block, in file order, whose filters all match the
connection, ``global`` (which matches every connection) included. This is oidentd's
rule (it puts each block it reads in front of the others), so a file that works with
oidentd answers the same here; its manual asks for ``global`` first, which makes it the
fallback.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final, Literal

from aioidentd.errors import ReplyFileRefused
from aioidentd.protocol import Address, ip_of, random_numeric_id, random_user_id, unmapped

__all__ = [
    "MAX_REPLIES",
    "Choice",
    "Entry",
    "Token",
    "UserFile",
    "parse_user_file",
    "tokenize",
]

#: oidentd takes at most 20 replies in a user file's ``reply`` list.
MAX_REPLIES: Final = 20

ChoiceKind = Literal["reply", "random", "random_numeric", "numeric", "hide"]
_SIMPLE: Final[frozenset[str]] = frozenset({"random", "random_numeric", "numeric", "hide"})
_ESCAPES: Final = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
}
_TOKEN: Final = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<block_comment>/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<brace>[{}])
  | (?P<word>[^\s{}"#]+)
    """,
    re.VERBOSE | re.DOTALL,
)

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Choice:
    """What a block says to answer: ``reply`` with its ``replies``, or one of the others."""

    kind: ChoiceKind
    replies: tuple[str, ...] = ()

    def user_id(self, uid: int) -> str | None:
        """The id to send (a fresh pick for ``reply`` lists and random kinds); None for
        ``hide``."""
        if self.kind == "reply":
            return secrets.choice(self.replies)
        if self.kind == "random":
            return random_user_id()
        if self.kind == "random_numeric":
            return random_numeric_id()
        if self.kind == "numeric":
            return str(uid)
        return None

    def __str__(self) -> str:
        if self.kind == "reply":
            return "reply " + " ".join(f'"{reply}"' for reply in self.replies)
        return self.kind


@dataclass(frozen=True, slots=True)
class Entry:
    """One block: ``global`` (no filters) or a range; ``None`` filters match anything."""

    line: int
    choice: Choice
    is_global: bool = False
    to: _Network | None = None
    fport: tuple[int, int] | None = None
    source: _Network | None = None
    lport: tuple[int, int] | None = None

    def __str__(self) -> str:
        if self.is_global:
            return f"global: {self.choice}"
        filters = []
        for word, value in (
            ("to", self.to),
            ("fport", self.fport),
            ("from", self.source),
            ("lport", self.lport),
        ):
            if isinstance(value, tuple):
                filters.append(
                    f"{word} {value[0]}" + ("" if value[0] == value[1] else f":{value[1]}")
                )
            elif value is not None:
                filters.append(
                    f"{word} {value.network_address if value.num_addresses == 1 else value}"
                )
        return f"{' '.join(filters)}: {self.choice}"

    def matches(self, local: Address, remote: Address) -> bool:
        if self.fport is not None and not self.fport[0] <= remote[1] <= self.fport[1]:
            return False
        if self.lport is not None and not self.lport[0] <= local[1] <= self.lport[1]:
            return False
        if self.to is not None and not _in(remote[0], self.to):
            return False
        return self.source is None or _in(local[0], self.source)


@dataclass(frozen=True, slots=True)
class UserFile:
    """A parsed user file: its usable blocks and, with line numbers, what was left out."""

    entries: tuple[Entry, ...]
    problems: tuple[str, ...] = ()

    def choose(self, local: Address, remote: Address) -> Entry | None:
        """The block for the connection ``local`` <-> ``remote``: the last one written
        that matches it (``global`` matches all), else None."""
        for entry in reversed(self.entries):
            if entry.is_global or entry.matches(local, remote):
                return entry
        return None


def _in(host: str, network: _Network) -> bool:
    try:
        address = ip_of(host)
    except ValueError:
        return False
    return address in network


Token = tuple[str, str, int]


def tokenize(text: str) -> list[Token]:
    """``(kind, value, line)`` of every token that matters (``kind`` is ``"string"`` for a
    quoted string, unescaped, ``"brace"`` or ``"word"``); refuses an unclosed quote or
    comment. The system file (:mod:`aioidentd.oidentd.system_conf`) has the same
    lexical grammar."""
    tokens: list[tuple[str, str, int]] = []
    line = 1
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            what = "comment" if text.startswith("/*", position) else "quoted string"
            raise ReplyFileRefused(f"line {line}: unclosed {what}")
        kind = match.lastgroup or ""
        value = match.group()
        if kind == "string":
            tokens.append((kind, _unescape(value[1:-1]), line))
        elif kind in ("brace", "word"):
            tokens.append((kind, value, line))
        line += value.count("\n")
        position = match.end()
    return tokens


def _unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        body = match.group(1)
        if body[0] in _ESCAPES:
            return _ESCAPES[body[0]]
        if body[0] == "x":
            return chr(int(body[1:], 16))
        return chr(int(body, 8) & 0xFF)

    return re.sub(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)", one, text)


def _ports(text: str) -> tuple[int, int] | None:
    low, sep, high = text.partition(":")
    if not sep:
        high = low
    if (low and not low.isdigit()) or (high and not high.isdigit()) or not (low or high):
        return None
    first, last = int(low or 1), int(high or 65535)
    if not 1 <= first <= last <= 65535:
        return None
    return first, last


def _network(text: str) -> _Network | None:
    try:
        return ipaddress.ip_network(unmapped(text.partition("%")[0]), strict=False)
    except ValueError:
        return None


def parse_user_file(text: str) -> UserFile:
    """Read an oidentd user file (see the module notes). Raises
    :class:`ReplyFileRefused` when its structure is broken. A leading byte order mark (a
    Windows editor's) is dropped, as the daemon's own configuration drops it."""
    tokens = tokenize(text.removeprefix("\ufeff"))
    entries: list[Entry] = []
    problems: list[str] = []
    index = 0
    while index < len(tokens):
        start = tokens[index][2]
        head, index = _until(tokens, index, "{", "'}' without a block")
        if index == len(tokens):
            raise ReplyFileRefused(f"line {start}: text after the last block: {head[0][1]!r}")
        body, index = _until(tokens, index + 1, "}", "'{' inside a block")
        if index == len(tokens):
            raise ReplyFileRefused(f"line {start}: block not closed with '}}'")
        index += 1
        entry = _entry(start, head, body, problems)
        if entry is not None:
            entries.append(entry)
    return UserFile(tuple(entries), tuple(problems))


def _until(
    tokens: list[tuple[str, str, int]], index: int, brace: str, stray: str
) -> tuple[list[tuple[str, str, int]], int]:
    """The tokens from ``index`` up to the next ``brace`` (or the end), and where they
    stop; the other brace on the way is the structural error ``stray``."""
    taken: list[tuple[str, str, int]] = []
    while index < len(tokens) and tokens[index][:2] != ("brace", brace):
        if tokens[index][0] == "brace":
            raise ReplyFileRefused(f"line {tokens[index][2]}: {stray}")
        taken.append(tokens[index])
        index += 1
    return taken, index


def _entry(
    line: int,
    head: list[tuple[str, str, int]],
    body: list[tuple[str, str, int]],
    problems: list[str],
) -> Entry | None:
    filters: dict[str, Any] = {}
    is_global = [value for _, value, _ in head] in (["global"], ["default"])
    if not head:
        problems.append(f"line {line}: a block without 'global' or a range (left out)")
        return None
    if not is_global:
        position = 0
        while position < len(head):
            _, word, at = head[position]
            if word not in ("to", "fport", "from", "lport") or position + 1 >= len(head):
                problems.append(f"line {at}: {word!r} is not understood (block left out)")
                return None
            value = head[position + 1][1]
            parsed: Any = _ports(value) if word.endswith("port") else _network(value)
            if parsed is None:
                what = "a port or MIN:MAX" if word.endswith("port") else "an IP address"
                problems.append(
                    f"line {at}: {word} {value!r} is not {what} (names are not looked up; "
                    f"block left out)"
                )
                return None
            filters["source" if word == "from" else word] = parsed
            position += 2
    choice = _choice(body, problems)
    if choice is None:
        problems.append(f"line {line}: the block says nothing this daemon uses (left out)")
        return None
    return Entry(line, choice, is_global, **filters)


def _choice(body: list[tuple[str, str, int]], problems: list[str]) -> Choice | None:
    """The block's last statement that says what to answer (as oidentd applies them in
    order); anything else is named in ``problems``."""
    choice: Choice | None = None
    position = 0
    while position < len(body):
        kind, word, at = body[position]
        position += 1
        if kind == "word" and word in _SIMPLE:
            choice = Choice(word)  # type: ignore[arg-type]
        elif kind == "word" and word == "reply":
            replies: list[str] = []
            while position < len(body) and body[position][0] == "string":
                replies.append(body[position][1])
                position += 1
            if not replies:
                problems.append(f"line {at}: 'reply' needs a quoted reply (ignored)")
            elif len(replies) > MAX_REPLIES:
                problems.append(f"line {at}: more than {MAX_REPLIES} replies (ignored)")
            else:
                choice = Choice("reply", tuple(replies))
        else:
            shown = f'"{word}"' if kind == "string" else word
            problems.append(f"line {at}: {shown!r} is not understood (ignored)")
            if kind == "word" and word == "forward":
                position = min(len(body), position + 2)  # its host and port
    return choice
