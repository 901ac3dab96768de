"""Log lines that anyone on the network can trigger, at a bounded rate.

An identd listens on a public port: if every refused connection, invalid line or failing
handler wrote its own log line, an attacker could fill the disk or drown the messages an
administrator needs. :class:`RateLimitedLog` writes the first event of each kind in full,
counts the rest, and writes one summary line per interval while they keep coming ("412
more connections refused in the last 10 s"). One timer per kind of event, armed only while
events are being counted, writes the summary when the interval ends; :meth:`close` writes
what is still owed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final

__all__ = ["LOG_INTERVAL", "RateLimitedLog"]

#: Seconds between two lines of the same kind of event.
LOG_INTERVAL: Final = 10.0


class _Window:
    __slots__ = ("count", "level", "start", "timer", "what")

    def __init__(self, start: float, what: str, level: int) -> None:
        self.start = start
        self.count = 0  # events not written since ``start``
        self.what = what
        self.level = level
        self.timer: Any = None


class RateLimitedLog:
    """One full line per kind of event and interval, then a count.

    ``kind`` is any hashable key (``"refused"``, or ``("handler", handler)`` so that each
    handler's first traceback is written in full). ``summary`` names the event in the
    plural for the count line ("connections refused").
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        call_later: Callable[[float, Callable[[], None]], Any] | None = None,
        max_kinds: int = 1024,
    ) -> None:
        self._logger = logger
        self.interval = interval
        self._clock = clock
        #: ``loop.call_later``: without it the summary waits for the next event or close().
        self._call_later = call_later
        self._windows: dict[Hashable, _Window] = {}
        # Kinds keyed by handler objects must not grow without bound in a long-lived
        # process that registers handlers on the fly.
        self._max_kinds = max_kinds

    def log(
        self,
        kind: Hashable,
        level: int,
        summary: str,
        msg: str,
        *args: Any,
        exc_info: Any = None,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        """Write ``msg % args`` (with the record's ``extra`` fields, for structured logs)
        unless a line of this kind was written less than an interval ago; returns whether
        it was written."""
        logger = self._logger
        if not logger.isEnabledFor(level):
            return False
        now = self._clock()
        window = self._windows.get(kind)
        if window is not None and now - window.start < self.interval:
            window.count += 1
            if window.count == 1 and self._call_later is not None:
                counted = window
                delay = max(window.start + self.interval - now, 0.0)
                window.timer = self._call_later(delay, lambda: self._due(counted))
            return False
        if window is not None:
            self._summary(window, now)
            window.start = now
        else:
            if len(self._windows) >= self._max_kinds:
                self.close()
            window = self._windows[kind] = _Window(now, summary, level)
        logger.log(level, msg, *args, exc_info=exc_info, extra=extra)
        return True

    def _due(self, window: _Window) -> None:
        window.timer = None
        now = self._clock()
        self._summary(window, now)
        window.start = now  # the next interval starts with this summary line

    def _summary(self, window: _Window, now: float) -> None:
        if window.timer is not None:
            window.timer.cancel()
            window.timer = None
        if not window.count:
            return
        self._logger.log(
            window.level,
            "%d more %s in the last %.0f s (one line per %.0f s)",
            window.count,
            window.what,
            max(now - window.start, 0.0),
            self.interval,
        )
        window.count = 0

    def close(self) -> None:
        """Write the counts still owed and cancel the timers (nothing goes unreported)."""
        now = self._clock()
        for window in self._windows.values():
            self._summary(window, now)
        self._windows.clear()
