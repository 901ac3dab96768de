"""Where each table and key of a TOML document was written: the line numbers that make a
configuration error say ``file:line``.

:mod:`tomllib` keeps no positions, so :class:`Locator` re-reads the raw text. It is a line
scanner, not a second parser; syntax errors never reach it (they carry tomllib's line).
"""

from __future__ import annotations

import re
import tomllib
from typing import Final, TypeAlias

__all__ = ["Locator", "Path"]

#: A place in the parsed document: table names, keys and array indexes, outermost first.
Path: TypeAlias = tuple[str | int, ...]

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_BLANK: Final = " \t"


def _parse_key(text: str, pos: int) -> tuple[list[str], int] | None:
    """Parse a (dotted) TOML key at ``pos``; return its parts and the position after it."""
    parts: list[str] = []
    while True:
        while pos < len(text) and text[pos] in _BLANK:
            pos += 1
        if pos >= len(text):
            return None
        char = text[pos]
        if char == '"':
            end = pos + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                return None
            try:
                parts.append(tomllib.loads(f"k = {text[pos : end + 1]}")["k"])
            except tomllib.TOMLDecodeError:
                return None
            pos = end + 1
        elif char == "'":
            end = text.find("'", pos + 1)
            if end < 0:
                return None
            parts.append(text[pos + 1 : end])
            pos = end + 1
        else:
            match = _BARE_KEY.match(text, pos)
            if match is None:
                return None
            parts.append(match.group())
            pos = match.end()
        while pos < len(text) and text[pos] in _BLANK:
            pos += 1
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return parts, pos


class Locator:
    """Maps a path in the parsed document to the line where it was written.

    A line scanner, not a parser: it follows table headers (``[a.b]``, ``[[a]]`` with
    a running index per array), ``key =`` lines (dotted and quoted keys too) and skips
    the inside of multi-line strings, which is all a config file of this schema contains.
    Anything it cannot place is reported at the line of its nearest located parent.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[Path, int] = {}
        arrays: dict[Path, int] = {}
        table: Path = ()
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            stripped = line.lstrip(_BLANK)
            rest = stripped
            if stripped.startswith("[["):
                parsed = _parse_key(stripped, 2)
                if parsed is not None and stripped[parsed[1] :].startswith("]]"):
                    name = tuple(parsed[0])
                    index = arrays.get(name, -1) + 1
                    arrays[name] = index
                    table = (*name, index)
                    self._add(table, number)
                    rest = stripped[parsed[1] + 2 :]
            elif stripped.startswith("["):
                parsed = _parse_key(stripped, 1)
                if parsed is not None and stripped[parsed[1] :].startswith("]"):
                    table = tuple(parsed[0])
                    self._add(table, number)
                    rest = stripped[parsed[1] + 1 :]
            elif stripped and stripped[0] not in "#":
                parsed = _parse_key(stripped, 0)
                if parsed is not None and stripped[parsed[1] :].startswith("="):
                    self._add((*table, *parsed[0]), number)
                    rest = stripped[parsed[1] + 1 :]
            for delimiter in ('"""', "'''"):
                if rest.count(delimiter) % 2 == 1:
                    in_string = delimiter
                    break

    def _add(self, path: Path, number: int) -> None:
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], number)

    def line_of(self, path: Path) -> int | None:
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None
