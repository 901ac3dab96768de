"""Bounded framing of a byte stream: lines, or an HTTP request head, cut from whatever a
peer sends, without I/O.

Why a module of its own: every line protocol the daemon speaks (the claims socket, the
metrics endpoint) reads from someone who may send without end, or send one frame that
never ends. A :class:`Framer` holds at most ``limit`` octets of an unfinished frame plus
what one read delivered, scans each octet once (a frame is cut off the front of the
buffer, never by copying the rest), and says :data:`TOO_LONG` as soon as a frame cannot be
valid, so its caller can answer and close instead of buffering more.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["TOO_LONG", "Framer", "TooLong"]


class TooLong(enum.Enum):
    """A frame longer than the limit (the caller answers once and stops reading)."""

    TOO_LONG = "too long"


#: What :meth:`Framer.next` returns for a frame longer than its limit.
TOO_LONG: Final = TooLong.TOO_LONG


class Framer:
    """Frames ending in ``delimiter`` (not part of the frame), each at most ``limit``
    octets long (``include_delimiter``: the delimiter counts towards the limit, as an
    HTTP head's terminator does)."""

    __slots__ = ("_buffer", "_scanned", "_slack", "delimiter", "limit")

    def __init__(self, delimiter: bytes, limit: int, *, include_delimiter: bool = False) -> None:
        if not delimiter or limit < 1:
            raise ValueError("a delimiter and a positive limit")
        self.delimiter = delimiter
        self.limit = limit
        self._slack = len(delimiter) if include_delimiter else 0
        self._buffer = bytearray()
        #: Octets already searched for the delimiter without finding it.
        self._scanned = 0

    def __len__(self) -> int:
        """Octets held (of frames not yet taken)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> bytes | TooLong | None:
        """The next whole frame, :data:`TOO_LONG`, or None when no whole frame is held.
        After TOO_LONG the framer holds nothing (what followed is the caller's to drop)."""
        buffer = self._buffer
        start = max(self._scanned - len(self.delimiter) + 1, 0)
        end = buffer.find(self.delimiter, start)
        if end < 0:
            if len(buffer) > self.limit:  # no frame can end within the limit now
                self.clear()
                return TOO_LONG
            self._scanned = len(buffer)
            return None
        self._scanned = 0
        if end > self.limit - self._slack:
            self.clear()
            return TOO_LONG
        frame = bytes(buffer[:end])
        del buffer[: end + len(self.delimiter)]  # bytearray drops a prefix in O(1)
        return frame

    def clear(self) -> None:
        self._buffer.clear()
        self._scanned = 0

    @property
    def partial(self) -> bool:
        """Whether octets of an unfinished frame are held (after next() returned None)."""
        return bool(self._buffer)
