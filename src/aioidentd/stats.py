"""Counters of what an :class:`~aioidentd.IdentServer` does, for the application that embeds
it and for the daemon's metrics.

Plain integer attributes incremented in place: reading them is free, and the server's hot
path pays one attribute increment per event (and one ``bisect`` per answer for the latency
histogram), which the benchmark measures. Everything counts from the server's creation;
nothing is ever reset, as Prometheus counters expect.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Final

__all__ = ["LATENCY_BOUNDS", "ServerStats"]

#: Upper bounds (seconds) of the answer-latency histogram's buckets; a last bucket holds
#: everything slower. From half a millisecond (a local handler) to the 10 s that the most
#: patient IRC server waits.
LATENCY_BOUNDS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class ServerStats:
    """What the server did since it was created (see the attributes)."""

    __slots__ = (
        "_open",
        "answers_error",
        "answers_userid",
        "claimed",
        "connections_accepted",
        "connections_evicted",
        "connections_refused",
        "fallbacks",
        "handler_failures",
        "invalid_lines",
        "latency_buckets",
        "latency_count",
        "latency_sum",
        "queries",
    )

    def __init__(self, open_connections: Callable[[], int] = lambda: 0) -> None:
        self._open = open_connections
        #: Connections accepted and served (not those refused at the limit).
        self.connections_accepted = 0
        #: Connections closed at once because the limit was reached and nobody could be
        #: evicted (every connection had a query waiting for its answer).
        self.connections_refused = 0
        #: Connections closed to make room for a new one (the ones silent longest).
        self.connections_evicted = 0
        #: Valid queries received.
        self.queries = 0
        #: Lines that were not a valid query (answered INVALID-PORT), over-long ones too.
        self.invalid_lines = 0
        #: Answers decided by a claim on the connection asked about.
        self.claimed = 0
        #: USERID answers decided by a handler.
        self.answers_userid = 0
        #: ERROR answers decided by a handler.
        self.answers_error = 0
        #: Queries answered by the fallback (no claim, no handler answer in time).
        self.fallbacks = 0
        #: Handler calls that raised (sync) or failed (async).
        self.handler_failures = 0
        #: Answers written, by latency from the query's arrival (see LATENCY_BOUNDS); the
        #: last entry counts those slower than the last bound.
        self.latency_buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    @property
    def connections_open(self) -> int:
        """Connections open now."""
        return self._open()

    def _observe(self, seconds: float) -> None:
        self.latency_buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def _instant_fallbacks(self, count: int) -> None:
        """``count`` queries answered with the fallback as they were read (no handler, no
        claim): counted once per batch of pipelined queries, not once per query."""
        self.queries += count
        self.fallbacks += count
        self.latency_buckets[0] += count
        self.latency_count += count

    def snapshot(self) -> dict[str, int | float | list[int]]:
        """Every counter by name, as plain values (a copy)."""
        values: dict[str, int | float | list[int]] = {
            name: getattr(self, name) for name in self.__slots__ if not name.startswith("_")
        }
        values["latency_buckets"] = list(self.latency_buckets)
        values["connections_open"] = self.connections_open
        return values

    def __repr__(self) -> str:
        return (
            f"<ServerStats queries={self.queries} open={self.connections_open} "
            f"fallbacks={self.fallbacks} invalid={self.invalid_lines}>"
        )
