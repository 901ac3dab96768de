"""Micro-benchmark: NetlinkLookup vs ProcNetLookup on a host with many TCP sockets.

The point being measured is that a sock_diag exact match costs the same however many sockets
exist, while the /proc scan grows with the table. Opens N extra loopback sockets (N/2 connected
pairs), then times one hit and one miss with each back end.

    PYTHONPATH=src python benchmarks/bench_lookup.py [-n 10000]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench_server import raise_fd_limit

try:
    from aioidentd.lookup import Address, NetlinkLookup, ProcNetLookup
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from aioidentd.lookup import Address, NetlinkLookup, ProcNetLookup


def open_sockets(n: int) -> list[socket.socket]:
    """n sockets in n/2 ESTABLISHED loopback connections (at least one), plus the listener."""
    socks: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    socks.append(listener)
    addr = listener.getsockname()
    for _ in range(max(n // 2, 1)):
        client = socket.create_connection(addr)
        server, _ = listener.accept()
        socks += (client, server)
    return socks


def per_call_us(fn: Callable[[], object], min_seconds: float = 0.5) -> float:
    """Mean µs per call, repeating until at least min_seconds have been spent."""
    calls, elapsed = 0, 0.0
    batch = 1
    while elapsed < min_seconds:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        elapsed += time.perf_counter() - start
        calls += batch
        batch *= 2
    return elapsed / calls * 1e6


def table_lines() -> int:
    total = 0
    for name in ("tcp", "tcp6"):
        with open(f"/proc/net/{name}", "rb") as f:
            total += f.read().count(b"\n") - 1
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10000, help="extra sockets to open (default 10000)")
    args = parser.parse_args()

    raise_fd_limit(args.n + 100)
    socks = open_sockets(args.n)
    client = socks[-2]
    hit: tuple[Address, Address] = (client.getsockname(), client.getpeername())
    miss: tuple[Address, Address] = (hit[0], (hit[1][0], 1))  # port 1: nothing listens there

    netlink, proc = NetlinkLookup(), ProcNetLookup()
    me = os.getuid()
    assert netlink.owner(*hit) == me and proc.owner(*hit) == me
    assert netlink.owner(*miss) is None and proc.owner(*miss) is None

    print(f"extra sockets: {len(socks) - 1}; /proc/net/tcp{{,6}} lines: {table_lines()}")
    print(f"{'case':6} {'netlink µs':>12} {'proc µs':>12} {'proc/netlink':>13}")
    for name, (local, remote) in (("hit", hit), ("miss", miss)):
        nl_us = per_call_us(lambda: netlink.owner(local, remote))  # noqa: B023
        proc_us = per_call_us(lambda: proc.owner(local, remote))  # noqa: B023
        print(f"{name:6} {nl_us:12.2f} {proc_us:12.1f} {proc_us / nl_us:12.0f}x")

    netlink.close()
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
