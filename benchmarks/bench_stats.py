#!/usr/bin/env python3
"""What the counters of ``IdentServer.stats`` cost on the hot path (issue 13), in one run.

    python benchmarks/bench_stats.py            # 3 rounds of 2 s per case
    python benchmarks/bench_stats.py --quick    # 1 round of 1 s

The counters cannot be switched off, so they are priced, not removed: the server's CPU per
query is measured under load (``aioidentd serve --default alice``, benchmarks/loadgen.c,
the server's CPU from /proc), and the counter updates that one query makes on that path
(as server.py makes them: a connection accepted, a query, a fallback answer, the latency
histogram) are timed in this process, minus the cost of the timing loop itself. The
ratio of the two is what the counters add to a query; both are measured in the same run
on the same machine. The daemon's own count (decisions by kind) is priced against
``Policy.decide``, the cheapest step of a daemon's query.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import timeit
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from aioidentd.policy import Config, Policy  # noqa: E402
from aioidentd.stats import ServerStats  # noqa: E402
from bench_server import (  # noqa: E402  (after the path is set)
    Result,
    Server,
    compile_loadgen,
    free_port,
    measure,
    our_argv,
    server_env,
)

#: (name, loadgen mode, connections, queries in flight on each, --multiple)
CASES = (
    ("fresh connection per query, 50 in flight", "conn", 50, 1, False),
    ("kept-open connections, 8 in flight x 20", "keep", 20, 8, True),
)


class _Server:
    stats = ServerStats()


def counters_us(fresh: bool, daemon: bool = False) -> float:
    """µs of the counter updates of one statically answered query (server.py's order;
    with ``daemon``, also the responder's count of its decision), less the loop's own
    cost."""
    server = _Server()
    decisions: Counter[str] = Counter()

    batch = [0]

    def with_counters() -> None:
        stats = server.stats
        if fresh:  # the at-once path: one query, counted as it is dispatched and answered
            stats.connections_accepted += 1
            stats.queries += 1
            stats.fallbacks += 1
            stats._observe(0.0)
        else:  # one of 8 pipelined queries: a local count, and the batch's one update
            batch[0] += 1
            if batch[0] == 8:
                stats._instant_fallbacks(8)
                batch[0] = 0
        if daemon:
            decisions["username"] += 1

    def empty() -> None:
        stats = server.stats  # noqa: F841  (the same lookup, nothing counted)

    number = 200_000
    spent = min(timeit.repeat(with_counters, number=number, repeat=7))
    loop = min(timeit.repeat(empty, number=number, repeat=7))
    return max(spent - loop, 0.0) * 1e6 / number


def decide_us() -> float:
    """µs of one Policy.decide with the built-in policy (the daemon's cheapest step)."""
    policy = Policy(Config())
    uid = 65534  # nobody: a user with a passwd entry, not root's shortcut

    def decide() -> None:
        policy.decide(uid, ("127.0.0.1", 40000), ("127.0.0.1", 6667))

    number = 20_000
    return min(timeit.repeat(decide, number=number, repeat=5)) * 1e6 / number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s per case")
    args = parser.parse_args(argv)
    rounds, seconds, warmup = (1, 1.0, 0.3) if args.quick else (3, 2.0, 0.5)
    env = server_env()
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as work:
        loadgen = compile_loadgen(Path(work))
        print(f"{rounds} round(s) of {seconds:g} s per case; aioidentd serve --default alice")
        failed = False
        for name, mode, connections, depth, multiple in CASES:
            port = free_port()
            argv = our_argv(port, multiple=multiple, uvloop=False)
            server = Server("ours", argv, port, env)
            try:
                server.wait_ready()
                result = Result()
                for _ in range(rounds):
                    run = measure(loadgen, server, mode, connections, seconds, warmup, depth)
                    result.runs.append(run)
            finally:
                server.stop()
            if result.errors or not result.ok:
                print(f"  {name}: {result.errors} errors, {result.ok} answers", flush=True)
                failed = True
                continue
            per_query = result.server_us_per_query
            counted = counters_us(fresh=mode == "conn")
            print(
                f"  {name}: server {per_query:6.1f} µs CPU/query; IdentServer.stats "
                f"{counted * 1000:4.0f} ns/query = {counted / per_query * 100:.2f} %",
                flush=True,
            )
        # The daemon adds one count per decided query (KernelResponder.decisions), next to
        # a lookup and the policy: priced against Policy.decide alone, its cheapest part.
        added = counters_us(fresh=False, daemon=True) - counters_us(fresh=False)
        decide = decide_us()
        print(
            f"  daemon: count of decisions {max(added, 0.0) * 1000:4.0f} ns/query against "
            f"Policy.decide's {decide:.1f} µs (built-in policy, no lookup) = "
            f"{max(added, 0.0) / decide * 100:.2f} %"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
