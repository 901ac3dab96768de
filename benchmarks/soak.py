"""A long run with good, hostile and idle clients at once, so that a leak shows as a slope.

The server (an embedded :class:`~aioidentd.IdentServer` with a mix of handlers: one that
answers at once, one that answers later, one that hangs, one that raises now and then)
runs in a child process and reports its own RSS, open descriptors, asyncio tasks and
connections every ``--every`` seconds. This process drives the clients:

* good queriers, a fresh connection per query, checking every answer;
* kept-open clients sending query after query;
* clients that send queries and never read;
* silent connections, and slowloris ones trickling an octet now and then;
* garbage: random octets, over-long lines, resets.

It prints one row per interval and, at the end, the least-squares slope of RSS, descriptors
and tasks over the second half of the run (the first half warms caches and pools). Not
run in CI: ``python benchmarks/soak.py --minutes 60`` (the default is 2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


# -- the server side (child process) -----------------------------------------------------------


async def serve(every: float) -> None:
    from aioidentd import IdentRequest, IdentServer

    rng = random.Random(7)

    def quick(request: IdentRequest) -> None:
        if request.server_port % 4 == 0:
            request.reply("UNIX", "quick")

    async def later(request: IdentRequest) -> None:
        if request.server_port % 4 == 1:
            await asyncio.sleep(0.01)
            request.reply("UNIX", "later")

    async def hanging(request: IdentRequest) -> None:
        if request.server_port % 4 == 2:
            await asyncio.Event().wait()

    def raising(request: IdentRequest) -> None:
        if rng.random() < 0.01:
            raise RuntimeError("a handler bug")

    server = IdentServer(
        "127.0.0.1",
        0,
        multiple=True,
        handlers=[quick, later, hanging, raising],
        response_timeout=0.2,
        idle_timeout=5.0,
        first_query_timeout=2.0,
        max_connections=300,
        default="fallback",
    )
    tracing = bool(os.environ.get("SOAK_TRACEMALLOC"))
    if tracing:  # where the memory goes, when a slope shows: growth against the first sample
        import tracemalloc

        tracemalloc.start(5)
    baseline = None
    async with server:
        print(json.dumps({"port": server.addresses[0][1]}), flush=True)
        while True:
            await asyncio.sleep(every)
            if tracing:
                snapshot = tracemalloc.take_snapshot()
                if baseline is None:
                    baseline = snapshot
                else:
                    for stat in snapshot.compare_to(baseline, "traceback")[:3]:
                        print(stat, *stat.traceback.format()[-6:], sep="\n", file=sys.stderr)
            rss = 0
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
            print(
                json.dumps(
                    {
                        "rss": rss,
                        "fds": len(os.listdir("/proc/self/fd")),
                        "tasks": len(asyncio.all_tasks()),
                        "connections": server.connections,
                    }
                ),
                flush=True,
            )


# -- the client side ---------------------------------------------------------------------------


class Counts:
    def __init__(self) -> None:
        self.good = 0
        self.good_failed = 0
        self.reasons: dict[str, int] = {}
        self.kept = 0
        self.hostile = 0


async def good(port: int, counts: Counts, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        n = n % 60000 + 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"%d,6667\r\n" % n)
            line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            ok = line.startswith(b"%d,6667:" % n) and line.endswith(b"\r\n")
            reason = "closed without an answer" if not line else f"wrong answer {line!r}"
        except (OSError, TimeoutError) as exc:
            ok = False
            reason = type(exc).__name__
        if ok:
            counts.good += 1
        else:
            counts.good_failed += 1
            counts.reasons[reason] = counts.reasons.get(reason, 0) + 1
        await asyncio.sleep(0.002)


async def kept_open(port: int, counts: Counts, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with suppress(OSError, TimeoutError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for n in range(1, 200):
                if stop.is_set():
                    break
                writer.write(b"%d,113\r\n" % n)
                await asyncio.wait_for(reader.readline(), 5)
                counts.kept += 1
                await asyncio.sleep(0.01)
            writer.close()


async def hostile(port: int, counts: Counts, stop: asyncio.Event, rng: random.Random) -> None:
    held: list[socket.socket] = []
    while not stop.is_set():
        kind = rng.randrange(5)
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        sock.setblocking(False)
        with suppress(OSError):
            if kind == 0:  # sends queries, never reads
                sock.send(b"1,1\r\n" * 2000)
            elif kind == 1:  # silent
                pass
            elif kind == 2:  # slowloris
                sock.send(b"1")
            elif kind == 3:  # garbage, over-long
                sock.send(bytes(rng.randrange(256) for _ in range(1500)))
            else:  # reset after a query
                sock.send(b"5,5\r\n")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        counts.hostile += 1
        held.append(sock)
        if len(held) > 400:
            held.pop(0).close()
        await asyncio.sleep(0.005)
    for sock in held:
        sock.close()


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (units per minute)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    cov = sum((t - mx) * (v - my) for t, v in points)
    return cov / var * 60 if var else 0.0


async def drive(minutes: float, every: float) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        "--every",
        str(every),
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert child.stdout is not None
    port = json.loads(await child.stdout.readline())["port"]
    counts = Counts()
    stop = asyncio.Event()
    rng = random.Random(1413)
    drivers = [asyncio.create_task(good(port, counts, stop)) for _ in range(4)]
    drivers += [asyncio.create_task(kept_open(port, counts, stop)) for _ in range(4)]
    drivers += [asyncio.create_task(hostile(port, counts, stop, rng)) for _ in range(2)]
    start = time.monotonic()
    samples: list[tuple[float, dict[str, Any]]] = []
    print(
        f"{'t':>6} {'rss MiB':>8} {'fds':>5} {'tasks':>6} {'conns':>6} "
        f"{'good':>8} {'failed':>6} {'kept':>8} {'hostile':>8}"
    )
    try:
        while time.monotonic() - start < minutes * 60:
            line = await child.stdout.readline()
            if not line:
                raise SystemExit("the server process died")
            sample = json.loads(line)
            t = time.monotonic() - start
            samples.append((t, sample))
            print(
                f"{t:6.0f} {sample['rss'] / 2**20:8.1f} {sample['fds']:5d} {sample['tasks']:6d} "
                f"{sample['connections']:6d} {counts.good:8d} {counts.good_failed:6d} "
                f"{counts.kept:8d} {counts.hostile:8d}",
                flush=True,
            )
    finally:
        stop.set()
        await asyncio.gather(*drivers, return_exceptions=True)
        child.terminate()
        await child.wait()
    half = [(t, s) for t, s in samples if t >= minutes * 30]
    for key, unit in (("rss", 2**20), ("fds", 1), ("tasks", 1)):
        slope = _slope([(t, s[key] / unit) for t, s in half])
        label = "MiB" if key == "rss" else key
        print(f"slope over the second half: {slope:+.3f} {label}/min")
    total = counts.good + counts.good_failed
    print(f"good queries answered: {counts.good}/{total} ({counts.good / max(total, 1):.2%})")
    for reason, count in sorted(counts.reasons.items()):
        print(f"  failed: {count} x {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        with suppress(KeyboardInterrupt):
            asyncio.run(serve(args.every))
        return
    asyncio.run(drive(args.minutes, args.every))


if __name__ == "__main__":
    main()
