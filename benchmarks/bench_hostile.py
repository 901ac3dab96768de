"""Hostile clients and faults against the server, with figures.

Each scenario is what an attacker (or a broken application) can do to an identd on a public
port, run against ``aioidentd serve`` in a subprocess (so that its memory and its log are
the real ones) or against an embedded :class:`~aioidentd.IdentServer` (for handler faults):

* ``nonreading``: clients that send queries in ``--multiple`` mode and never read the
  answers (long ids amplify each 5-octet query ~80 times): the server's RSS growth.
* ``fairness``: three clients pipelining queries on kept-open connections that never read,
  while an ordinary querier asks on fresh connections: its p50/p99 latency, and what each
  flooder parks in the kernel (send and receive queues) at most.
* ``slowloris``: silent connections arriving without end against a small connection
  limit, while a legitimate querier asks: its success rate and p50/p99 latency.
* ``logflood``: log lines written per event class (evicted connections, over-long lines,
  raising handlers, refused connections) against the number of events.
* ``fuzz``: lines of random octets, NUL, high bytes, long digit runs, lone CR, 999-octet
  lines: exactly one well-formed answer per line.
* ``sigterm``: connections that sent their query while the daemon was stopped (as a
  debugger would stop it), then SIGTERM: answers received of those sent.
* ``handlers``: async handlers that never return: tasks still alive once their queries
  got the fallback and their connections are gone, and at most while one stays open.

Memory per idle connection is case 5 of ``make bench`` (bench_server.py), which also
waits out the kernel's deferred accepts of silent connections.

``tests/test_hostile.py`` runs the quick version of each with generous pass thresholds;
``python benchmarks/bench_hostile.py`` prints the figures (``--json`` for a machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from aioidentd import IdentRequest, IdentServer  # noqa: E402
from aioidentd.protocol import parse_reply  # noqa: E402
from support import ServeProcess, serve_process  # noqa: E402

Figures = dict[str, Any]


# -- the daemon under test ---------------------------------------------------------------------


@contextmanager
def served(*args: str) -> Iterator[ServeProcess]:
    """``aioidentd serve`` on a free loopback port (tests/support.py's ServeProcess), once
    it serves: measurements start from a daemon that has finished starting."""
    with serve_process("--host", "127.0.0.1", "--port", "0", *args) as daemon:
        daemon.wait_for(r"serving ident on ")
        yield daemon


async def _query(port: int, line: bytes, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(line)
        return await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- scenarios ---------------------------------------------------------------------------------


def nonreading(seconds: float = 2.0, clients: int = 4, each: int = 2**20) -> Figures:
    """Clients that send queries (``each`` octets at most) and never read: the server
    must stop reading them instead of queueing answers nobody reads."""
    long_id = "x" * 400
    with served("--multiple", "--default", long_id, "--idle-timeout", "60") as daemon:
        before = daemon.rss()
        socks = []
        for _ in range(clients):
            sock = socket.create_connection(("127.0.0.1", daemon.port))
            sock.setblocking(False)
            socks.append(sock)
        chunk = b"1,1\r\n" * 4096
        sent = [0] * clients
        peak = before
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            progress = False
            for i, sock in enumerate(socks):
                if sent[i] >= each:
                    continue
                try:
                    sent[i] += sock.send(chunk)
                    progress = True
                except BlockingIOError:
                    pass
            peak = max(peak, daemon.rss())
            if not progress:
                time.sleep(0.01)
        peak = max(peak, daemon.rss())
        for sock in socks:
            sock.close()
        daemon.stop()
    return {
        "clients": clients,
        "seconds": seconds,
        "sent_mib": round(sum(sent) / 2**20, 2),
        "answer_mib_asked": round(sum(sent) / 5 * (len(long_id) + 20) / 2**20, 1),
        "rss_growth_mib": round((peak - before) / 2**20, 2),
    }


def slowloris(silent: int = 400, legit: int = 200, limit: int = 50) -> Figures:
    """Silent connections keep arriving; a legitimate querier must still be answered."""
    with served("--default", "x", "--max-connections", str(limit)) as daemon:
        port = daemon.port

        async def main() -> tuple[list[float], int]:
            stop = asyncio.Event()
            held: list[asyncio.StreamWriter] = []

            async def flood() -> None:
                # Open silent connections as fast as the server accepts them, keeping them.
                while not stop.is_set():
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", port)
                    except OSError:
                        await asyncio.sleep(0.001)
                        continue
                    held.append(writer)
                    if len(held) >= silent:
                        old = held.pop(0)
                        old.close()
                    await asyncio.sleep(0)

            flooders = [asyncio.create_task(flood()) for _ in range(4)]
            while len(held) < limit * 2:  # the house is full before the first query
                await asyncio.sleep(0.005)
            latencies: list[float] = []
            failures = 0
            for n in range(1, legit + 1):
                start = time.perf_counter()
                try:
                    answer = await _query(port, b"%d,113\r\n" % n, timeout=5.0)
                except (TimeoutError, OSError):
                    answer = b""
                if answer == b"%d,113:USERID:UNIX:x\r\n" % n:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures += 1
            stop.set()
            for task in flooders:
                task.cancel()
            await asyncio.gather(*flooders, return_exceptions=True)
            for writer in held:
                writer.close()
            return latencies, failures

        latencies, _failures = asyncio.run(main())
        evictions = daemon.count(r"closing the connection from|connections closed to make")
        daemon.stop()
    return {
        "limit": limit,
        "silent_connections_held": silent,
        "legit_queries": legit,
        "answered": len(latencies),
        "success_rate": round(len(latencies) / legit, 3),
        "p50_ms": round(_percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "eviction_log_lines": evictions,
    }


def _queues(port: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(tx_queue, rx_queue) of every IPv4 TCP socket with ``port`` at either end, by
    (local port, remote port), from /proc/net/tcp."""
    queues: dict[tuple[int, int], tuple[int, int]] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
        if port in (local, remote):
            tx, rx = (int(q, 16) for q in fields[4].split(":"))
            queues[(local, remote)] = (tx, rx)
    return queues


def fairness(seconds: float = 3.0, flooders: int = 3) -> Figures:
    """Clients that pipeline queries on kept-open connections and never read, while an
    ordinary querier asks on fresh connections: its latency, and what each flooder can
    park: answers in the kernel (the server's send queue and the flooder's receive
    queue) and in the server."""
    with served("--multiple", "--default", "x" * 64, "--idle-timeout", "60") as daemon:
        port = daemon.port
        socks = []
        for _ in range(flooders):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            socks.append(sock)
        chunk = b"1,1\r\n" * 4096
        stop = time.monotonic() + seconds
        latencies: list[float] = []
        failures = 0
        parked = received = 0
        sent = 0
        n = 0
        while time.monotonic() < stop:
            for sock in socks:
                with suppress(BlockingIOError):
                    sent += sock.send(chunk)
            n += 1
            start = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as querier:
                    querier.sendall(b"%d,113\r\n" % n)
                    answer = querier.recv(200)
            except OSError:
                answer = b""
            if answer.startswith(b"%d,113:USERID:UNIX:" % n):
                latencies.append(time.perf_counter() - start)
            else:
                failures += 1
            ends = {sock.getsockname()[1] for sock in socks}
            queues = _queues(port)
            ours = sum(tx for (lo, re), (tx, _) in queues.items() if lo == port and re in ends)
            theirs = sum(rx for (lo, re), (_, rx) in queues.items() if re == port and lo in ends)
            parked = max(parked, ours)
            received = max(received, theirs)
        rss = daemon.rss()
        for sock in socks:
            sock.close()
        daemon.stop()
    return {
        "flooders": flooders,
        "seconds": seconds,
        "flood_sent_mib": round(sent / 2**20, 2),
        "querier_queries": n,
        "querier_failures": failures,
        "querier_p50_ms": round(_percentile(latencies, 0.5) * 1000, 2),
        "querier_p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        # The server's send queues (its memory), and the flooders' receive queues (on a
        # remote flooder's own host; here the same kernel).
        "server_send_queue_per_flooder_kib": round(parked / flooders / 1024, 1),
        "flooder_receive_queue_per_flooder_kib": round(received / flooders / 1024, 1),
        "server_rss_mib": round(rss / 2**20, 1),
    }


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def logflood(events: int = 300) -> Figures:
    """Log lines written per event class an outsider can trigger."""
    figures: Figures = {"events_per_class": events}
    # Over-long lines and evictions, in the daemon's own log.
    # Without defer_accept, so that silent connections reach the server at once and
    # evict each other (with it, the kernel holds them for a second first).
    with served("--default", "x", "--max-connections", "20", "--no-defer-accept") as daemon:
        base = len(daemon.lines)

        async def overlong() -> None:
            for _ in range(events):
                with suppress(OSError, TimeoutError):
                    await _query(daemon.port, b"1" * 1001 + b"\r\n")

        asyncio.run(overlong())
        figures["overlong_lines_logged"] = len(daemon.lines) - base
        base = len(daemon.lines)
        socks = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(events)]
        # Every connection past the limit evicted an older one; wait for the last one.
        asyncio.run(_query(daemon.port, b"1,1\r\n"))
        for sock in socks:
            sock.close()
        figures["evictions_logged"] = len(daemon.lines) - base
        daemon.stop()
    # Raising handlers and refusals, on an embedded server.
    counter = _Counter()
    log = logging.getLogger("aioidentd")
    log.addHandler(counter)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:

        def raising(request: IdentRequest) -> None:
            raise RuntimeError("handler bug")

        async def async_raising(request: IdentRequest) -> None:
            raise RuntimeError("async handler bug")

        async def main() -> tuple[int, int]:
            server = IdentServer(
                "127.0.0.1", 0, handlers=[raising, async_raising], response_timeout=0.05
            )
            async with server:
                port = server.addresses[0][1]
                start = len(counter.records)
                for n in range(events):
                    await _query(port, b"%d,1\r\n" % (n + 1))
                failures = len(counter.records) - start
            gate = asyncio.Event()

            async def hanging(request: IdentRequest) -> None:
                await gate.wait()

            server = IdentServer(
                "127.0.0.1", 0, handlers=[hanging], multiple=True, max_connections=5
            )
            async with server:
                port = server.addresses[0][1]
                busy = []
                for _ in range(5):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"1,1\r\n")
                    busy.append(writer)
                while len(server._tasks) < 5:
                    await asyncio.sleep(0.005)
                start = len(counter.records)
                for _ in range(events):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    with suppress(OSError):
                        await reader.read()
                    writer.close()
                refusals = len(counter.records) - start
                gate.set()
                for writer in busy:
                    writer.close()
            return failures, refusals

        failures, refusals = asyncio.run(main())
    finally:
        log.removeHandler(counter)
        log.setLevel(old_level)
    figures["handler_failure_lines"] = failures
    figures["handler_tracebacks"] = sum(1 for r in counter.records if r.exc_info)
    figures["refusals_logged"] = refusals
    return figures


def _fuzz_lines(count: int, rng: random.Random) -> list[bytes]:
    makers: list[Callable[[], bytes]] = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))),
        lambda: b"\0" * rng.randrange(1, 50),
        lambda: bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 60))),
        lambda: b"9" * rng.randrange(5, 900) + b"," + b"9" * rng.randrange(1, 90),
        lambda: b"1,2\r3",
        lambda: b"\r",
        lambda: b" " * 995 + b"1,2",
        lambda: bytes(rng.choice(b"0123456789, \t\r:") for _ in range(999)),
        lambda: b"%d , %d" % (rng.randrange(1, 65536), rng.randrange(1, 65536)),
    ]
    lines = []
    for _ in range(count):
        line = rng.choice(makers)().replace(b"\n", b" ")
        lines.append(line[:999])
    return lines


def fuzz(count: int = 2000, seed: int = 1413) -> Figures:
    """Exactly one well-formed answer per line, whatever the line holds."""
    rng = random.Random(seed)
    lines = _fuzz_lines(count, rng)

    async def main() -> tuple[int, int, int]:
        async with IdentServer("127.0.0.1", 0, multiple=True, default="fz") as server:
            port = server.addresses[0][1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"".join(line + b"\n" for line in lines))
            wellformed = mismatched = 0
            for _ in lines:
                answer = await asyncio.wait_for(reader.readline(), 10)
                try:
                    parse_reply(answer.rstrip(b"\r\n"))
                except ValueError:
                    mismatched += 1
                else:
                    wellformed += answer.endswith(b"\r\n")
            writer.write_eof()
            extra = len(await asyncio.wait_for(reader.read(), 10))
            writer.close()
            return wellformed, mismatched, extra

    wellformed, malformed, extra = asyncio.run(main())
    return {
        "lines": count,
        "wellformed_answers": wellformed,
        "malformed_answers": malformed,
        "octets_after_last_answer": extra,
    }


def sigterm(connections: int = 50) -> Figures:
    """Queries sent while the daemon is stopped, then SIGTERM: every one is answered."""
    with served("--default", "x", "--multiple") as daemon:
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            socks = []
            for n in range(1, connections + 1):
                # The kernel completes the handshake and queues the query: the daemon
                # has not accepted or read anything yet.
                sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=15)
                sock.sendall(b"%d,1\r\n%d,2\r\n" % (n, n))
                socks.append(sock)
            daemon.proc.send_signal(signal.SIGTERM)
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        answered = resets = 0
        for n, sock in enumerate(socks, 1):
            data = b""
            try:
                while chunk := sock.recv(4096):
                    data += chunk
            except ConnectionResetError:
                resets += 1
            sock.close()
            expected = b"%d,1:USERID:UNIX:x\r\n%d,2:USERID:UNIX:x\r\n" % (n, n)
            answered += 2 if data == expected else data.count(b"\r\n")
        status = daemon.proc.wait(15)  # the SIGTERM above is enough: it exits by itself
    return {
        "queries_sent": connections * 2,
        "answered": answered,
        "resets": resets,
        "exit_status": status,
    }


def handlers(queries: int = 200) -> Figures:
    """Handlers that never return must not outlive their queries' connections."""

    async def main() -> Figures:
        async def hanging(request: IdentRequest) -> None:
            await asyncio.Event().wait()

        figures: Figures = {"queries": queries}
        async with IdentServer(
            "127.0.0.1", 0, handlers=[hanging], response_timeout=0.02, idle_timeout=5
        ) as server:
            port = server.addresses[0][1]
            for n in range(queries):
                answer = await _query(port, b"%d,1\r\n" % (n + 1))
                assert answer == b"%d,1:ERROR:HIDDEN-USER\r\n" % (n + 1), answer
            deadline = time.monotonic() + 5
            while (server.connections or server._tasks) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            figures["tasks_alive_after_connections_closed"] = len(server._tasks)
        # One kept-open connection sending query after query to a hanging handler.
        async with IdentServer(
            "127.0.0.1",
            0,
            handlers=[hanging],
            response_timeout=0.01,
            multiple=True,
            max_pending=8,
        ) as server:
            port = server.addresses[0][1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"".join(b"%d,1\r\n" % (n + 1) for n in range(queries)))
            most = 0
            answered = 0
            with suppress(TimeoutError):
                while answered < queries:
                    await asyncio.wait_for(reader.readline(), 0.5)
                    answered += 1
                    most = max(most, len(server._tasks))
            figures["kept_open_answered"] = answered
            figures["kept_open_max_tasks"] = most
            writer.close()
            deadline = time.monotonic() + 5
            while (server.connections or server._tasks) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            figures["tasks_alive_after_kept_open_closed"] = len(server._tasks)
        return figures

    return asyncio.run(main())


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "nonreading": nonreading,
    "fairness": fairness,
    "slowloris": slowloris,
    "logflood": logflood,
    "fuzz": fuzz,
    "sigterm": sigterm,
    "handlers": handlers,
}


def cli(scenarios: dict[str, Callable[..., Figures]], doc: str | None) -> None:
    """The command line of a script of scenarios: run the named ones (all by default) and
    print their figures."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("scenario", nargs="*", help=f"any of {', '.join(scenarios)} (all)")
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    args = parser.parse_args()
    unknown = [name for name in args.scenario if name not in scenarios]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(scenarios)}")
    for name in args.scenario or list(scenarios):
        figures = scenarios[name]()
        if args.json:
            print(json.dumps({"scenario": name, **figures}), flush=True)
        else:
            print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def main() -> None:
    cli(SCENARIOS, __doc__)


if __name__ == "__main__":
    main()
