""":class:`~aioidentd.stats.ServerStats` in the Prometheus text exposition format
(version 0.0.4), for the daemon's ``[metrics]`` endpoint and textfile, and for any
application that embeds an :class:`~aioidentd.IdentServer` and already serves metrics.

Plain string formatting, no dependency: a scrape is a few dozen lines. Names follow the
Prometheus conventions: ``aioidentd_`` prefix, ``_total`` for counters, base units
(seconds), one metric with a label where the values add up to a whole (answers by kind).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aioidentd.stats import LATENCY_BOUNDS, ServerStats

__all__ = ["CONTENT_TYPE", "render"]

#: The Content-Type of the text format, for an HTTP response.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[Mapping[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.sample(name, labels, value)

    def sample(self, name: str, labels: Mapping[str, str], value: float) -> None:
        if labels:
            inner = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            self.lines.append(f"{name}{{{inner}}} {_number(value)}")
        else:
            self.lines.append(f"{name} {_number(value)}")


def render(
    stats: ServerStats,
    *,
    decisions: Mapping[str, int] | None = None,
    start_time: float | None = None,
) -> str:
    """The exposition text for ``stats``; ``decisions`` (the daemon's decisions by kind:
    the policy's answer kinds, ``no-socket``, ``lookup-failed``) and ``start_time`` (Unix
    time the process started) add the daemon's own metrics."""
    out = _Writer()
    counter = "counter"
    out.metric(
        "aioidentd_connections_accepted_total",
        counter,
        "Connections accepted and served.",
        [({}, stats.connections_accepted)],
    )
    out.metric(
        "aioidentd_connections_refused_total",
        counter,
        "Connections closed at once: the limit was reached and none could be evicted.",
        [({}, stats.connections_refused)],
    )
    out.metric(
        "aioidentd_connections_evicted_total",
        counter,
        "Connections closed to make room for a new one (the ones silent longest).",
        [({}, stats.connections_evicted)],
    )
    out.metric(
        "aioidentd_connections_open",
        "gauge",
        "Connections open now.",
        [({}, stats.connections_open)],
    )
    out.metric("aioidentd_queries_total", counter, "Valid queries received.", [({}, stats.queries)])
    out.metric(
        "aioidentd_invalid_lines_total",
        counter,
        "Lines that were not a valid query (answered INVALID-PORT).",
        [({}, stats.invalid_lines)],
    )
    out.metric(
        "aioidentd_answers_total",
        counter,
        "Answers to valid queries, by what decided them: a claim, a handler's USERID or "
        "ERROR, or the fallback.",
        [
            ({"kind": "claim"}, stats.claimed),
            ({"kind": "userid"}, stats.answers_userid),
            ({"kind": "error"}, stats.answers_error),
            ({"kind": "fallback"}, stats.fallbacks),
        ],
    )
    out.metric(
        "aioidentd_handler_failures_total",
        counter,
        "Handler calls that raised or failed.",
        [({}, stats.handler_failures)],
    )
    name = "aioidentd_answer_latency_seconds"
    out.lines.append(f"# HELP {name} Time from a query's arrival to its answer.")
    out.lines.append(f"# TYPE {name} histogram")
    cumulative = 0
    buckets = list(stats.latency_buckets)
    for bound, count in zip(LATENCY_BOUNDS, buckets, strict=False):
        cumulative += count
        out.sample(f"{name}_bucket", {"le": repr(bound)}, cumulative)
    cumulative += buckets[-1]
    out.sample(f"{name}_bucket", {"le": "+Inf"}, cumulative)
    out.sample(f"{name}_sum", {}, float(stats.latency_sum))
    out.sample(f"{name}_count", {}, cumulative)
    if decisions is not None:
        out.metric(
            "aioidentd_decisions_total",
            counter,
            "The daemon's answers from its socket lookup and policy, by kind (username, uid, "
            "fixed, random, random-numeric, hidden, no-user, user-reply, no-socket, "
            "lookup-failed).",
            [({"kind": kind}, count) for kind, count in sorted(decisions.items())],
        )
        out.metric(
            "aioidentd_lookup_failures_total",
            counter,
            "Socket lookups that failed (answered UNKNOWN-ERROR).",
            [({}, decisions.get("lookup-failed", 0))],
        )
    if start_time is not None:
        out.metric(
            "aioidentd_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            [({}, float(start_time))],
        )
    return "\n".join(out.lines) + "\n"
