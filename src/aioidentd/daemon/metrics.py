"""The daemon's metrics where its users collect them: a tiny HTTP endpoint for Prometheus
(``[metrics] listen``) and a file for node_exporter's textfile collector (``[metrics]
textfile``), both on the daemon's event loop, stdlib only.

The endpoint is reachable by whoever can reach its address, so it is built like the ident
port: a request head of at most :data:`MAX_REQUEST` octets, read within
:data:`REQUEST_TIMEOUT` seconds, at most :data:`MAX_CLIENTS` at once, only ``GET
/metrics`` answered, the connection closed after each response, and its
log lines rate-limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Final

from aioidentd._ratelimit import RateLimitedLog
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

#: The longest request head read (request line and headers); Prometheus sends ~300 octets.
MAX_REQUEST: Final = 4096
#: Seconds a client has to send its request head, and then to read the response.
REQUEST_TIMEOUT: Final = 5.0
#: Connections served at once; more are closed at once.
MAX_CLIENTS: Final = 16


def bind_metrics(listen: str) -> socket.socket:
    """The endpoint's listening socket, bound before the daemon drops privileges."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=MAX_CLIENTS)


class MetricsEndpoint:
    """``GET /metrics`` on ``sock``, answered with ``render()``."""

    def __init__(self, sock: socket.socket, render: Callable[[], str]) -> None:
        self._sock = sock
        self._render = render
        self._server: asyncio.Server | None = None
        self._clients = 0
        self._log: RateLimitedLog | None = None
        #: Requests answered (any status), for tests and the SIGUSR1 line.
        self.requests = 0

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._log = RateLimitedLog(logger, call_later=loop.call_later)
        self._server = await asyncio.start_server(self._serve, sock=self._sock, limit=MAX_REQUEST)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), REQUEST_TIMEOUT)
            self._server = None
        if self._log is not None:
            self._log.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            self._note("busy", "metrics connections refused (too many at once)")
            writer.transport.abort()
            return
        self._clients += 1
        try:
            status, body = await self._respond(reader)
            self.requests += 1
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: "
                f"{CONTENT_TYPE if status.startswith('200') else 'text/plain; charset=utf-8'}"
                f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            )
            if status.startswith("405"):
                head += "Allow: GET\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, ConnectionError, OSError):
            writer.transport.abort()
        finally:
            self._clients -= 1
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, bytes]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except TimeoutError:
            self._note("timeout", "metrics requests not sent in time")
            return "408 Request Timeout", b"request not sent in time\n"
        except asyncio.LimitOverrunError:
            self._note("large", "metrics requests too large")
            return "431 Request Header Fields Too Large", b"request too large\n"
        except asyncio.IncompleteReadError:
            return "400 Bad Request", b"incomplete request\n"
        request_line = head.split(b"\r\n", 1)[0]
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._note("bad", "malformed metrics requests")
            return "400 Bad Request", b"malformed request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return "405 Method Not Allowed", b"only GET /metrics\n"
        if target != b"/metrics":
            return "404 Not Found", b"only /metrics is served here\n"
        return "200 OK", self._render().encode()

    def _note(self, kind: str, summary: str) -> None:
        if self._log is not None:
            self._log.log(kind, logging.INFO, summary, "%s (first of its kind)", summary)


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
