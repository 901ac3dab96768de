"""One ident connection as a sans-IO state machine: every rule of RFC 1413's exchange.

**All the state of an ident connection lives here** (as in h11's ``_state.py``): no
socket, no event loop, no clock of its own. Bytes come in through :meth:`receive` (with
the time), queries go out as :class:`NewQuery` events, answers come back in by slot
through :meth:`answer`, and the bytes to send leave through :meth:`data_to_send` in query
order. What the driver must do next is in five plain attributes (``deadline``,
``want_read``, ``more``, ``end``, ``evictable``; see :mod:`aioidentd.driver`).

The states, and the only transitions between them (:data:`TRANSITIONS`, applied by
:meth:`IdentConnection._enter`, which refuses any other):

``PREAMBLE``     from a trusted forwarder: a PROXY header may come first
``FIRST_QUERY``  no query yet; the (short) first-query deadline
``OPEN``         ``multiple``: queries read and answered until idle
``DRAINING``     no more queries are read (single mode after its query, the peer's EOF,
                 an over-long line); the answers due are written
``LINGER``       every answer sent, half-closed: input is discarded until the peer's EOF
                 or the linger deadline, so that closing never sends an RST over an answer
``CLOSED``       nothing more; the driver closes once the last bytes are sent

Every answer, the handlers', the fallback, a claim's and the INVALID-PORT line of an
invalid or over-long line alike, goes through :meth:`answer`, so ordering and "exactly one
answer per query" are enforced in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, NamedTuple

from aioidentd.driver import CLOSE, KEEP, SHUT_WR
from aioidentd.protocol import (
    MAX_LINE,
    WHITESPACE,
    Address,
    InvalidQuery,
    ReplyStyle,
    error_line,
    parse_ports,
)
from aioidentd.proxy_protocol import InvalidProxyHeader, parse_proxy_header

__all__ = [
    "BUDGET",
    "TRANSITIONS",
    "BadProxyHeader",
    "Expired",
    "IdentConnection",
    "Invalid",
    "NewQuery",
    "Rules",
    "State",
]

#: Lines parsed per call at most; the rest waits for the next loop iteration (the driver
#: resumes it), so one pipelining client cannot hold the loop.
BUDGET: Final = 64
#: How long a connection that got its last answer may stay half-closed waiting for the
#: peer's FIN before it is closed.
LINGER: Final = 2.0


class State:
    PREAMBLE: Final = "PREAMBLE"
    FIRST_QUERY: Final = "FIRST_QUERY"
    OPEN: Final = "OPEN"
    DRAINING: Final = "DRAINING"
    LINGER: Final = "LINGER"
    CLOSED: Final = "CLOSED"


#: Every legal transition; anything else is a bug and raises.
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    State.PREAMBLE: frozenset({State.FIRST_QUERY, State.CLOSED}),
    State.FIRST_QUERY: frozenset({State.OPEN, State.DRAINING, State.CLOSED}),
    State.OPEN: frozenset({State.DRAINING, State.CLOSED}),
    State.DRAINING: frozenset({State.LINGER, State.CLOSED}),
    State.LINGER: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}

_READING: Final = frozenset({State.PREAMBLE, State.FIRST_QUERY, State.OPEN})


@dataclass(frozen=True, slots=True)
class Rules:
    """A server's settings as one connection needs them."""

    multiple: bool = False
    max_pending: int = 32
    idle_timeout: float = 60.0
    first_query_timeout: float = 10.0
    response_timeout: float = 1.0
    linger: float = LINGER
    style: ReplyStyle = "compact"


class NewQuery(NamedTuple):
    """A valid query: answer it with ``answer(slot, line, now)``."""

    slot: int
    server_port: int
    client_port: int
    arrived: float


class Invalid(NamedTuple):
    """A line that is not a query (``overlong``: no end of line within MAX_LINE); already
    answered INVALID-PORT in its place."""

    slot: int
    reason: str
    overlong: bool


class Expired(NamedTuple):
    """The query in ``slot`` got no answer by its deadline (or the server is closing)."""

    slot: int
    server_port: int
    client_port: int
    arrived: float


class BadProxyHeader(NamedTuple):
    """A trusted forwarder sent an invalid PROXY header; the connection closes."""

    reason: str


Event = NewQuery | Invalid | Expired | BadProxyHeader


class IdentConnection:
    """The state machine of one ident connection (see the module notes)."""

    __slots__ = (
        "_answers",
        "_base",
        "_buffer",
        "_eof",
        "_extra",
        "_idle",
        "_out",
        "_ports",
        "_stopping",
        "activity",
        "deadline",
        "end",
        "evictable",
        "local",
        "more",
        "peer",
        "rules",
        "state",
        "want_read",
    )

    def __init__(
        self, rules: Rules, peer: Address, local: Address, now: float, proxied: bool = False
    ) -> None:
        self.rules = rules
        #: ``(host, port)`` of the querier and of our end (a PROXY header may change both).
        self.peer = peer
        self.local = local
        self.state = State.PREAMBLE if proxied else State.FIRST_QUERY
        self._buffer = b""
        #: Answers by slot from ``_base`` on: the line, or None while undecided.
        self._answers: list[bytes | None] = []
        #: Per undecided slot: (server_port, client_port, arrival time).
        self._ports: dict[int, tuple[int, int, float]] | None = None
        self._base = 0
        self._out: list[bytes] | None = None  # (None rather than empty: idle memory)
        self._eof = False
        self._extra = False  # input beyond the single query was received
        self._stopping = False
        # Until its first query a connection gets the (shorter) first-query deadline: a
        # silent connection holds a slot for seconds, not for the whole idle timeout.
        self._idle = now + min(rules.first_query_timeout, rules.idle_timeout)
        self.deadline = self._idle
        self.want_read = True
        self.more = False
        self.end = KEEP
        self.activity = 0
        self.evictable = True

    # -- the transitions ----------------------------------------------------------------

    def _enter(self, state: str) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"ident connection: no transition {self.state} -> {state}")
        self.state = state

    # -- input --------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Event] | None:
        """Octets from the peer (``b""``: its EOF)."""
        state = self.state
        if not data:
            return self._end_of_input(now)
        if (
            (state == State.FIRST_QUERY or state == State.OPEN)
            and not self._buffer
            and not self._answers
            and data.find(b"\n") == len(data) - 1
            and len(data) <= MAX_LINE + 1
        ):
            # The usual case: exactly one whole line, nothing waiting.
            query = self._one_query(data, now)
            if query is not None:
                return query
        if state not in _READING:
            # Draining or lingering: read (so that closing sends FIN, not an RST over
            # unread input) and discarded.
            self._extra = True
            return None
        self._buffer += data
        if state == State.PREAMBLE:
            return self._preamble(now)
        return self._parse(now)

    def resume(self, now: float) -> list[Event] | None:
        """Parse what is buffered beyond the last call's budget."""
        if self.state not in _READING:
            self.more = False
            return None
        return self._parse(now)

    def _preamble(self, now: float) -> list[Event] | None:
        try:
            header = parse_proxy_header(self._buffer)
        except InvalidProxyHeader as exc:
            self._close()
            self._refresh(now)
            return [BadProxyHeader(str(exc))]
        if header is None:
            return None  # more to come; bounded by the header's own limit
        if header.source is not None and header.destination is not None:
            self.peer, self.local = header.source, header.destination
        self._buffer = self._buffer[header.length :]
        self._enter(State.FIRST_QUERY)
        return self._parse(now) if self._buffer else None

    def _parse(self, now: float) -> list[Event] | None:
        """Complete lines into queries, at most BUDGET per call and while fewer than
        ``max_pending`` queries wait for their answers."""
        rules = self.rules
        buffer = self._buffer
        events: list[Event] = []
        start = 0
        parsed = 0
        limit = rules.max_pending
        answers = self._answers
        while True:
            if len(answers) >= limit or parsed >= BUDGET:
                break
            end = buffer.find(b"\n", start)
            if end - start > MAX_LINE or (end < 0 and len(buffer) - start > MAX_LINE):
                slot = self._slot()
                self.answer(slot, error_line(0, 0, "INVALID-PORT", rules.style), now)
                events.append(Invalid(slot, f"line over {MAX_LINE} octets", True))
                self._extra = True
                self._stop_reading()
                self._refresh(now)
                return events
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            parsed += 1
            self.activity += 1
            self._idle = now + rules.idle_timeout
            slot = self._slot()
            try:
                server_port, client_port = parse_ports(line)
            except InvalidQuery as exc:
                self.answer(
                    slot,
                    error_line(exc.server_port, exc.client_port, "INVALID-PORT", rules.style),
                    now,
                )
                events.append(Invalid(slot, str(exc), False))
            else:
                self._wait(slot, server_port, client_port, now)
                events.append(NewQuery(slot, server_port, client_port, now))
            if not rules.multiple:
                # One query per connection: whatever follows is never read.
                self._extra = start < len(buffer)
                self._stop_reading()
                self._refresh(now)
                return events
        self._buffer = buffer[start:] if start else buffer
        if self.state == State.FIRST_QUERY and parsed:
            self._enter(State.OPEN)
        self._refresh(now)
        return events or None

    def _one_query(self, line: bytes, now: float) -> list[Event] | None:
        """:meth:`_parse` for one valid query line with nothing before it; None when the
        line is not a valid query (the general path answers it)."""
        try:
            server_port, client_port = parse_ports(line)
        except InvalidQuery:
            return None
        rules = self.rules
        self.activity += 1
        self._idle = now + rules.idle_timeout
        slot = self._base
        self._answers.append(None)
        self._wait(slot, server_port, client_port, now)
        if not rules.multiple:
            self._extra = False
            self._enter(State.DRAINING)
        elif self.state == State.FIRST_QUERY:
            self._enter(State.OPEN)
        self._refresh(now)
        return [NewQuery(slot, server_port, client_port, now)]

    def _wait(self, slot: int, server_port: int, client_port: int, now: float) -> None:
        ports = self._ports
        if ports is None:
            ports = self._ports = {}
        ports[slot] = (server_port, client_port, now)

    def _slot(self) -> int:
        self._answers.append(None)
        return self._base + len(self._answers) - 1

    def _end_of_input(self, now: float) -> list[Event] | None:
        self._eof = True
        if self.state == State.PREAMBLE:
            self._buffer = b""  # an unfinished header is not a query
            self._enter(State.FIRST_QUERY)
        events: list[Event] | None = None
        state = self.state
        if state in _READING:
            buffer = self._buffer
            if buffer[buffer.rfind(b"\n") + 1 :].strip(WHITESPACE):
                # A last query without its end of line: answered like any other.
                self._buffer = buffer + b"\n"
            events = self._parse(now)
        elif state == State.LINGER:
            self._close()
        self._refresh(now)
        return events

    def _stop_reading(self) -> None:
        self._buffer = b""
        if self.state in _READING:
            self._enter(State.DRAINING)

    # -- answers ------------------------------------------------------------------------

    def answer(self, slot: int, line: bytes, now: float) -> bool:
        """The answer to the query in ``slot``. False (and nothing written) when that
        query already has its answer, or its connection is gone."""
        index = slot - self._base
        answers = self._answers
        if index < 0 or index >= len(answers) or answers[index] is not None:
            return False
        if self.state == State.CLOSED:
            return False
        answers[index] = line
        ports = self._ports
        if ports is not None:
            ports.pop(slot, None)
            if not ports:
                self._ports = None
        if index == 0:
            ready = 0
            out = self._out
            if out is None:
                out = self._out = []
            for answer in answers:
                if answer is None:
                    break
                out.append(answer)
                ready += 1
            del answers[:ready]
            self._base += ready
            if self.state in _READING:
                self._idle = now + self.rules.idle_timeout
        self._refresh(now)
        return True

    def answered(self, slot: int) -> bool:
        """Whether the query in ``slot`` has its answer (written, or waiting for an
        earlier query's)."""
        index = slot - self._base
        answers = self._answers
        return index < 0 or (index < len(answers) and answers[index] is not None)

    def data_to_send(self) -> bytes:
        out = self._out
        if out is None:
            return b""
        self._out = None
        return out[0] if len(out) == 1 else b"".join(out)

    # -- time ---------------------------------------------------------------------------

    def timer(self, now: float) -> list[Event] | None:
        """The deadline passed: fallbacks for late queries, or the end of an idle or
        lingering connection."""
        ports = self._ports or {}
        due = now - self.rules.response_timeout
        expired = [
            Expired(slot, sp, cp, arrived)
            for slot, (sp, cp, arrived) in ports.items()
            if arrived <= due
        ]
        if expired:
            for event in expired:
                del ports[event.slot]
            if not ports:
                self._ports = None
            self._refresh(now)
            return list(expired)
        if now >= self._idle and not self._answers:
            # Idle: no query read since (lines still buffered are left only by a peer
            # that does not read its answers; the driver parses whatever it can first).
            self._close()
        self._refresh(now)
        return None

    def _has_line(self) -> bool:
        return self.state in _READING and b"\n" in self._buffer

    # -- closing ------------------------------------------------------------------------

    def stop(self, now: float) -> list[Expired] | None:
        """The server is closing: every waiting query is due now (the fallback), and the
        connection closes once what was sent is answered (see :meth:`drained`)."""
        self._stopping = True
        ports = self._ports or {}
        events = [Expired(slot, *value) for slot, value in ports.items()]
        self._ports = None
        self._refresh(now)
        return events or None

    def drained(self) -> bool:
        """Everything the peer sent (and the driver read) is answered and sent."""
        return not self._answers and not self._out and not self._has_line()

    def close(self, now: float) -> None:
        """Close after the answers already sent (the server's close)."""
        self._close()
        self._refresh(now)

    def _close(self) -> None:
        if self.state != State.CLOSED:
            self._enter(State.CLOSED)  # from every state
        self._answers.clear()
        self._ports = None
        self._buffer = b""

    def _refresh(self, now: float) -> None:
        """Derive what the driver reads from the state (the only place that sets it)."""
        state = self.state
        answers = self._answers
        if state in _READING and self._eof and not self._has_line():
            self._stop_reading()  # the peer's EOF, and every line it sent is parsed
            state = self.state
        if state == State.DRAINING and not answers:
            if self._eof or self._stopping or not self._extra:
                self._close()
            else:
                self._enter(State.LINGER)
                self._idle = now + min(self.rules.linger, self.rules.idle_timeout)
            state = self.state
        if state == State.CLOSED:
            self.end = CLOSE
            self.want_read = False
            self.more = False
            self.evictable = True
            self.deadline = math.inf
            return
        if state == State.LINGER:
            self.end = SHUT_WR
            self.want_read = True
            self.more = False
            self.evictable = True
            self.deadline = self._idle
            return
        ports = self._ports
        if ports:
            # The oldest waiting query is due first (arrival order is slot order); the
            # idle deadline never cuts a query waiting for its answer.
            self.deadline = next(iter(ports.values()))[2] + self.rules.response_timeout
        elif answers:
            self.deadline = math.inf  # its fallback is being decided
        else:
            self.deadline = self._idle
        self.evictable = not answers
        reading = state in _READING
        room = len(answers) < self.rules.max_pending
        self.want_read = room or not reading
        self.more = reading and room and b"\n" in self._buffer
