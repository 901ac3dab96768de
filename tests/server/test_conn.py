"""The ident connection's state machine in memory: no socket, no loop, a clock we move.

Every ordering, limit, deadline, half-close and backpressure rule of an ident connection
is decided in :mod:`aioidentd.server.conn`; these tests drive it the way the driver does
(bytes and the time in; events, bytes and the five attributes out), in the manner of
h11's ``ConnectionPair``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest

from aioidentd.driver import CLOSE, KEEP, SHUT_WR
from aioidentd.proxy_protocol import encode_proxy_header
from aioidentd.server.conn import (
    BUDGET,
    TRANSITIONS,
    BadProxyHeader,
    Expired,
    IdentConnection,
    Invalid,
    NewQuery,
    Rules,
    State,
)

PEER = ("192.0.2.7", 40000)
LOCAL = ("192.0.2.1", 113)


class Harness:
    """One connection, a fake clock, and what the driver would have seen."""

    def __init__(self, proxied: bool = False, **rules: Any) -> None:
        self.rules = Rules(**rules)
        self.now = 100.0
        self.conn = IdentConnection(self.rules, PEER, LOCAL, self.now, proxied)
        self.sent = b""

    def feed(self, data: bytes) -> list[Any]:
        return self._take(self.conn.receive(data, self.now))

    def resume(self) -> list[Any]:
        return self._take(self.conn.resume(self.now))

    def at(self, when: float) -> list[Any]:
        self.now = when
        return self._take(self.conn.timer(when))

    def answer(self, slot: int, line: bytes) -> bool:
        ok = self.conn.answer(slot, line, self.now)
        self.sent += self.conn.data_to_send()
        return ok

    def _take(self, events: Iterable[Any] | None) -> list[Any]:
        self.sent += self.conn.data_to_send()
        return list(events or ())

    def queries(self, events: list[Any]) -> list[NewQuery]:
        return [e for e in events if isinstance(e, NewQuery)]


def line(query: NewQuery, user: str = "u") -> bytes:
    return b"%d,%d:USERID:UNIX:%s\r\n" % (query.server_port, query.client_port, user.encode())


# -- one query per connection (the default) ----------------------------------------------


def test_a_single_query_is_answered_then_closed_with_fin() -> None:
    h = Harness()
    assert h.conn.state == State.FIRST_QUERY and h.conn.end == KEEP
    (query,) = h.queries(h.feed(b"6193, 23\r\n"))
    assert (query.server_port, query.client_port, query.arrived) == (6193, 23, 100.0)
    assert h.conn.state == State.DRAINING and not h.conn.evictable
    assert h.conn.end == KEEP  # its answer is not decided yet
    assert h.answer(query.slot, line(query))
    assert h.sent == b"6193,23:USERID:UNIX:u\r\n"
    # Nothing but the query was received: a plain close sends FIN, no RST.
    assert h.conn.state == State.CLOSED and h.conn.end == CLOSE


def test_input_after_the_single_query_is_drained_behind_a_half_close() -> None:
    h = Harness()
    (query,) = h.queries(h.feed(b"1,2\r\n3,4\r\n"))  # the second line is never a query
    assert h.feed(b"more\r\n") == []
    h.answer(query.slot, line(query))
    assert h.sent == b"1,2:USERID:UNIX:u\r\n"
    assert h.conn.state == State.LINGER and h.conn.end == SHUT_WR and h.conn.want_read
    assert h.feed(b"discarded") == [] and h.sent == b"1,2:USERID:UNIX:u\r\n"
    h.feed(b"")  # the peer's FIN
    assert h.conn.state == State.CLOSED and h.conn.end == CLOSE


def test_a_lingering_connection_closes_at_its_deadline() -> None:
    h = Harness(linger=2.0)
    (query,) = h.queries(h.feed(b"1,2\r\nx"))
    h.answer(query.slot, line(query))
    assert h.conn.state == State.LINGER and h.conn.deadline == 102.0
    h.at(102.0)
    assert h.conn.state == State.CLOSED


def test_the_peers_eof_with_an_answer_pending_closes_after_the_answer() -> None:
    h = Harness(multiple=True)
    (query,) = h.queries(h.feed(b"1,2\r\n"))
    h.feed(b"")
    assert h.conn.state == State.DRAINING and h.conn.end == KEEP
    h.answer(query.slot, line(query))
    assert h.sent.endswith(b"\r\n") and h.conn.end == CLOSE  # no half-close after EOF


def test_a_last_query_without_its_end_of_line_is_answered_at_eof() -> None:
    h = Harness(multiple=True)
    assert h.feed(b"5,6") == []
    (query,) = h.queries(h.feed(b""))
    assert (query.server_port, query.client_port) == (5, 6)
    # ...but whitespace alone at EOF is not a line.
    h2 = Harness(multiple=True)
    assert h2.feed(b" \t\r") == [] and h2.feed(b"") == []
    assert h2.conn.end == CLOSE and h2.sent == b""


# -- answers: order, exactly one, the one path -------------------------------------------


def test_answers_leave_in_query_order_whatever_order_they_are_decided_in() -> None:
    h = Harness(multiple=True)
    first, second, third = h.queries(h.feed(b"1,1\r\n2,2\r\n3,3\r\n"))
    h.answer(third.slot, line(third))
    h.answer(second.slot, line(second))
    assert h.sent == b""  # held until the first is answered
    h.answer(first.slot, line(first))
    assert h.sent == b"1,1:USERID:UNIX:u\r\n2,2:USERID:UNIX:u\r\n3,3:USERID:UNIX:u\r\n"


def test_each_query_gets_exactly_one_answer() -> None:
    h = Harness(multiple=True)
    (query,) = h.queries(h.feed(b"1,1\r\n"))
    assert h.answer(query.slot, line(query, "first"))
    assert not h.answer(query.slot, line(query, "second"))
    assert not h.answer(query.slot + 5, b"nobody asked\r\n")
    assert h.sent == b"1,1:USERID:UNIX:first\r\n"
    assert h.conn.answered(query.slot)


def test_an_invalid_line_is_answered_in_its_place_among_the_answers() -> None:
    h = Harness(multiple=True)
    events = h.feed(b"1,1\r\nbogus\r\n70000,2\r\n")
    first = h.queries(events)[0]
    invalid = [e for e in events if isinstance(e, Invalid)]
    assert [e.overlong for e in invalid] == [False, False]
    assert h.sent == b""  # behind the first query's answer
    h.answer(first.slot, line(first))
    assert h.sent == (
        b"1,1:USERID:UNIX:u\r\n0,0:ERROR:INVALID-PORT\r\n70000,2:ERROR:INVALID-PORT\r\n"
    )


@pytest.mark.parametrize("tail", [b"", b"\r\n"])
def test_an_overlong_line_is_answered_invalid_port_and_ends_reading(tail: bytes) -> None:
    h = Harness(multiple=True)
    (event,) = h.feed(b"1" * 1001 + tail)
    assert isinstance(event, Invalid) and event.overlong
    assert h.sent == b"0,0:ERROR:INVALID-PORT\r\n"
    assert h.conn.state == State.LINGER and h.conn.end == SHUT_WR


def test_a_line_of_1000_octets_is_still_a_query() -> None:
    h = Harness(multiple=True)
    assert len(h.queries(h.feed(b" " * 995 + b"1,2\r\n"))) == 1


def test_the_spaced_reply_style_applies_to_invalid_port_lines() -> None:
    h = Harness(style="spaced")
    h.feed(b"nonsense\r\n")
    assert h.sent == b"0 , 0 : ERROR : INVALID-PORT\r\n"


# -- limits and backpressure --------------------------------------------------------------


def test_reading_pauses_at_max_pending_and_resumes_as_answers_leave() -> None:
    h = Harness(multiple=True, max_pending=2)
    events = h.feed(b"1,1\r\n2,2\r\n3,3\r\n")
    assert len(h.queries(events)) == 2
    assert not h.conn.want_read and not h.conn.more  # the third line waits
    first = h.queries(events)[0]
    h.answer(first.slot, line(first))
    assert h.conn.want_read and h.conn.more  # room again, and a line is buffered
    (third,) = h.queries(h.resume())
    assert third.server_port == 3


def test_a_budget_of_lines_per_call() -> None:
    h = Harness(multiple=True, max_pending=1000)
    events = h.feed(b"1,1\r\n" * (BUDGET + 10))
    assert len(events) == BUDGET and h.conn.more
    assert len(h.resume()) == 10 and not h.conn.more


def test_only_connections_without_waiting_queries_are_evictable() -> None:
    h = Harness(multiple=True)
    assert h.conn.evictable and h.conn.activity == 0
    (query,) = h.queries(h.feed(b"1,1\r\n"))
    assert not h.conn.evictable and h.conn.activity == 1
    h.answer(query.slot, line(query))
    assert h.conn.evictable


# -- deadlines ---------------------------------------------------------------------------


def test_a_silent_connection_gets_the_first_query_deadline() -> None:
    h = Harness(first_query_timeout=10.0, idle_timeout=60.0)
    assert h.conn.deadline == 110.0
    h.feed(b"1")  # octets that are not a query do not extend it
    assert h.conn.deadline == 110.0
    h.at(110.0)
    assert h.conn.state == State.CLOSED and h.sent == b""


def test_after_a_query_the_idle_timeout_applies_and_activity_extends_it() -> None:
    h = Harness(multiple=True, idle_timeout=30.0)
    (query,) = h.queries(h.feed(b"1,1\r\n"))
    h.answer(query.slot, line(query))
    assert h.conn.deadline == 130.0
    h.now = 120.0
    (query,) = h.queries(h.feed(b"2,2\r\n"))
    h.answer(query.slot, line(query))
    assert h.conn.deadline == 150.0
    h.at(150.0)
    assert h.conn.end == CLOSE


def test_a_query_without_an_answer_expires_at_its_response_deadline() -> None:
    h = Harness(multiple=True, response_timeout=1.0, idle_timeout=0.5)
    (query,) = h.queries(h.feed(b"1,1\r\n"))
    # The (shorter) idle timeout never cuts a query waiting for its answer.
    assert h.conn.deadline == 101.0
    (expired,) = h.at(101.0)
    assert expired == Expired(query.slot, 1, 1, 100.0)
    assert h.conn.state == State.OPEN  # the fallback is the service's to send
    h.answer(query.slot, b"1,1:ERROR:HIDDEN-USER\r\n")
    assert h.sent == b"1,1:ERROR:HIDDEN-USER\r\n"


def test_stop_makes_every_waiting_query_due_and_closes_once_answered() -> None:
    h = Harness(multiple=True)
    first, second = h.queries(h.feed(b"1,1\r\n2,2\r\n"))
    h.answer(second.slot, line(second))
    due = list(h.conn.stop(h.now) or ())
    assert [e.slot for e in due] == [first.slot]
    assert not h.conn.drained()
    h.answer(first.slot, line(first))
    assert h.conn.drained()
    h.conn.close(h.now)
    assert h.conn.end == CLOSE


# -- a trusted forwarder's PROXY header -------------------------------------------------------


def test_a_proxy_header_names_the_real_querier() -> None:
    h = Harness(proxied=True)
    assert h.conn.state == State.PREAMBLE
    header = encode_proxy_header("v1", ("198.51.100.9", 5555), ("203.0.113.4", 113))
    assert h.feed(header[:10]) == []  # more to come
    (query,) = h.queries(h.feed(header[10:] + b"1,2\r\n"))
    assert h.conn.peer == ("198.51.100.9", 5555)
    assert h.conn.local == ("203.0.113.4", 113)
    assert query.server_port == 1


def test_a_plain_query_from_a_trusted_forwarder_needs_no_header() -> None:
    h = Harness(proxied=True)
    assert len(h.queries(h.feed(b"1,2\r\n"))) == 1
    assert h.conn.peer == PEER


def test_an_invalid_proxy_header_closes_the_connection() -> None:
    h = Harness(proxied=True)
    (event,) = h.feed(b"PROXY NONSENSE\r\n")
    assert isinstance(event, BadProxyHeader)
    assert h.conn.end == CLOSE and h.sent == b""


def test_eof_inside_a_proxy_header_is_no_query() -> None:
    h = Harness(proxied=True)
    h.feed(b"PROXY TCP4 1.2.3.4")
    assert h.feed(b"") == [] and h.conn.end == CLOSE and h.sent == b""


# -- the table of states -------------------------------------------------------------------


def test_every_state_but_closed_may_close_and_closed_is_final() -> None:
    for state, targets in TRANSITIONS.items():
        if state != State.CLOSED:
            assert State.CLOSED in targets
    assert TRANSITIONS[State.CLOSED] == frozenset()


def test_an_illegal_transition_raises() -> None:
    h = Harness()
    with pytest.raises(RuntimeError, match="FIRST_QUERY -> LINGER"):
        h.conn._enter(State.LINGER)


def test_a_closed_connection_takes_no_answer() -> None:
    h = Harness(multiple=True)
    (query,) = h.queries(h.feed(b"1,1\r\n"))
    h.conn.close(h.now)
    assert not h.answer(query.slot, line(query)) and h.sent == b""
    assert h.conn.deadline == math.inf


def test_rules_are_frozen() -> None:
    rules = Rules()
    with pytest.raises(AttributeError):
        rules.multiple = True  # type: ignore[misc]
    assert replace(rules, multiple=True).multiple
