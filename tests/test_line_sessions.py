"""The claims socket's and the metrics endpoint's connections in memory: bytes in, events
and bytes out, a fake clock; every limit, deadline and end decision without a socket.
(The same sessions under the real driver and real sockets: test_claims_socket.py,
test_metrics.py, test_hostile_local.py.)"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence

import pytest

from aioidentd.daemon.claims_session import (
    BUDGET,
    LINGER,
    MAX_DEPTH,
    MAX_REQUEST,
    ClaimsSession,
    Malformed,
    Request,
)
from aioidentd.daemon.metrics_session import (
    MAX_REQUEST as MAX_HEAD,
)
from aioidentd.daemon.metrics_session import (
    SCRAPE,
    Failure,
    MetricsSession,
)
from aioidentd.driver import ABORT, CLOSE, KEEP, SHUT_WR
from aioidentd.lines import TOO_LONG, Framer

# -------------------------------------------------------------------------- the framer


def test_frames_are_cut_at_the_delimiter_across_reads() -> None:
    framer = Framer(b"\r\n\r\n", 100, include_delimiter=True)
    for piece in (b"GET / HTTP/1.1\r", b"\nHost: x\r\n", b"\r", b"\nrest"):
        framer.feed(piece)
    assert framer.next() == b"GET / HTTP/1.1\r\nHost: x"
    assert framer.next() is None and framer.partial and len(framer) == 4


def test_a_frame_that_cannot_fit_is_too_long_as_soon_as_that_is_certain() -> None:
    lines = Framer(b"\n", 8)
    lines.feed(b"12345678\n123456789")
    assert lines.next() == b"12345678"  # exactly the limit
    assert lines.next() is TOO_LONG  # nine octets and no end in sight
    assert len(lines) == 0  # nothing kept of it
    heads = Framer(b"\r\n\r\n", 8, include_delimiter=True)
    heads.feed(b"12345\r\n\r\n")  # 9 octets with its terminator
    assert heads.next() is TOO_LONG
    heads.feed(b"1234\r\n\r\n")
    assert heads.next() == b"1234"


@pytest.mark.parametrize("seed", range(20))
def test_any_cutting_of_a_stream_gives_the_same_frames(seed: int) -> None:
    rng = random.Random(seed)
    stream = b"".join(
        rng.choice([b"\n", b"\r\n", b"a", b"\r", b"bc"]) for _ in range(rng.randrange(1, 400))
    )
    framer = Framer(b"\r\n", 1000)
    frames = []
    at = 0
    while at < len(stream):
        step = rng.randrange(1, 8)
        framer.feed(stream[at : at + step])
        at += step
        while (frame := framer.next()) is not None:
            assert frame is not TOO_LONG
            frames.append(frame)
    assert frames == stream.split(b"\r\n")[:-1]


def test_scanning_is_linear_in_what_arrives() -> None:
    """A line fed one octet at a time is found once, not re-searched from its start
    each time (the old claims code copied its whole buffer for every line)."""
    framer = Framer(b"\n", 10**6)
    for _ in range(10**5):
        framer.feed(b"x")
        assert framer.next() is None
    framer.feed(b"\n" * 3)
    assert framer.next() == b"x" * 10**5
    assert [framer.next(), framer.next(), framer.next()] == [b"", b"", None]


# ------------------------------------------------------------------- the claims session


def answers(session: ClaimsSession) -> list[object]:
    return [json.loads(line) for line in session.data_to_send().splitlines()]


def serve(session: ClaimsSession, events: Sequence[object] | None) -> None:
    """What the claims service does with events, minus the claims: every request is
    refused with its own text, every malformed line with its reason."""
    for event in events or ():
        if isinstance(event, Request):
            session.reply(f"got {event.value!r}")
        else:
            assert isinstance(event, Malformed)
            session.reply(event.reason)


def test_each_line_gets_one_answer_in_order_and_bad_json_a_clear_one() -> None:
    session = ClaimsSession(0.0, uid=1000)
    nested = b"[" * 5000 + b"]" * 5000
    assert len(nested) > MAX_REQUEST  # too long anyway: nest within the limit
    nested = b"[" * 1020 + b"]" * 1020
    serve(session, session.receive(b'{"op": 1}\nnot json\n\xff\xfe\n' + nested + b"\n", 1.0))
    assert answers(session) == [
        {"ok": False, "error": "got {'op': 1}"},
        {"ok": False, "error": "not a JSON object"},
        {"ok": False, "error": "not a JSON object"},
        {"ok": False, "error": "request nested too deeply"},
    ]
    assert session.end == KEEP and session.deadline == math.inf and session.activity == 1


def test_the_depth_limit_is_the_same_on_every_python() -> None:
    """Python 3.11's parser gave up near 1,000 levels and 3.12's reads far deeper: the
    refusal is our limit, and brackets inside strings (escaped quotes too) are text."""
    session = ClaimsSession(0.0, uid=1000)
    deepest = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    deeper = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    text = json.dumps({"op": '\\" [[' + "[" * 100}).encode()
    serve(session, session.receive(deepest + b"\n" + deeper + b"\n" + text + b"\n", 1.0))
    got = [str(answer["error"]) for answer in answers(session) if isinstance(answer, dict)]
    assert len(got) == 3
    assert got[0].startswith("got [[") and got[1] == "request nested too deeply"
    assert got[2].startswith("got {'op': ")


def test_a_burst_is_handled_in_slices_between_which_the_loop_runs() -> None:
    session = ClaimsSession(0.0, uid=0)
    events = session.receive(b"\n" * (BUDGET * 3 + 1), 1.0)
    assert events is not None and len(events) == BUDGET and session.more
    seen = len(events)
    while session.more:
        more = session.resume(2.0)
        assert more is not None and len(more) <= BUDGET
        seen += len(more)
    assert seen == BUDGET * 3 + 1
    assert session.end == KEEP


def test_an_over_long_line_is_refused_once_and_ends_the_connection() -> None:
    session = ClaimsSession(0.0, uid=0)
    events = session.receive(b"{}\n" + b"x" * (MAX_REQUEST + 1), 1.0)
    assert events == [Request({}), Malformed("huge", f"request longer than {MAX_REQUEST} octets")]
    serve(session, events)
    assert len(answers(session)) == 2
    assert session.end == SHUT_WR and session.deadline == 1.0 + LINGER
    # What follows is dropped, not buffered; the peer's EOF ends it, or the linger does.
    assert session.receive(b"y" * 10**6, 2.0) is None
    session.receive(b"", 3.0)
    assert session.end == CLOSE
    session.timer(1.0 + LINGER)
    assert session.end == ABORT


def test_half_a_line_has_its_time_from_its_first_octet() -> None:
    session = ClaimsSession(0.0, uid=0, partial_timeout=10.0)
    session.receive(b'{"op": "conn', 1.0)
    assert session.deadline == 11.0
    session.receive(b"ecting", 9.0)  # trickling does not buy more time
    assert session.deadline == 11.0
    session.timer(11.0)
    assert session.end == CLOSE
    # An idle connection between requests keeps its claims: no deadline.
    idle = ClaimsSession(0.0, uid=0)
    serve(idle, idle.receive(b"{}\n", 1.0))
    assert idle.deadline == math.inf and idle.end == KEEP


def test_eof_after_requests_answers_them_all_then_closes() -> None:
    session = ClaimsSession(0.0, uid=0)
    serve(session, session.receive(b"1\n" * (BUDGET + 5) + b"half", 1.0))
    assert session.more  # the driver reads no more until the slices are done
    while session.more:
        serve(session, session.resume(1.5))
    assert session.end == KEEP and session.deadline == 1.5 + 10.0  # "half" has its clock
    serve(session, session.receive(b"", 2.0))
    assert len(answers(session)) == BUDGET + 5  # the unfinished line is dropped
    assert session.end == CLOSE


def test_a_request_carried_out_elsewhere_holds_the_rest_and_its_deadline() -> None:
    session = ClaimsSession(0.0, uid=0, partial_timeout=10.0)
    events = session.receive(b"1\n2\nhalf", 1.0)
    assert events == [Request(1), Request(2)] and session.deadline == 11.0
    session.hold()  # request 1 waits for an executor: 2 waits for it
    assert not session.want_read and not session.more and session.deadline == math.inf
    assert session.resume(30.0) is None
    session.release()
    assert session.want_read and session.more  # the driver resumes it on a later turn
    assert session.resume(31.0) == [] and session.deadline == 41.0  # "half" starts again


def test_a_refused_connection_says_why_then_ends() -> None:
    session = ClaimsSession(0.0, uid=5)
    session.refuse("too many connections from uid 5", 0.0)
    assert answers(session) == [{"ok": False, "error": "too many connections from uid 5"}]
    assert session.end == SHUT_WR


# ------------------------------------------------------------------ the metrics session


def status_of(session: MetricsSession) -> bytes:
    return session.data_to_send().split(b"\r\n", 1)[0]


def test_get_metrics_is_a_scrape_answered_once_then_half_closed() -> None:
    session = MetricsSession(0.0, timeout=5.0)
    assert session.receive(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a", 0.1) is None
    assert session.receive(b"\r\n\r\n", 0.2) == [SCRAPE]
    assert session.activity == 1
    session.respond("200 OK", b"x_total 1\n", "text/plain; version=0.0.4", 0.3)
    out = session.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n")
    assert out.endswith(b"Connection: close\r\n\r\nx_total 1\n")
    assert session.end == SHUT_WR and session.deadline == 5.3
    # A second request on it is read and dropped; the peer's EOF closes it.
    assert session.receive(b"GET /metrics HTTP/1.1\r\n\r\n", 0.4) is None
    assert session.data_to_send() == b""
    session.receive(b"", 0.5)
    assert session.end == CLOSE


@pytest.mark.parametrize(
    ("data", "status", "failure"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"404 Not Found", "target"),
        (b"POST /metrics HTTP/1.1\r\n\r\nabc", b"405 Method Not Allowed", "method"),
        (b"GET /metrics\r\n\r\n", b"400 Bad Request", "bad"),
        (b"\x00\xff garbage \r\n\r\n", b"400 Bad Request", "bad"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_HEAD, b"431 Request Header", "large"),
    ],
)
def test_anything_else_gets_its_status_at_once(data: bytes, status: bytes, failure: str) -> None:
    session = MetricsSession(0.0)
    events = session.receive(data, 0.1)
    assert status_of(session).startswith(b"HTTP/1.1 " + status)
    assert [e.kind for e in events or () if isinstance(e, Failure)] == [failure]
    assert session.end == SHUT_WR


def test_a_head_never_finished_gets_408_at_its_deadline_then_a_linger() -> None:
    session = MetricsSession(0.0, timeout=5.0)
    session.receive(b"GET /metrics HTTP/1.1\r\n", 0.1)
    assert session.deadline == 5.0  # from the connection, not from the last octet
    events = session.timer(5.0)
    assert events == [Failure("timeout", "metrics requests not sent in time")]
    assert status_of(session) == b"HTTP/1.1 408 Request Timeout"
    assert session.end == SHUT_WR and session.deadline == 10.0
    session.timer(10.0)
    assert session.end == ABORT


def test_eof_before_a_whole_head_is_400() -> None:
    session = MetricsSession(0.0)
    session.receive(b"GET /met", 0.1)
    session.receive(b"", 0.2)
    assert status_of(session) == b"HTTP/1.1 400 Bad Request"
