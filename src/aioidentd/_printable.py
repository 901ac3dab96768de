"""Text that someone else wrote, made safe to print: what an admin command shows root
(a user's oidentd file, a forward target's answer, an id) may hold terminal escapes,
bells, carriage returns or bidirectional controls, and printing them as they are lets
that someone redraw root's terminal. Each character that is not printable is shown as a
Python escape instead (``\\x1b``, ``\\u202e``), so what is shown is what was written."""

from __future__ import annotations

__all__ = ["printable", "printable_lines"]


def printable(text: str) -> str:
    """``text`` with every character that is not printable (:meth:`str.isprintable`:
    C0 and C1 controls, DEL, line separators, format characters) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def printable_lines(text: str) -> str:
    """:func:`printable` for each line of ``text``: its LFs stay line ends, every other
    line-breaking character (CR, NEL, U+2028) is escaped."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
