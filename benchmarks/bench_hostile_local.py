"""Hostile local users and scrapers against the daemon's two other sockets, with figures.

The ident port is not the daemon's only door: every local user may connect to the claims
socket (``[server] claims_socket``), and whoever reaches ``[metrics] listen`` may talk
HTTP to it. Each scenario runs ``aioidentd serve`` in a subprocess (its memory and its log
are the real ones) and attacks it from other processes:

* ``claimsflood``: a local user writes newlines to the claims socket (200 KiB per
  connection, on many connections) and never reads the answers, while an ordinary querier
  asks the ident port one query per connection: the querier's p50/p99 with and without
  the flood, in the same run, against the daemon's ``response_timeout``.
* ``claimsmemory``: connections that send requests drawing long refusals (an unknown op
  is named in its answer) and never read them: the daemon's RSS growth for the octets of
  answers asked for.
* ``claimslog``: connections each sending lines the claims code cannot digest (JSON
  nested deeper than the parser's recursion limit, a claim for an interface index no
  kernel has, garbage): log lines and tracebacks written, per connection.
* ``metricsslots``: half-open HTTP requests held on every slot of ``[metrics] listen``
  (renewed as soon as one is closed), while a scraper asks: scrapes served and their
  p50/p99, with and without the holders.
* ``metricsmemory``: HTTP clients that send request heads without end, or pipeline
  requests and never read: RSS growth.

``tests/test_hostile_local.py`` runs the quick form of each with pass thresholds;
``python benchmarks/bench_hostile_local.py`` prints the figures (``--json`` for a machine).
Needs root (the daemon binds its sockets as root and drops privileges, as in production).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_hostile import _percentile, cli  # noqa: E402
from support import ServeProcess, serve_process  # noqa: E402

Figures = dict[str, Any]

#: The daemon's default deadline for an answer (``[server] response_timeout``).
RESPONSE_TIMEOUT = 1.0


@contextmanager
def daemon(config: str = "", claims: bool = True, metrics: bool = False) -> Iterator[ServeProcess]:
    """``aioidentd serve`` with real kernel lookups on a free loopback port, its claims
    socket in a fresh directory and/or ``[metrics] listen`` on a free port, once it serves.
    ``daemon.claims`` is the socket's path, ``daemon.metrics_port`` the endpoint's port."""
    directory = Path(tempfile.mkdtemp(prefix="aioidentd-hostile-"))
    directory.chmod(0o755)
    path = directory / "claims.sock"
    text = "[server]\n"
    if claims:
        text += f'claims_socket = "{path}"\n'
    text += config
    if metrics:
        text += '\n[metrics]\nlisten = "127.0.0.1:0"\n'
    (directory / "aioidentd.toml").write_text(text)
    (directory / "aioidentd.toml").chmod(0o644)
    try:
        args = ("--config", str(directory / "aioidentd.toml"), "--host", "127.0.0.1", "--port", "0")
        with serve_process(*args) as served:
            served.wait_for(r"serving ident on ")
            served.claims = str(path)  # type: ignore[attr-defined]
            if metrics:
                found = served.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
                served.metrics_port = int(found.group(1))  # type: ignore[attr-defined]
            yield served
            served.stop()
    finally:
        for child in directory.iterdir():
            with suppress(OSError):
                child.unlink()
        with suppress(OSError):
            directory.rmdir()


def _ms(value: float) -> float:
    return round(value * 1000, 2)


def _ident_latencies(port: int, queries: int, timeout: float = 5.0) -> tuple[list[float], int]:
    """``queries`` queries one per connection, one after the other: the latencies of the
    well-formed answers, and how many got none (or a wrong one)."""
    latencies: list[float] = []
    failures = 0
    for n in range(1, queries + 1):
        line = b"%d,%d\r\n" % (40000 + n % 20000, 6667)
        start = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
                sock.sendall(line)
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = sock.recv(1024)
                    if not chunk:
                        break
                    answer += chunk
        except OSError:
            answer = b""
        if answer.startswith(line.rstrip().replace(b" ", b"") + b":") and answer.endswith(b"\n"):
            latencies.append(time.perf_counter() - start)
        else:
            failures += 1
    return latencies, failures


def _fork(work: Callable[[], None]) -> int:
    """A child process running ``work`` until it is killed (an attacker of its own, so
    that its CPU is not the querier's)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            work()
        finally:
            os._exit(0)
    return pid


def _reap(pids: list[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _unix(path: str, timeout: float = 2.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


# -- the claims socket -------------------------------------------------------------------------


def claimsflood(
    flooders: int = 2, connections: int = 8, kib: int = 200, queries: int = 200
) -> Figures:
    """Newlines to the claims socket, never read, against one query at a time."""
    with daemon() as served:
        port = served.port
        path = served.claims  # type: ignore[attr-defined]
        _ident_latencies(port, 20)  # warm up
        quiet, quiet_failures = _ident_latencies(port, queries)

        def flood() -> None:
            # Each connection gets its burst in one write (the kernel holds it all until
            # the daemon reads) and stays open, never read.
            held: list[socket.socket] = []
            burst = b"\n" * (kib * 1024)
            while len(held) < connections:
                try:
                    sock = _unix(path, timeout=1.0)
                except OSError:
                    time.sleep(0.01)
                    continue
                held.append(sock)
                with suppress(OSError):
                    sock.sendall(burst)
            signal.pause()

        pids = [_fork(flood) for _ in range(flooders)]
        try:
            time.sleep(0.1)  # the flood is on before the first query
            flooded, flooded_failures = _ident_latencies(port, queries)
        finally:
            _reap(pids)
        tracebacks = served.count(r"Traceback|Fatal error")
    # A query with no answer counts as the querier's whole timeout (5 s).
    p99 = _percentile(flooded + [5.0] * flooded_failures, 0.99)
    return {
        "flooders": flooders,
        "connections_each": connections,
        "queries": queries,
        "quiet_p50_ms": _ms(_percentile(quiet, 0.5)),
        "quiet_p99_ms": _ms(_percentile(quiet, 0.99)),
        "flood_p50_ms": _ms(_percentile(flooded, 0.5)),
        "flood_p99_ms": _ms(p99),
        "flood_p99_vs_quiet": round(p99 / max(_percentile(quiet, 0.99), 1e-6), 1),
        "response_timeout_ms": _ms(RESPONSE_TIMEOUT),
        "late": sum(1 for took in flooded if took > RESPONSE_TIMEOUT) + flooded_failures,
        "unanswered": quiet_failures + flooded_failures,
        "tracebacks": tracebacks,
    }


def claimsmemory(connections: int = 64, each_kib: int = 256) -> Figures:
    """Requests whose answers are long, sent on many connections that never read."""
    request = json.dumps({"op": "x" * 1900}).encode() + b"\n"  # answered with ~1.9 KiB
    with daemon() as served:
        path = served.claims  # type: ignore[attr-defined]
        before = peak = served.rss()
        socks = []
        for _ in range(connections):
            sock = _unix(path)
            sock.setblocking(False)
            socks.append(sock)
        payload = request * (each_kib * 1024 // len(request))
        sent = [0] * connections
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and min(sent) < len(payload):
            progress = False
            for i, sock in enumerate(socks):
                if sent[i] >= len(payload):
                    continue
                try:
                    sent[i] += sock.send(payload[sent[i] : sent[i] + 65536])
                    progress = True
                except BlockingIOError:
                    pass
                except OSError:
                    sent[i] = len(payload)  # closed by the daemon: fine
            peak = max(peak, served.rss())
            if not progress:
                time.sleep(0.01)
                peak = max(peak, served.rss())
        for _ in range(100):  # what the daemon still reads and answers
            peak = max(peak, served.rss())
            time.sleep(0.01)
        for sock in socks:
            sock.close()
        alive = served.proc.poll() is None
    asked = sum(sent) // len(request) * 1900
    return {
        "connections": connections,
        "sent_mib": round(sum(sent) / 2**20, 2),
        "answer_mib_asked": round(asked / 2**20, 1),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_growth_mib": round((peak - before) / 2**20, 2),
        "daemon_alive": alive,
    }


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def claimslog(connections: int = 50) -> Figures:
    """Lines the claims code cannot digest: what the log says about them."""
    impossible = json.dumps(
        {
            "op": "claim",
            "local": ["fe80::1%4294967296000", 1],
            "remote": ["fe80::2%4294967296000", 2],
            "user_id": "x",
        }
    ).encode()
    lines = [_nested(1000), impossible, b"garbage"]
    with daemon() as served:
        path = served.claims  # type: ignore[attr-defined]
        base = len(served.lines)
        answered = 0
        for _ in range(connections):
            with _unix(path, timeout=5) as sock:
                sock.sendall(b"".join(line + b"\n" for line in lines))
                sock.shutdown(socket.SHUT_WR)
                data = b""
                with suppress(OSError):
                    while chunk := sock.recv(65536):
                        data += chunk
                answered += sum(1 for line in data.splitlines() if line.startswith(b'{"ok": false'))
        # The daemon still serves the socket afterwards.
        with _unix(path, timeout=5) as sock:
            sock.sendall(b'{"op": "connected", "host": "127.0.0.1"}\n')
            still = sock.recv(4096) == b'{"ok": true}\n'
        logged = served.lines[base:]
    return {
        "connections": connections,
        "bad_lines": connections * len(lines),
        "refusals_answered": answered,
        "log_lines": len(logged),
        "tracebacks": sum(1 for line in logged if "Traceback" in line),
        "fatal_errors": sum(1 for line in logged if "Fatal error" in line),
        "still_serving": still,
    }


# -- the metrics endpoint ----------------------------------------------------------------------


def _scrape(port: int, timeout: float = 3.0) -> float | None:
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return None
    if data.startswith(b"HTTP/1.1 200 OK") and b"aioidentd_queries_total" in data:
        return time.perf_counter() - start
    return None


def _scrapes(port: int, count: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    for _ in range(count):
        took = _scrape(port)
        if took is not None:
            latencies.append(took)
    return latencies, count - len(latencies)


def metricsslots(holders: int = 2, held: int = 16, scrapes: int = 40) -> Figures:
    """Half a request head on every slot, renewed at once; a scraper must be served."""
    with daemon(claims=False, metrics=True) as served:
        port = served.metrics_port  # type: ignore[attr-defined]
        quiet, _ = _scrapes(port, 10)

        def hold() -> None:
            import selectors

            selector = selectors.DefaultSelector()
            while True:
                while len(selector.get_map()) < held:
                    try:
                        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
                    except OSError:
                        time.sleep(0.001)
                        continue
                    sock.setblocking(False)
                    selector.register(sock, selectors.EVENT_READ)
                for key, _ in selector.select(0.05):
                    closed = False
                    try:
                        closed = not key.fileobj.recv(65536)  # type: ignore[union-attr]
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed = True
                    if closed:
                        selector.unregister(key.fileobj)
                        key.fileobj.close()  # type: ignore[union-attr]

        base = len(served.lines)
        pids = [_fork(hold) for _ in range(holders)]
        try:
            time.sleep(0.5)  # every slot is held before the first scrape
            flooded, failures = _scrapes(port, scrapes)
        finally:
            _reap(pids)
        evictions = served.count(r"closing the connection from")
        logged = len(served.lines) - base
    return {
        "holders": holders,
        "held_each": held,
        "scrapes": scrapes,
        "served": len(flooded),
        "success_rate": round(len(flooded) / scrapes, 3),
        "quiet_p50_ms": _ms(_percentile(quiet, 0.5)),
        "held_p50_ms": _ms(_percentile(flooded, 0.5)),
        "held_p99_ms": _ms(_percentile(flooded, 0.99)),
        "failures": failures,
        "log_lines": logged,
        "eviction_lines": evictions,
    }


def metricsmemory(connections: int = 32, each_kib: int = 1024) -> Figures:
    """Heads that never end and requests never read: what the daemon keeps."""
    with daemon(claims=False, metrics=True) as served:
        port = served.metrics_port  # type: ignore[attr-defined]
        before = peak = served.rss()
        socks = []
        for i in range(connections):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue
            sock.setblocking(False)
            socks.append((sock, i % 2))
        endless = b"X-Long: " + b"a" * 65536
        pipelined = b"GET /metrics HTTP/1.1\r\n\r\n" * 2048
        sent = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            progress = False
            for sock, kind in socks:
                try:
                    sent += sock.send(endless if kind else pipelined)
                    progress = True
                except BlockingIOError:
                    pass
                except OSError:
                    pass
            peak = max(peak, served.rss())
            if not progress:
                time.sleep(0.01)
            if sent >= connections * each_kib * 1024:
                break
        for sock, _ in socks:
            sock.close()
        still = _scrape(port) is not None
    return {
        "connections": len(socks),
        "sent_mib": round(sent / 2**20, 2),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_growth_mib": round((peak - before) / 2**20, 2),
        "scrape_after": still,
    }


SCENARIOS: dict[str, Callable[..., Figures]] = {
    "claimsflood": claimsflood,
    "claimsmemory": claimsmemory,
    "claimslog": claimslog,
    "metricsslots": metricsslots,
    "metricsmemory": metricsmemory,
}


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench_hostile_local: needs root (the daemon binds as root, then drops)")
    cli(SCENARIOS, __doc__)


if __name__ == "__main__":
    main()
