"""One connection to the metrics endpoint, without I/O: an HTTP request head in, one
response out, then the end.

All of the connection's state lives here: the bounded head buffer, the response not yet
taken by the driver, the deadline and the end decision; the socket driver
(:mod:`aioidentd.driver`) reads the attributes after every call. The endpoint answers
exactly one request per connection (``Connection: close``), as Prometheus expects:

* the head (request line and headers) is at most :data:`MAX_REQUEST` octets, else ``431``;
* it must arrive within ``timeout`` seconds of the connection, else ``408``; an
  unfinished head never holds a slot longer;
* only ``GET /metrics`` (any query string) is answered with the counters
  (:class:`Scrape`, which the endpoint answers with :meth:`MetricsSession.respond`);
  anything else gets its status at once (``400``, ``404``, ``405``);
* after the response the connection half-closes and what the peer still sends (a body,
  more pipelined requests) is read and dropped, so that the peer sees the response
  rather than a reset, for at most ``timeout`` seconds more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aioidentd.driver import ABORT, CLOSE, KEEP, SHUT_WR
from aioidentd.lines import TOO_LONG, Framer

__all__ = ["MAX_REQUEST", "SCRAPE", "Failure", "MetricsSession", "Scrape", "response"]

#: The longest request head read (request line and headers); Prometheus sends ~300 octets.
MAX_REQUEST: Final = 4096

_TEXT: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Scrape:
    """``GET /metrics``: the endpoint renders the counters and calls respond()."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A request answered with an error status (already sent); ``kind`` and ``summary``
    are for the rate-limited log."""

    kind: str
    summary: str


SCRAPE: Final = Scrape()

Event = Scrape | Failure


def response(status: str, body: bytes, content_type: str = _TEXT) -> bytes:
    """A whole HTTP/1.1 response that ends the connection."""
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if status.startswith("405"):
        head += "Allow: GET\r\n"
    return head.encode() + b"\r\n" + body


def _judge(head: bytes) -> tuple[str, bytes, Failure] | None:
    """The error response a head gets, or None for ``GET /metrics``."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return "400 Bad Request", b"malformed request\n", Failure("bad", "malformed requests")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method != b"GET":
        failure = Failure("method", "metrics requests with another method than GET")
        return "405 Method Not Allowed", b"only GET /metrics\n", failure
    if target != b"/metrics":
        failure = Failure("target", "requests for another path than /metrics")
        return "404 Not Found", b"only /metrics is served here\n", failure
    return None


class MetricsSession:
    """The protocol of one metrics connection, accepted at ``now``."""

    __slots__ = (
        "_framer",
        "_out",
        "_responded",
        "activity",
        "deadline",
        "end",
        "evictable",
        "more",
        "timeout",
        "want_read",
    )

    def __init__(self, now: float, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.deadline = now + timeout
        self.want_read = True
        self.more = False
        self.end = KEEP
        #: 1 once the request is read: the driver's order of eviction.
        self.activity = 0
        self.evictable = True
        self._framer = Framer(b"\r\n\r\n", MAX_REQUEST, include_delimiter=True)
        self._out = b""
        self._responded = False

    def receive(self, data: bytes, now: float) -> list[Event] | None:
        if self._responded:
            if not data:
                self.end = CLOSE  # the peer has read and closed its side
            return None  # a body or more requests: read and dropped
        if not data:
            failure = Failure("incomplete", "metrics requests cut short")
            return self._error("400 Bad Request", b"incomplete request\n", failure, now)
        self._framer.feed(data)
        head = self._framer.next()
        if head is None:
            return None
        if head is TOO_LONG:
            failure = Failure("large", "metrics requests too large")
            return self._error(
                "431 Request Header Fields Too Large", b"request too large\n", failure, now
            )
        self._framer.clear()
        self.activity += 1
        judged = _judge(head)
        if judged is None:
            self.want_read = False  # nothing to read until the response is out
            return [SCRAPE]
        return self._error(*judged, now)

    def resume(self, now: float) -> None:
        return None

    def timer(self, now: float) -> list[Event] | None:
        if self._responded:
            self.end = ABORT  # it had its time to read the response
            return None
        failure = Failure("timeout", "metrics requests not sent in time")
        return self._error("408 Request Timeout", b"request not sent in time\n", failure, now)

    def data_to_send(self) -> bytes:
        out, self._out = self._out, b""
        return out

    def respond(self, status: str, body: bytes, content_type: str, now: float) -> None:
        """Send the response and end the connection."""
        self._out += response(status, body, content_type)
        self._responded = True
        self._framer.clear()
        self.want_read = True  # read (and drop) until the peer's EOF
        self.end = SHUT_WR
        self.deadline = now + self.timeout

    def _error(self, status: str, body: bytes, failure: Failure, now: float) -> list[Event]:
        self.respond(status, body, _TEXT, now)
        return [failure]
