"""oidentd 2.5's command line (as in a unit's ``ExecStart`` or ``OIDENT_OPTIONS`` in
``/etc/default/oidentd``), parsed as its ``getopt_long`` does, without acting on it.

Short options cluster (``-mf``, ``-l10``), a required argument may be attached or the
next word, and the two optional ones (``-f[PORT]``, ``-o[OS]``, ``--forward[=PORT]``,
``--other[=OS]``) take an argument only when attached. Long options may be abbreviated
to any unambiguous prefix, as getopt allows.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Final

__all__ = ["Flag", "FlagError", "parse_flags"]

#: short letter -> (long name, argument: "none", "required" or "optional")
_OPTIONS: Final[dict[str, tuple[str, str]]] = {
    "a": ("address", "required"),
    "c": ("charset", "required"),
    "C": ("config", "required"),
    "d": ("debug", "none"),
    "e": ("error", "none"),
    "f": ("forward", "optional"),
    "g": ("group", "required"),
    "h": ("help", "none"),
    "i": ("foreground", "none"),
    "I": ("stdio", "none"),
    "l": ("limit", "required"),
    "m": ("masquerade", "none"),
    "M": ("masquerade-first", "none"),
    "0": ("forward-last", "none"),
    "o": ("other", "optional"),
    "p": ("port", "required"),
    "P": ("proxy", "required"),
    "q": ("quiet", "none"),
    "r": ("reply", "required"),
    "R": ("reply-all", "required"),
    "S": ("nosyslog", "none"),
    "t": ("timeout", "required"),
    "u": ("user", "required"),
    "U": ("udb", "none"),
    "v": ("version", "none"),
}
_BY_LONG: Final = {long: short for short, (long, _) in _OPTIONS.items()}


class FlagError(ValueError):
    """A command line oidentd would refuse (an unknown option, a missing argument)."""


@dataclass(frozen=True, slots=True)
class Flag:
    """One option: its short letter, its argument (None when it has none), and how it
    was written (for messages and comments). A word that is no option (oidentd ignores
    it: ``-f 5000`` is ``-f`` and a stray ``5000``) has the letter ``""``."""

    letter: str
    value: str | None
    text: str


def parse_flags(text: str) -> list[Flag]:
    """The options of an oidentd command line; a leading ``oidentd`` (or its path) and
    ``OIDENT_OPTIONS=`` are skipped, so that a line copied from a unit or from
    ``/etc/default/oidentd`` reads as it is."""
    try:
        words = shlex.split(text, comments=True)
        if len(words) == 1 and words[0].startswith("OIDENT_OPTIONS="):
            # The shell variable's value, quotes already taken off by the first split.
            words = shlex.split(words[0].removeprefix("OIDENT_OPTIONS="), comments=True)
    except ValueError as exc:
        raise FlagError(f"cannot split the flags: {exc}") from None
    if words and not words[0].startswith("-") and words[0].rpartition("/")[2] == "oidentd":
        words = words[1:]
    flags: list[Flag] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            flags.extend(Flag("", rest, rest) for rest in words[index:])
            break
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            letter = _long(name)
            long, argument = _OPTIONS[letter]
            if argument == "none" and eq:
                raise FlagError(f"--{long} takes no argument, got {word!r}")
            if argument == "required" and not eq:
                if index >= len(words):
                    raise FlagError(f"--{long} needs an argument")
                value = words[index]
                index += 1
            flags.append(Flag(letter, value if (eq or argument == "required") else None, word))
            continue
        if not word.startswith("-") or word == "-":
            flags.append(Flag("", word, word))
            continue
        position = 1
        while position < len(word):
            letter = word[position]
            position += 1
            if letter not in _OPTIONS:
                raise FlagError(f"unknown option -{letter} in {word!r}")
            argument = _OPTIONS[letter][1]
            if argument == "none":
                flags.append(Flag(letter, None, f"-{letter}"))
                continue
            rest = word[position:]
            if argument == "optional":
                flags.append(Flag(letter, rest or None, f"-{letter}{rest}"))
            elif rest:
                flags.append(Flag(letter, rest, f"-{letter}{rest}"))
            elif index < len(words):
                flags.append(Flag(letter, words[index], f"-{letter} {words[index]}"))
                index += 1
            else:
                raise FlagError(f"-{letter} needs an argument")
            break
    return flags


def _long(name: str) -> str:
    if name in _BY_LONG:
        return _BY_LONG[name]
    matches = [long for long in _BY_LONG if long.startswith(name)] if name else []
    if len(matches) == 1:
        return _BY_LONG[matches[0]]
    if matches:
        raise FlagError(f"--{name} is ambiguous: {', '.join('--' + m for m in matches)}")
    raise FlagError(f"unknown option --{name}")
