#!/usr/bin/env python3
"""Benchmark ``aioidentd serve`` against Debian's oidentd in one run, and print ratios.

    python benchmarks/bench_server.py            # full run, about a minute
    python benchmarks/bench_server.py --quick    # about 15 seconds

What runs (all on 127.0.0.1, each server on its own free ephemeral port):

* ours: ``python -m aioidentd serve --port P --default alice`` (one process), and a second
  instance with ``--multiple`` for the kept-open test. The code is this checkout's ``src``.
* oidentd: ``oidentd -i -S -q -a 127.0.0.1 -p P -R alice`` (foreground, static reply, no
  connection lookup, so both servers do the same work: parse, answer, close).
* the load: ``benchmarks/loadgen.c``, compiled with ``cc -O2`` into a temporary directory
  at start, one thread on epoll (not Python, not in a server's process), closed loop with
  ``--concurrency`` queries in flight. Its own CPU time is reported next to the server's
  so that it can be seen not to be the bottleneck.

Measured for each server:

1. connections/s, one query per new connection (connect, ``P, P\\r\\n``, read the answer,
   close). The client closes with SO_LINGER 0 (RST) after reading the answer, so neither
   end keeps TIME_WAIT and the loopback port range is never exhausted.
2. queries/s on kept-open connections (ours with ``--multiple``). oidentd answers one
   query per connection (a second one gets an RST), so it has no such figure.
3. p50/p99 latency per query: connect() to the answer's end of line in test 1, send() to
   the end of line in test 2.
4. server CPU microseconds per query: utime+stime from /proc/PID/stat, before and after,
   over the server's whole process group: the parent's own time, plus cutime+cstime (the
   children it has reaped; oidentd forks a child per connection), plus the live members
   of the group. Clock-tick resolution (10 ms) over seconds of load.

Every answer must be exactly ``S,C:USERID:UNIX:alice`` + CR LF for the ports sent; anything
else (wrong answer, reset, EOF, timeout, refused connect) is an error, counted and shown.
The exit status is 1 when any error occurred.

The machine is shared and small: each test alternates between the servers for
``--rounds`` rounds, after a short warm-up, and the figures are totals (throughput, CPU)
or means of the rounds (latency).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADGEN_SRC = Path(__file__).resolve().parent / "loadgen.c"
USER = "alice"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One loadgen run's figures."""

    ok: int
    errors: int
    elapsed: float
    loadgen_cpu: float
    server_cpu: float
    p50_us: float
    p99_us: float
    error_kinds: dict[str, int]
    sample: str

    @classmethod
    def from_loadgen(cls, values: dict[str, str], server_cpu: float) -> Run:
        """The figures of one loadgen report (its ``key=value`` words) and the server's CPU."""
        return cls(
            ok=int(values["ok"]),
            errors=int(values["errors"]),
            elapsed=float(values["elapsed"]),
            loadgen_cpu=float(values["cpu"]),
            server_cpu=server_cpu,
            p50_us=float(values["p50_us"]),
            p99_us=float(values["p99_us"]),
            error_kinds={k[4:]: int(v) for k, v in values.items() if k.startswith("err_")},
            sample=values.get("sample", "-"),
        )


@dataclass
class Result:
    """The rounds of one test against one server."""

    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(r.ok for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)

    @property
    def qps(self) -> float:
        elapsed = sum(r.elapsed for r in self.runs)
        return self.ok / elapsed if elapsed else 0.0

    @property
    def p50_us(self) -> float:
        return sum(r.p50_us for r in self.runs) / len(self.runs)

    @property
    def p99_us(self) -> float:
        return sum(r.p99_us for r in self.runs) / len(self.runs)

    @property
    def server_us_per_query(self) -> float:
        return sum(r.server_cpu for r in self.runs) * 1e6 / self.ok if self.ok else 0.0

    @property
    def loadgen_us_per_query(self) -> float:
        return sum(r.loadgen_cpu for r in self.runs) * 1e6 / self.ok if self.ok else 0.0

    @property
    def error_text(self) -> str:
        kinds: dict[str, int] = {}
        for run in self.runs:
            for kind, count in run.error_kinds.items():
                kinds[kind] = kinds.get(kind, 0) + count
        text = ", ".join(f"{k} {v}" for k, v in kinds.items() if v)
        samples = {r.sample for r in self.runs if r.sample != "-"}
        if samples:
            text += f"; e.g. {sorted(samples)[0]!r}"
        return text


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _ticks(pid: int) -> tuple[int, int, int]:
    """(pgid, own utime+stime, reaped children's cutime+cstime) of one process, in ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5): pgrp is 5, utime..cstime are 14..17.
    return int(fields[2]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


class Server:
    """A server subprocess in its own process group (which we alone signal)."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str]) -> None:
        self.name = name
        self.port = port
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.output()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not listening on {self.port}") from None
                time.sleep(0.05)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def cpu_seconds(self) -> float:
        """CPU time of the whole process group so far: the leader's own and reaped
        children's, plus every live member's own."""
        pid = self.proc.pid
        _, own, reaped = _ticks(pid)
        total = own + reaped
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == pid:
                continue
            try:
                pgid, member, _ = _ticks(int(entry))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile, or not readable
            if pgid == pid:
                total += member
        return total / CLK_TCK

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def compile_loadgen(workdir: Path) -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("bench_server: no C compiler (cc) found; it builds benchmarks/loadgen.c")
    exe = workdir / "loadgen"
    subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(LOADGEN_SRC)], check=True)
    return exe


def run_loadgen(
    exe: Path, server: Server, mode: str, concurrency: int, seconds: float, last: str = USER
) -> tuple[dict[str, str], float]:
    """One loadgen run; ``last`` is its final argument (the user id to expect, or for the
    ``list`` mode the file of queries and answers)."""
    before = server.cpu_seconds()
    out = subprocess.run(
        [str(exe), HOST, str(server.port), mode, str(concurrency), str(seconds), last],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    time.sleep(0.2)  # let oidentd reap its last children, so cutime counts them
    cpu = server.cpu_seconds() - before
    values = dict(item.split("=", 1) for item in out.split())
    return values, cpu


def measure(
    exe: Path, server: Server, mode: str, concurrency: int, seconds: float, warmup: float
) -> Run:
    run_loadgen(exe, server, mode, concurrency, warmup)
    values, cpu = run_loadgen(exe, server, mode, concurrency, seconds)
    return Run.from_loadgen(values, cpu)


def our_argv(port: int, *, multiple: bool, uvloop: bool) -> list[str]:
    serve = ["serve", "--port", str(port), "--default", USER]
    if multiple:
        serve.append("--multiple")
    if uvloop:
        # Not a CLI option: the default event loop policy is swapped before main() runs.
        code = (
            "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy());"
            " from aioidentd.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        return [sys.executable, "-c", code, *serve]
    return [sys.executable, "-m", "aioidentd", *serve]


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short phases, one round (~15 s)")
    parser.add_argument("--seconds", type=float, help="length of each measured phase")
    parser.add_argument("--rounds", type=int, help="rounds per test (servers alternate)")
    parser.add_argument("--concurrency", type=int, default=32, help="queries in flight (32)")
    parser.add_argument("--oidentd", default="/usr/sbin/oidentd", help="oidentd binary")
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="also run our server on uvloop (when importable), as an extra column",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    rounds = args.rounds or (1 if args.quick else 2)
    warmup = 0.3 if args.quick else 0.5

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )

    # (name, test, argv): test is "conn" (1) or "keep" (2)
    variants: list[tuple[str, str, list[str]]] = []
    port = free_port()
    variants.append(("ours", "conn", our_argv(port, multiple=False, uvloop=False)))
    oidentd = shutil.which(args.oidentd)
    if oidentd is None:
        print(f"bench_server: {args.oidentd} not found: no baseline, no ratios", file=sys.stderr)
    else:
        variants.append(
            (
                "oidentd",
                "conn",
                [oidentd, "-i", "-S", "-q", "-a", HOST, "-p", "{port}", "-R", USER],
            )
        )
    variants.append(("ours --multiple", "keep", our_argv(0, multiple=True, uvloop=False)))
    if args.uvloop:
        probe = subprocess.run([sys.executable, "-c", "import uvloop"], capture_output=True)
        if probe.returncode == 0:
            variants.append(("ours+uvloop", "conn", our_argv(0, multiple=False, uvloop=True)))
            variants.append(
                ("ours+uvloop --multiple", "keep", our_argv(0, multiple=True, uvloop=True))
            )
        else:
            print("bench_server: uvloop is not importable; --uvloop ignored", file=sys.stderr)

    servers: dict[str, Server] = {}
    results: dict[str, Result] = {name: Result() for name, _, _ in variants}
    tests = {name: test for name, test, _ in variants}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aioidentd-bench-") as tmp:
        exe = compile_loadgen(Path(tmp))
        try:
            for name, _, cmd in variants:
                p = port if name == "ours" else free_port()
                cmd = [str(p) if a == "{port}" else a for a in cmd]
                if name != "oidentd":
                    cmd[cmd.index("--port") + 1] = str(p)
                servers[name] = Server(name, cmd, p, env)
            for server in servers.values():
                server.wait_ready()
            print(
                f"{len(servers)} servers up; {rounds} round(s) of {seconds:g} s per test, "
                f"{args.concurrency} in flight, loadgen {exe.name} (C, epoll, 1 thread)"
            )
            for rnd in range(rounds):
                for name, server in servers.items():
                    run = measure(exe, server, tests[name], args.concurrency, seconds, warmup)
                    results[name].runs.append(run)
                    print(
                        f"  round {rnd + 1} {name:24} {tests[name]}: "
                        f"{run.ok / run.elapsed:9,.0f}/s  p50 {run.p50_us:7.0f} us  "
                        f"p99 {run.p99_us:7.0f} us  server {run.server_cpu:5.2f} s CPU  "
                        f"loadgen {run.loadgen_cpu:5.2f} s CPU  errors {run.errors}"
                    )
        finally:
            for server in servers.values():
                server.stop()
    print(f"(whole run {time.monotonic() - started:.0f} s)\n")
    report(results, tests, args.concurrency)
    return 1 if any(r.errors for r in results.values()) else 0


def report(results: dict[str, Result], tests: dict[str, str], concurrency: int) -> None:
    ours = results.get("ours")
    keep = results.get("ours --multiple")
    base = results.get("oidentd")
    extra = [n for n in results if n not in ("ours", "oidentd", "ours --multiple")]

    def cell(result: Result | None, value: float, fmt: str) -> str:
        return format(value, fmt) if result is not None and result.runs else "-"

    header = f"{'':44}{'ours':>14}{'oidentd':>14}{'ours/oidentd':>14}"
    header += "".join(f"{n:>24}" for n in extra)
    print(header)
    print("-" * len(header))

    def row(label: str, attr: str, fmt: str, keep_row: bool = False) -> None:
        mine = keep if keep_row else ours
        line = f"{label:44}"
        mv = getattr(mine, attr) if mine and mine.runs else 0.0
        line += f"{cell(mine, mv, fmt):>14}"
        if keep_row:
            line += f"{'N/A':>14}{'N/A':>14}"
        else:
            bv = getattr(base, attr) if base and base.runs else 0.0
            line += f"{cell(base, bv, fmt):>14}"
            line += f"{_ratio(mv, bv) if base and base.runs and mine else 'n/a':>14}"
        for name in extra:
            result = results[name]
            if (tests[name] == "keep") == keep_row:
                line += f"{cell(result, getattr(result, attr), fmt):>24}"
            else:
                line += f"{'':>24}"
        print(line)

    print("(1) one query per new connection")
    row("  connections/s", "qps", ",.0f")
    row("  p50 latency, connect -> answer (us)", "p50_us", ",.0f")
    row("  p99 latency, connect -> answer (us)", "p99_us", ",.0f")
    row("  server CPU per query (us)", "server_us_per_query", ",.1f")
    row("  load generator CPU per query (us)", "loadgen_us_per_query", ",.1f")
    row("  answers checked", "ok", ",d")
    row("  errors", "errors", ",d")
    print(f"(2) kept-open connections ({concurrency}, one query in flight each)")
    row("  queries/s", "qps", ",.0f", keep_row=True)
    row("  p50 latency, send -> answer (us)", "p50_us", ",.0f", keep_row=True)
    row("  p99 latency, send -> answer (us)", "p99_us", ",.0f", keep_row=True)
    row("  server CPU per query (us)", "server_us_per_query", ",.1f", keep_row=True)
    row("  load generator CPU per query (us)", "loadgen_us_per_query", ",.1f", keep_row=True)
    row("  answers checked", "ok", ",d", keep_row=True)
    row("  errors", "errors", ",d", keep_row=True)
    print()
    if base and base.runs:
        print(
            "(2) N/A: oidentd answers one query per connection (a second query gets an RST);"
            f" its only figure is (1): {base.qps:,.0f} queries/s, one per connection."
        )
    print("ours/oidentd: above 1 means ours is higher (better for /s, worse for latency and CPU).")
    print(
        "Server CPU = utime+stime of the server's process group per answered query: the "
        "parent's own time + cutime/cstime of the children it reaped (oidentd forks one per "
        "connection) + live group members; ours is one process."
    )
    print(
        "The load generator is not the bottleneck when its CPU per query is well below the "
        "server's (it is one thread; the machine has "
        f"{os.cpu_count()} CPUs)."
    )
    for name, result in results.items():
        if result.errors:
            print(f"ERRORS {name}: {result.errors:,} ({result.error_text})")


if __name__ == "__main__":
    sys.exit(main())
