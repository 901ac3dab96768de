"""The daemon's metrics where its users collect them: a tiny HTTP endpoint for Prometheus
(``[metrics] listen``) and a file for node_exporter's textfile collector (``[metrics]
textfile``), both on the daemon's event loop, stdlib only.

The endpoint is reachable by whoever can reach its address, so it runs on the same
connection core as the ident port (:mod:`aioidentd.driver`, one sans-IO
:class:`~aioidentd.daemon.metrics_session.MetricsSession` per connection): a request head
of at most :data:`MAX_REQUEST` octets, sent within :data:`REQUEST_TIMEOUT` seconds, only
``GET /metrics`` answered, the connection closed after each response, bounded buffers
both ways, and its log lines rate-limited. At :data:`MAX_CLIENTS` connections a new one
closes the one silent longest, so connections that send half a request and wait cannot
keep a scraper out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from aioidentd._ratelimit import RateLimitedLog
from aioidentd.daemon.metrics_session import MAX_REQUEST, Failure, MetricsSession, Scrape
from aioidentd.driver import Channel, Driver
from aioidentd.listener import Listener
from aioidentd.policy.settings import MetricsSettings, parse_listen
from aioidentd.prometheus import CONTENT_TYPE, render
from aioidentd.protocol import show_address
from aioidentd.stats import LATENCY_BOUNDS, ServerStats

__all__ = [
    "MAX_CLIENTS",
    "MAX_REQUEST",
    "REQUEST_TIMEOUT",
    "DaemonMetrics",
    "MetricsEndpoint",
    "bind_metrics",
    "summary",
    "write_textfile",
]

logger = logging.getLogger(__name__)

#: Seconds a client has to send its request head, and then to read the response.
REQUEST_TIMEOUT: Final = 5.0
#: Connections served at once; at the limit a new one closes the one silent longest.
MAX_CLIENTS: Final = 16
BACKLOG: Final = 128


def bind_metrics(listen: str) -> socket.socket:
    """The endpoint's listening socket, bound before the daemon drops privileges. Its
    backlog is larger than the connection limit: while clients that hold slots reconnect
    as fast as they are closed, a full queue would drop a scraper's SYN (a 1 s retry)."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


class MetricsEndpoint:
    """``GET /metrics`` on ``sock``, answered with ``render()`` (the driver's service)."""

    def __init__(self, sock: socket.socket, render: Callable[[], str]) -> None:
        self._sock = sock
        self._render = render
        self._driver: Driver | None = None
        self._listener: Listener | None = None
        self._log: RateLimitedLog | None = None
        #: Requests answered (any status), for tests.
        self.requests = 0

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._driver) if self._driver is not None else 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._log = RateLimitedLog(logger, call_later=loop.call_later)
        # A response is a few KiB: a peer that does not read it holds that much, no more.
        self._driver = Driver(
            loop, self, "metrics endpoint", max_connections=MAX_CLIENTS, read_size=MAX_REQUEST
        )
        self._listener = Listener(loop, self._sock, self._driver.accept, "metrics endpoint")
        self._listener.start()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._driver is not None:
            self._driver.close_all()
            self._driver = None
        if self._log is not None:
            self._log.close()

    # -- the driver's service -------------------------------------------------------------

    def open(self, channel: Channel, now: float) -> MetricsSession:
        return MetricsSession(now, REQUEST_TIMEOUT)

    def events(self, channel: Channel, events: Iterable[Any]) -> None:
        session = channel.session
        assert isinstance(session, MetricsSession)
        for event in events:
            self.requests += 1
            if isinstance(event, Scrape):
                body = self._render().encode()
                session.respond("200 OK", body, CONTENT_TYPE, asyncio.get_running_loop().time())
            elif isinstance(event, Failure) and self._log is not None:
                self._log.log(
                    event.kind, logging.INFO, event.summary, "%s (first of its kind)", event.summary
                )

    def closed(self, channel: Channel) -> None:
        pass


def write_textfile(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file in the same directory,
    then rename), so that node_exporter never reads half a file. Raises OSError."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".aioidentd-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _quantile_bound(buckets: list[int], count: int, q: float) -> str:
    """The upper bound of the histogram bucket holding the ``q`` quantile."""
    if not count:
        return "-"
    rank = q * count
    seen = 0
    for bound, in_bucket in zip(LATENCY_BOUNDS, buckets, strict=False):
        seen += in_bucket
        if seen >= rank:
            return f"<= {bound * 1000:g} ms"
    return f"> {LATENCY_BOUNDS[-1]:g} s"


def summary(stats: ServerStats, decisions: Mapping[str, int] | None) -> str:
    """The one log line of SIGUSR1: everything counted so far."""
    buckets = list(stats.latency_buckets)
    count = sum(buckets)
    text = (
        f"stats: {stats.queries} queries, {stats.invalid_lines} invalid lines; answers: "
        f"{stats.claimed} claimed, {stats.answers_userid} USERID, {stats.answers_error} ERROR, "
        f"{stats.fallbacks} fallback; connections: {stats.connections_accepted} accepted, "
        f"{stats.connections_open} open, {stats.connections_refused} refused, "
        f"{stats.connections_evicted} evicted; {stats.handler_failures} handler failures; "
        f"latency p50 {_quantile_bound(buckets, count, 0.5)}, "
        f"p99 {_quantile_bound(buckets, count, 0.99)}"
    )
    if decisions is not None:
        listed = ", ".join(f"{kind} {n}" for kind, n in sorted(decisions.items())) or "none"
        text += f"; decisions: {listed}"
    return text


class DaemonMetrics:
    """What ``[metrics]`` asks for, around one server: the endpoint on ``sock`` (bound
    before privileges were dropped), the textfile rewritten every ``textfile_interval``
    seconds and once more at the end, and the SIGUSR1 summary."""

    def __init__(
        self,
        settings: MetricsSettings,
        stats: ServerStats,
        decisions: Mapping[str, int] | None,
        sock: socket.socket | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.decisions = decisions
        self.start_time = time.time()
        self.endpoint = MetricsEndpoint(sock, self.render) if sock is not None else None
        self._writer: asyncio.Task[None] | None = None
        self._write_failed = False

    def render(self) -> str:
        return render(self.stats, decisions=self.decisions, start_time=self.start_time)

    def summary(self) -> str:
        return summary(self.stats, self.decisions)

    async def start(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.start()
            logger.info("metrics on http://%s/metrics", show_address(self.endpoint.address))
        if self.settings.textfile is not None:
            await self.write()
            self._writer = asyncio.ensure_future(self._write_every())

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            await self.write()  # the final counts
        if self.endpoint is not None:
            await self.endpoint.close()

    async def _write_every(self) -> None:
        while True:
            await asyncio.sleep(self.settings.textfile_interval)
            await self.write()

    async def write(self) -> None:
        """Write the textfile now (off the event loop: the disk may be slow); a failure
        is logged once, and its end too."""
        path = self.settings.textfile
        if path is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, write_textfile, path, self.render())
        except OSError as exc:
            if not self._write_failed:
                logger.warning("cannot write the metrics textfile %s: %s", path, exc)
            self._write_failed = True
        else:
            if self._write_failed:
                logger.info("metrics textfile %s written again", path)
            self._write_failed = False
