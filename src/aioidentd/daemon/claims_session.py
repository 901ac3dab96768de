"""One connection to the claims socket, without I/O: request lines in, events out,
answer lines out, its deadline and its end as plain values.

All the state of a control connection's *protocol* lives here (what the claims it holds
mean is :class:`~aioidentd.daemon.claims_socket.ClaimsService`'s): the bounded line
buffer, the answers not yet taken by the driver, the deadline and the end decision. The
socket driver (:mod:`aioidentd.driver`) reads the attributes after every call.

The rules, each against one way a local user could hurt the daemon:

* a line is at most :data:`MAX_REQUEST` octets; a longer one gets one refusal, then the
  connection ends (nothing more is read into memory);
* at most :data:`BUDGET` lines (:data:`BUDGET_OCTETS` octets) are handled per call, so a
  burst of 200 KiB of newlines is served in slices between which the event loop answers
  ident queries (``more``);
* half a line may not hold the connection for ever (``partial_timeout`` after its first
  octet); an idle connection between requests may, since it keeps its claims alive;
* whatever JSON cannot be read (not JSON, not UTF-8, nested deeper than
  :data:`MAX_DEPTH`) becomes a clear refusal on the wire, never an exception; the depth
  is our own limit, not the parser's, whose recursion limit differs between Pythons
  (3.11 gives up near 1,000 levels, 3.12 reads far deeper);
* once the connection is ending, at most :data:`LINGER` seconds are left for the peer to
  read the last answers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

from aioidentd.driver import ABORT, CLOSE, KEEP, SHUT_WR
from aioidentd.lines import TOO_LONG, Framer

__all__ = [
    "BUDGET",
    "BUDGET_OCTETS",
    "LINGER",
    "MAX_DEPTH",
    "MAX_REQUEST",
    "ClaimsSession",
    "Malformed",
    "Request",
]

#: The longest request line read; a longer one ends the control connection.
MAX_REQUEST: Final = 2048
#: The deepest nesting of arrays and objects read; a request needs two levels.
MAX_DEPTH: Final = 32
#: Request lines, and octets of them, handled per call before the event loop gets its
#: turn (an answer is at most a little longer than its request, so this bounds what one
#: call can add to the write buffer too).
BUDGET: Final = 32
BUDGET_OCTETS: Final = 8192
#: Seconds an ending connection has to read its last answers.
LINGER: Final = 5.0


@dataclass(frozen=True, slots=True)
class Request:
    """A line that is JSON: what the service is asked to do (any JSON value)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Malformed:
    """A line that is no request at all; ``reason`` is the refusal to send, ``kind`` the
    class of event for the rate-limited log."""

    kind: str
    reason: str


Event = Request | Malformed


_OPEN: Final = frozenset(b"[{")
_CLOSE: Final = frozenset(b"]}")
_QUOTE: Final = ord('"')
_BACKSLASH: Final = ord("\\")


def nested_too_deeply(line: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the line opens more than ``limit`` arrays or objects inside each other
    (brackets inside JSON strings do not count)."""
    if line.count(b"[") + line.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for octet in line:
        if in_string:
            if escaped:
                escaped = False
            elif octet == _BACKSLASH:
                escaped = True
            elif octet == _QUOTE:
                in_string = False
        elif octet == _QUOTE:
            in_string = True
        elif octet in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif octet in _CLOSE:
            depth -= 1
    return False


def parse(line: bytes) -> Event:
    """One request line read as JSON, or why it cannot be."""
    if nested_too_deeply(line):
        return Malformed("garbage", "request nested too deeply")
    try:
        return Request(json.loads(line))
    except RecursionError:
        return Malformed("garbage", "request nested too deeply")
    except (ValueError, UnicodeDecodeError):
        return Malformed("garbage", "not a JSON object")


def answer(reason: str | None) -> bytes:
    """The answer line: ``{"ok": true}`` or ``{"ok": false, "error": reason}``."""
    if reason is None:
        return b'{"ok": true}\n'
    return json.dumps({"ok": False, "error": reason}).encode() + b"\n"


class ClaimsSession:
    """The protocol of one control connection of user ``uid``."""

    __slots__ = (
        "_eof",
        "_framer",
        "_held",
        "_out",
        "_partial_since",
        "activity",
        "deadline",
        "end",
        "evictable",
        "more",
        "partial_timeout",
        "uid",
        "want_read",
    )

    def __init__(self, now: float, uid: int, partial_timeout: float = 10.0) -> None:
        self.uid = uid
        self.partial_timeout = partial_timeout
        self.deadline = math.inf
        self.want_read = True
        self.more = False
        self.end = KEEP
        #: Grows with every slice of requests read: the driver's order of eviction.
        self.activity = 0
        #: The service clears it while the connection holds claims (see the driver).
        self.evictable = True
        self._framer = Framer(b"\n", MAX_REQUEST)
        self._out: list[bytes] = []
        self._eof = False
        self._held = False
        self._partial_since = math.inf

    # -- the driver's calls -------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Event] | None:
        if self.end != KEEP:
            if not data and self.end == SHUT_WR:
                self._finish(CLOSE, now)  # the peer read its answers and is gone
            return None  # an ending connection's input is dropped
        if not data:
            self._eof = True
        else:
            self._framer.feed(data)
        return self._lines(now)

    def resume(self, now: float) -> list[Event] | None:
        if self.end != KEEP or self._held:
            return None
        return self._lines(now)

    def timer(self, now: float) -> None:
        if self.end != KEEP:
            self.end = ABORT  # the linger is over: what is unsent is dropped
        else:
            # Half a line for partial_timeout: the peer stopped mid-request.
            self._finish(CLOSE, now)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    # -- the service's calls ------------------------------------------------------------

    def reply(self, reason: str | None) -> None:
        """Answer the oldest request not yet answered (None: it succeeded)."""
        if self.end in (KEEP, SHUT_WR, CLOSE):
            self._out.append(answer(reason))

    def hold(self) -> None:
        """A request is being carried out elsewhere (off the event loop): read nothing
        more, and let no deadline act, until release()."""
        self._held = True
        self.want_read = self.more = False
        self.deadline = math.inf

    def release(self) -> None:
        """Its answer is in: go on with what is buffered, then read again."""
        if self._held:
            self._held = False
            self._partial_since = math.inf  # an unfinished line's clock starts again
            if self.end == KEEP:
                self.want_read = self.more = True  # resume() on a later turn

    def refuse(self, reason: str, now: float) -> None:
        """Say why the connection is not served, then end it."""
        self.reply(reason)
        self._finish(SHUT_WR, now)

    # -- inside ---------------------------------------------------------------------------

    def _lines(self, now: float) -> list[Event]:
        events: list[Event] = []
        framer = self._framer
        octets = 0
        while len(events) < BUDGET and octets < BUDGET_OCTETS:
            line = framer.next()
            if line is None:
                break
            if line is TOO_LONG:
                events.append(Malformed("huge", f"request longer than {MAX_REQUEST} octets"))
                self._finish(SHUT_WR, now)
                return events
            octets += len(line) + 1
            events.append(parse(line))
        else:
            self.more = True  # perhaps more whole lines: resume() on a later turn
            self.activity += 1
            return events
        self.more = False
        if events:
            self.activity += 1
        if self._eof:
            self._finish(CLOSE, now)  # an unfinished last line is dropped with it
        elif framer.partial:
            if self._partial_since == math.inf or events:
                self._partial_since = now  # a new unfinished line starts its clock
            self.deadline = self._partial_since + self.partial_timeout
        else:
            self._partial_since = self.deadline = math.inf
        return events

    def _finish(self, end: int, now: float) -> None:
        self.end = end
        self.more = False
        self._framer.clear()
        self.deadline = now + LINGER
