#!/usr/bin/env python3
"""Queries about claimed connections: does the number of live claims slow the server?

    python benchmarks/bench_claims.py            # about a minute
    python benchmarks/bench_claims.py --quick    # about 20 seconds

One embedded ``IdentServer`` (``multiple=True``, 127.0.0.1, an ephemeral port) runs in a
child process that also holds 11,000 real loopback TCP connections to a listener in this
process (the "IRC server" end): the first 1,000 are the ones asked about, the other 10,000
are extra. The load is ``benchmarks/loadgen.c`` in ``keeplist`` mode: 32 kept-open ident
connections, each sending its next query as soon as the previous answer arrived, the
queries naming the 1,000 asked-about connections in turn (``<our port>, <their port>``)
and each answer checked to the octet.

The child switches between three states on command, so that every state runs in the same
process, with the same sockets, alternating round by round:

* ``none``: no claims at all; the fallback (``default="alice"``) answers every query, the
  cheapest answer the server has (the baseline);
* ``1,000 claims``: a claim (``alice``) on each asked-about connection, fallback
  ``nobody`` so a missed claim shows as a wrong answer;
* ``11,000 claims``: the same plus 10,000 live claims on the extra connections (other ids).

Printed: queries/s, p50/p99 latency and server CPU µs per query for each, and the ratios
``11,000 claims / none`` and ``11,000 claims / 1,000 claims`` of both. A claim lookup is
one dictionary read keyed by the exact connection, so the ratios should be close to 1; on
a shared machine the CPU per query is the steadier of the two figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import (
    HOST,
    Result,
    Run,
    Server,
    compile_loadgen,
    free_port,
    raise_fd_limit,
    run_loadgen,
)

ROOT = Path(__file__).resolve().parent.parent
QUERIED = 1000
EXTRA = 10_000
STATES = ("none", "queried", "all")
LABELS = {"none": "no claims", "queried": "1,000 claims", "all": "11,000 claims"}


# -- the child: the server and its claims --------------------------------------------------


async def serve(port: int, remote_port: int, queries_file: str) -> None:
    """Hold QUERIED + EXTRA connections to ``remote_port``; switch claims on command from
    stdin (``none``/``queried``/``all``), answering ``ok <claims>`` on stdout."""
    import aioidentd

    raise_fd_limit(QUERIED + EXTRA + 1000)
    socks = [socket.create_connection((HOST, remote_port)) for _ in range(QUERIED + EXTRA)]
    with open(queries_file, "w") as out:
        for sock in socks[:QUERIED]:
            ours, theirs = sock.getsockname()[1], sock.getpeername()[1]
            out.write(f"{ours}, {theirs}\t{ours},{theirs}:USERID:UNIX:alice\n")
    server = aioidentd.IdentServer(HOST, port, multiple=True, default="alice")
    claims: list[aioidentd.Claim] = []
    loop = asyncio.get_running_loop()
    async with server:
        print("ready", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            state = line.strip()
            for claim in claims:
                claim.release()
            claims.clear()
            if state == "none":
                server.default = "alice"
            else:
                server.default = "nobody"
                claims = [server.claim(sock, "alice") for sock in socks[:QUERIED]]
                if state == "all":
                    claims += [
                        server.claim(sock, f"user{i}") for i, sock in enumerate(socks[QUERIED:])
                    ]
            print(f"ok {len(server.claims)}", flush=True)


# -- the parent ----------------------------------------------------------------------------


class ClaimServer(Server):
    """The child process, with a command pipe on its stdin and replies on its stdout."""

    def __init__(self, port: int, remote_port: int, queries_file: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
        )
        self.name = "claims server"
        self.port = port
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(port),
                str(remote_port),
                queries_file,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            start_new_session=True,
            text=True,
        )

    def command(self, text: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        if not reply.startswith("ok"):
            raise RuntimeError(f"claims server: {reply!r}\n{self.output()}")
        return reply

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        super().stop()


def accept_all(listener: socket.socket, count: int, into: list[socket.socket]) -> None:
    for _ in range(count):
        conn, _ = listener.accept()
        into.append(conn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short phases, one round")
    parser.add_argument("--seconds", type=float, help="length of each measured phase")
    parser.add_argument("--rounds", type=int, help="rounds (states alternate)")
    parser.add_argument("--concurrency", type=int, default=32, help="queries in flight (32)")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        port, remote_port, queries_file = args.serve
        asyncio.run(serve(int(port), int(remote_port), queries_file))
        return 0
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    rounds = args.rounds or (1 if args.quick else 3)
    warmup = 0.3 if args.quick else 0.5

    raise_fd_limit(QUERIED + EXTRA + 1000)
    remote_ends: list[socket.socket] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-claims-") as tmp,
        socket.create_server((HOST, 0), backlog=4096) as listener,
    ):
        exe = compile_loadgen(Path(tmp))
        queries = str(Path(tmp) / "queries")
        acceptor = threading.Thread(
            target=accept_all, args=(listener, QUERIED + EXTRA, remote_ends), daemon=True
        )
        acceptor.start()
        server = ClaimServer(free_port(), listener.getsockname()[1], queries)
        try:
            assert server.proc.stdout is not None
            ready = server.proc.stdout.readline().strip()
            if ready != "ready":
                raise RuntimeError(f"claims server did not start:\n{server.output()}")
            acceptor.join(60)
            results = {state: Result() for state in STATES}
            claims = {}
            for number in range(rounds):
                order = STATES[number % 3 :] + STATES[: number % 3]
                for state in order:
                    claims[state] = int(server.command(state).split()[1])
                    run_loadgen(exe, server, "keeplist", args.concurrency, warmup, queries)
                    values, cpu = run_loadgen(
                        exe, server, "keeplist", args.concurrency, seconds, queries
                    )
                    results[state].runs.append(Run.from_loadgen(values, cpu))
        finally:
            server.stop()
            for sock in remote_ends:
                sock.close()
    report(results, claims, args.concurrency)
    return 1 if any(r.errors for r in results.values()) else 0


def report(results: dict[str, Result], claims: dict[str, int], concurrency: int) -> None:
    print(
        f"Queries about claimed connections, {concurrency} in flight on kept-open ident "
        f"connections, {QUERIED:,} connections asked about in turn"
    )
    print(f"{'':16}{'live claims':>12}{'queries/s':>12}{'p50 µs':>9}{'p99 µs':>9}{'CPU µs/q':>10}")
    for state in STATES:
        r = results[state]
        print(
            f"{LABELS[state]:16}{claims[state]:>12,}{r.qps:>12,.0f}{r.p50_us:>9.0f}"
            f"{r.p99_us:>9.0f}{r.server_us_per_query:>10.1f}"
        )
        if r.errors:
            print(f"  errors: {r.errors} ({r.error_text})")
    all_, none, queried = results["all"], results["none"], results["queried"]
    for label, base in (("no claims", none), ("1,000 claims", queried)):
        print(
            f"ratio 11,000 claims / {label + ':':14}{all_.qps / base.qps:5.2f} queries/s, "
            f"{all_.server_us_per_query / base.server_us_per_query:5.2f} CPU per query"
        )


if __name__ == "__main__":
    sys.exit(main())
