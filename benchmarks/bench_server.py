#!/usr/bin/env python3
"""Benchmark ``aioidentd serve`` against every peer, in one run, and print ratios (issue 11).

    python benchmarks/bench_server.py                 # 2 interleaved rounds of 3 s a case
    python benchmarks/bench_server.py --quick         # 1 round of 0.8 s a case, ~45 s
    python benchmarks/bench_server.py --cases 1,4     # only those cases
    python benchmarks/bench_server.py --idle 100000   # case 5 with 100,000 idle connections

The servers (the columns), all on 127.0.0.1, each on its own free port and in its own
process group, all answering ``USERID:UNIX:alice`` to every query without a lookup:

* ``ours``: ``python -m aioidentd serve --default alice`` from this checkout's ``src``, on
  the default asyncio loop; one instance without ``--multiple`` (cases 1, 2) and one with
  it (3, 4).
* ``ours+uvloop``: the same with ``--uvloop`` (skipped, and said, when uvloop is missing).
* ``Twisted``: ``twisted.protocols.ident.IdentServer`` on the epoll reactor, with a
  bytes/str shim and a fixed lookup (benchmarks/twisted_identd.py; the ``bench`` extra).
  Its listen backlog is set to ours (1024). It keeps every connection open.
* ``oidentd``: Debian's, ``oidentd -i -S -q -a 127.0.0.1 -p P -R alice`` (static reply, a
  forked child per connection, one query per connection: no kept-open figures).
* ``C limit``: benchmarks/limitd.c, a minimal epoll server answering the ports it is sent
  with the fixed user: what the machine allows. Like ours, one instance closes after the
  answer (cases 1, 2), one keeps connections open (3, 4); both use TCP_DEFER_ACCEPT and
  read at once after accept(), as ours does.

The load: benchmarks/loadgen.c, a C closed-loop client on epoll in one thread, compiled
with ``cc -O2`` into a temporary directory at start (with limitd.c). Every answer is
checked (ports and user; spaces around tokens allowed); anything else is an error, shown,
and the exit status is 1.

The cases (issue 11's table):

1. a fresh connection per query, 50 in flight: connections/s and server CPU per query.
   The client closes with RST after the answer, so no end keeps TIME_WAIT.
   1.m: the same against the servers that keep connections open (ours ``--multiple``,
   which is the embedded ``IdentServer(multiple=True)`` with no handler, and the C
   limit's "many"; Twisted always keeps them open): issue 18's case.
2. one query at a time, a fresh connection each: latency from connect() to the answer's
   end of line, p50 and p99.
3. kept-open connections, 20 of them, 1 query in flight on each: queries/s.
4. kept-open, 20 connections, 8 queries in flight on each (pipelined): queries/s and CPU.
5. server memory per idle connection: PSS (``/proc/PID/smaps_rollup``, summed over the
   server's process group) before and after ``--idle`` connections (2,000) are opened
   and held, divided by their number. Measured twice on the same connections: silent
   (connected, nothing sent: what a slowloris client costs) and after one query each was
   answered (kept open: what an IRC server's held ident connection costs; ours with
   ``--multiple``). Each server is a fresh process for this case. ``--idle 100000`` raises
   RLIMIT_NOFILE (root may raise the hard limit too) and says what a user must set;
   oidentd, a process per connection, is held at 2,000 at most.
6. (not in the issue's table; its goal on large segments) one kept-open connection
   sending segments of 16, 256 and 4,096 queries in one send() each, the next once all
   are answered: lines/s and server CPU per line, and how that CPU grows with the
   segment (it should not). oidentd has no kept-open mode.

Cases 1-4 alternate between the servers for ``--rounds`` rounds (a short warm-up before
each measured phase); throughput and CPU are totals over the rounds, latency the mean of
the rounds' percentiles. Server CPU is utime+stime from /proc over the server's whole
process group (oidentd's reaped children included), clock-tick resolution over seconds.
The load generator's own CPU is printed as a share of one core: near 100 % it, not the
server, is the limit of that figure. The machine is small and shared: compare within a
run, and look at the rounds' spread before trusting a difference of a few percent.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOADGEN_SRC = HERE / "loadgen.c"
LIMITD_SRC = HERE / "limitd.c"
TWISTED_SERVER = HERE / "twisted_identd.py"
USER = "alice"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Not in the socket module before Python 3.12 (linux/in.h): the port of a bound socket is
#: chosen at connect(), per destination, so one source address serves 28,000 connections.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


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
    def elapsed(self) -> float:
        return sum(r.elapsed for r in self.runs)

    @property
    def qps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def p50_us(self) -> float:
        return sum(r.p50_us for r in self.runs) / len(self.runs)

    @property
    def p99_us(self) -> float:
        return sum(r.p99_us for r in self.runs) / len(self.runs)

    def _cpu(self, whose: str, per: str) -> float:
        """CPU seconds of "server" or "loadgen", per answer ("query", in µs) or per
        second of wall time ("core", in % of one core)."""
        total = sum(getattr(r, f"{whose}_cpu") for r in self.runs)
        scale, by = (1e6, self.ok) if per == "query" else (100.0, self.elapsed)
        return float(total * scale / by) if by else 0.0

    @property
    def server_us_per_query(self) -> float:
        return self._cpu("server", "query")

    @property
    def loadgen_us_per_query(self) -> float:
        return self._cpu("loadgen", "query")

    @property
    def server_core_pct(self) -> float:
        """The server's CPU as a share of one core while loaded."""
        return self._cpu("server", "core")

    @property
    def loadgen_core_pct(self) -> float:
        """The load generator's (one thread) CPU as a share of one core."""
        return self._cpu("loadgen", "core")

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


def pss(pid: int) -> tuple[int, int]:
    """(Pss, Pss_Anon) of one process in octets: shared pages counted by their share. The
    anonymous part leaves out shared libraries and executables, whose share moves when any
    other process mapping them (another test's Python, say) starts or exits."""
    total = anon = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            total = int(line.split()[1]) * 1024
        elif line.startswith("Pss_Anon:"):
            anon = int(line.split()[1]) * 1024
    return total, anon


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

    def members(self) -> list[int]:
        """The live processes of the server's group, the leader first."""
        pid = self.proc.pid
        pids = [pid]
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == pid:
                continue
            try:
                pgid, _, _ = _ticks(int(entry))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile, or not readable
            if pgid == pid:
                pids.append(int(entry))
        return pids

    def cpu_seconds(self) -> float:
        """CPU time of the whole process group so far: the leader's own and reaped
        children's, plus every live member's own."""
        leader, *others = self.members()
        _, own, reaped = _ticks(leader)
        total = own + reaped
        for pid in others:
            try:
                total += _ticks(pid)[1]
            except (OSError, ValueError, IndexError):
                continue
        return total / CLK_TCK

    def pss(self) -> tuple[int, int]:
        """(Pss, Pss_Anon) summed over the process group, in octets."""
        total = anon = 0
        for pid in self.members():
            try:
                one, one_anon = pss(pid)
            except OSError:
                continue
            total += one
            anon += one_anon
        return total, anon

    def sockets(self) -> set[str]:
        """The sockets the group holds open (a forked child's inherited ones once)."""
        found: set[str] = set()
        for pid in self.members():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:"):
                    found.add(target)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def compile_c(source: Path, workdir: Path) -> Path:
    """``cc -O2`` one of the benchmarks' C programs into workdir."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit(f"bench: no C compiler (cc) found; it builds benchmarks/{source.name}")
    exe = workdir / source.stem
    subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(source)], check=True)
    return exe


def compile_loadgen(workdir: Path) -> Path:
    return compile_c(LOADGEN_SRC, workdir)


def run_loadgen(
    exe: Path,
    server: Server,
    mode: str,
    concurrency: int,
    seconds: float,
    last: str = USER,
    depth: int = 1,
) -> tuple[dict[str, str], float]:
    """One loadgen run; ``last`` is its final argument (the user id to expect, or for the
    ``list`` mode the file of queries and answers), ``depth`` the queries in flight on
    each kept-open connection."""
    before = server.cpu_seconds()
    argv = [str(exe), HOST, str(server.port), mode, str(concurrency), str(seconds), last]
    if depth != 1:
        argv.append(str(depth))
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    if len(server.members()) > 1:
        time.sleep(0.2)  # let oidentd reap its last children, so cutime counts them
    cpu = server.cpu_seconds() - before
    values = dict(item.split("=", 1) for item in out.split())
    return values, cpu


def measure(
    exe: Path,
    server: Server,
    mode: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    depth: int = 1,
) -> Run:
    run_loadgen(exe, server, mode, concurrency, warmup, depth=depth)
    values, cpu = run_loadgen(exe, server, mode, concurrency, seconds, depth=depth)
    return Run.from_loadgen(values, cpu)


def raise_fd_limit(needed: int) -> str:
    """Raise RLIMIT_NOFILE (inherited by the servers started after) to ``needed``; root
    may raise the hard limit too. Returns what was done; exits saying what a user must
    set when it cannot be done."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return f"RLIMIT_NOFILE {soft} already enough"
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= needed else needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, new_hard))
    except (ValueError, OSError) as e:
        sys.exit(
            f"bench: {needed:,} file descriptors needed, RLIMIT_NOFILE is {soft}/{hard} "
            f"(soft/hard) and cannot be raised ({e}): run `ulimit -n {needed}` as root first "
            f"(or LimitNOFILE={needed} in a systemd unit, nofile in limits.conf); above "
            f"fs.nr_open, raise that sysctl too. With this limit, --idle {FD_MARGIN} less at most"
        )
    return f"RLIMIT_NOFILE raised from {soft}/{hard} to {needed}/{new_hard} (soft/hard)"


# -- the servers -----------------------------------------------------------------------------

OURS = ("ours", "ours+uvloop")
PEERS = ("Twisted", "oidentd", "C limit")
#: Servers run as two instances: one answer per connection (cases 1, 2) or many (3-5).
ONE_OR_MANY = (*OURS, "C limit")
COLUMNS = OURS + PEERS
#: File descriptors beside the idle connections: the harness's and a server's own, probes.
FD_MARGIN = 256
#: oidentd forks a process per connection: more would exhaust pid_max (32,768 by default).
OIDENTD_MAX_IDLE = 2000


def our_argv(port: int, *, multiple: bool, uvloop: bool, held: int = 0) -> list[str]:
    """``aioidentd serve`` with a static answer; ``held`` > 0: room and patience for that
    many idle connections (case 5), which the defaults (1,024 connections, a connection
    silent for 10 s closed) would not give."""
    argv = [sys.executable, "-m", "aioidentd", "serve", "--host", HOST, "--port", str(port)]
    argv += ["--default", USER]
    if multiple:
        argv.append("--multiple")
    if uvloop:
        argv.append("--uvloop")
    if held:
        argv += ["--max-connections", str(held + 64)]
        argv += ["--idle-timeout", "3600", "--first-query-timeout", "3600"]
    return argv


@dataclass
class Lineup:
    """The servers this run can start, and how."""

    oidentd: str | None
    limitd: Path
    missing: dict[str, str] = field(default_factory=dict)  # column -> why it is not run

    @property
    def columns(self) -> list[str]:
        return [c for c in COLUMNS if c not in self.missing]

    def kept_open(self, column: str) -> bool:
        """Whether the server answers more than one query per connection."""
        return column != "oidentd"

    def argv(self, column: str, port: int, *, multiple: bool, held: int = 0) -> list[str]:
        if column in OURS:
            return our_argv(port, multiple=multiple, uvloop=column == "ours+uvloop", held=held)
        if column == "Twisted":
            return [sys.executable, str(TWISTED_SERVER), HOST, str(port), USER, "1024"]
        if column == "oidentd":
            assert self.oidentd is not None
            argv = [self.oidentd, "-i", "-S", "-q", "-a", HOST, "-p", str(port), "-R", USER]
            return argv + (["-t", "3600"] if held else [])
        return [str(self.limitd), HOST, str(port), USER, "many" if multiple else "one"]

    def start(self, column: str, env: dict[str, str], *, multiple: bool, held: int = 0) -> Server:
        port = free_port()
        name = f"{column} --multiple" if column in ONE_OR_MANY and multiple else column
        return Server(name, self.argv(column, port, multiple=multiple, held=held), port, env)


def find_lineup(oidentd_path: str, limitd: Path) -> Lineup:
    oidentd = shutil.which(oidentd_path)
    lineup = Lineup(oidentd=oidentd, limitd=limitd)
    if importlib.util.find_spec("uvloop") is None:
        lineup.missing["ours+uvloop"] = "uvloop is not installed (pip install -e '.[uvloop]')"
    if importlib.util.find_spec("twisted") is None:
        lineup.missing["Twisted"] = "Twisted is not installed (pip install -e '.[bench]')"
    if oidentd is None:
        lineup.missing["oidentd"] = f"{oidentd_path} not found (scripts/install-system-deps.sh)"
    return lineup


# -- cases 1-4: load ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    label: str
    attr: str
    fmt: str
    higher_is_better: bool


QPS = Figure("queries/s", "qps", ",.0f", True)
CPS = Figure("connections/s", "qps", ",.0f", True)
CPU = Figure("server CPU per query (µs)", "server_us_per_query", ",.1f", False)
P50 = Figure("p50 latency (µs)", "p50_us", ",.0f", False)
P99 = Figure("p99 latency (µs)", "p99_us", ",.0f", False)
#: Shown for every case, without ratios: who is the limit, and whether every answer was right.
CONTEXT = (
    Figure("server CPU (% of one core)", "server_core_pct", ".0f", False),
    Figure("load generator CPU (% of one core)", "loadgen_core_pct", ".0f", False),
    Figure("load generator CPU per query (µs)", "loadgen_us_per_query", ",.1f", False),
    Figure("answers checked", "ok", ",d", True),
    Figure("errors", "errors", ",d", False),
)


@dataclass(frozen=True)
class Case:
    name: str  # the case's number, and the segment size for case 6
    title: str
    mode: str  # loadgen's: "conn" (a fresh connection per query), "keep" or "segment"
    connections: int
    depth: int  # queries in flight per connection (the segment's lines in case 6)
    figures: tuple[Figure, ...]  # the case's own, with ratios
    #: Served by the --multiple instances (ours, the C limit's "many"); None: when kept open.
    multiple: bool | None = None

    @property
    def many(self) -> bool:
        return self.kept_open if self.multiple is None else self.multiple

    @property
    def number(self) -> int:
        return int(self.name.split(".")[0])

    @property
    def kept_open(self) -> bool:
        return self.mode != "conn"


LPS = Figure("lines/s", "qps", ",.0f", True)
LINE_CPU = Figure("server CPU per line (µs)", "server_us_per_query", ",.2f", False)
#: Case 6's segment sizes, in lines (of "S, C" + CR LF: 8 to 14 octets each).
SEGMENTS = (16, 256, 4096)
CASES = (
    Case("1", "fresh connection per query, 50 in flight", "conn", 50, 1, (CPS, CPU, P50)),
    Case(
        "1.m",
        "fresh connection per query, 50 in flight, --multiple",
        "conn",
        50,
        1,
        (CPS, CPU, P50),
        multiple=True,
    ),
    Case("2", "one query at a time, fresh connection each", "conn", 1, 1, (P50, P99, CPU)),
    Case("3", "kept-open connections, 1 in flight x 20", "keep", 20, 1, (QPS, P50, CPU)),
    Case("4", "kept-open connections, 8 in flight x 20", "keep", 20, 8, (QPS, CPU, P50)),
    *(
        Case(f"6.{n}", f"one connection, segments of {n:,} lines", "segment", 1, n, (LPS, LINE_CPU))
        for n in SEGMENTS
    ),
)
MEMORY_CASE = 5


def run_load(
    lineup: Lineup,
    cases: list[Case],
    env: dict[str, str],
    loadgen: Path,
    rounds: int,
    seconds: float,
    warmup: float,
) -> dict[tuple[str, str], Result]:
    """Cases 1-4, the servers alternating within each case and round."""
    servers: dict[tuple[str, bool], Server] = {}

    def server_for(case: Case, column: str) -> Server | None:
        if case.kept_open and not lineup.kept_open(column):
            return None
        return servers[(column, case.many and column in ONE_OR_MANY)]

    results: dict[tuple[str, str], Result] = {}
    try:
        for column in lineup.columns:
            served = [c for c in cases if lineup.kept_open(column) or not c.kept_open]
            for multiple in sorted({c.many and column in ONE_OR_MANY for c in served}):
                servers[(column, multiple)] = lineup.start(column, env, multiple=multiple)
        for started in servers.values():
            started.wait_ready()
        print(
            f"{len(servers)} servers up; {rounds} round(s) of {seconds:g} s per case and server "
            f"(+{warmup:g} s warm-up); load generator: C, epoll, 1 thread"
        )
        for rnd in range(rounds):
            for case in cases:
                for column in lineup.columns:
                    server = server_for(case, column)
                    if server is None:
                        continue
                    run = measure(
                        loadgen,
                        server,
                        case.mode,
                        case.connections,
                        seconds,
                        warmup,
                        depth=case.depth,
                    )
                    results.setdefault((case.name, column), Result()).runs.append(run)
                    print(
                        f"  round {rnd + 1} case {case.name:6} {column:12}"
                        f"{run.ok / run.elapsed:9,.0f}/s  p50 {run.p50_us:6.0f} µs  "
                        f"p99 {run.p99_us:6.0f} µs  "
                        f"server {run.server_cpu * 1e6 / max(run.ok, 1):6.1f} µs/q  "
                        f"loadgen {run.loadgen_cpu * 100 / run.elapsed:3.0f} % CPU"
                        f"  errors {run.errors}",
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()
    return results


# -- case 5: memory per idle connection --------------------------------------------------------


@dataclass
class IdleRun:
    held: int
    accepted: int  # of the silent ones, as sockets in the server's process group
    silent: tuple[int, int]  # growth of (Pss, Pss_Anon), octets
    answered: tuple[int, int] | None  # the same after one query each, if kept open
    errors: int


def _probe(port: int) -> None:
    """One query on a fresh connection, answered: the server has caught up with what
    arrived before it (its accept queue is first in, first out)."""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(b"1, 1\r\n")
        sock.recv(256)


def _connect(port: int, n: int) -> socket.socket:
    """The n-th idle connection; 20,000 per source address of 127/8, so that 100,000
    do not run out of ephemeral ports."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((f"127.0.0.{2 + n // 20000}", 0))
    sock.settimeout(30)
    sock.connect((HOST, port))
    return sock


def _ask_all(socks: list[socket.socket], batch: int = 1000) -> int:
    """One query on each held connection, its answer read and checked; the errors."""
    errors = 0
    want = f"1,1:USERID:UNIX:{USER}\r\n".encode()
    for start in range(0, len(socks), batch):
        part = socks[start : start + batch]
        for sock in part:
            sock.sendall(b"1, 1\r\n")
        for sock in part:
            got = b""
            try:
                while not got.endswith(b"\n") and len(got) < 256:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    got += chunk
            except OSError:
                pass
            if got.replace(b" ", b"").replace(b"\t", b"") != want:
                errors += 1
    return errors


def hold_idle(server: Server, count: int, ask: bool) -> IdleRun:
    """Open ``count`` connections to the server and hold them; its memory growth while
    they are silent and, with ``ask``, once each has had one query answered."""
    _probe(server.port)  # the first connection's one-off costs are not per connection
    base_pss = server.pss()
    base_socks = server.sockets()
    socks: list[socket.socket] = []
    try:
        for n in range(count):
            socks.append(_connect(server.port, n))
            if n % 256 == 255:
                _probe(server.port)  # keep the accept queue from overflowing (SYN retries)
        _probe(server.port)
        # Accepted sockets show in /proc at once; wait while the count still grows (ours
        # defers accept() for a silent connection by about a second: TCP_DEFER_ACCEPT).
        accepted, last_change = 0, time.monotonic()
        while accepted < count and time.monotonic() - last_change < 3.0:
            now = len(server.sockets() - base_socks)
            if now > accepted:
                accepted, last_change = now, time.monotonic()
            else:
                time.sleep(0.05)
        silent_pss = server.pss()
        silent = (silent_pss[0] - base_pss[0], silent_pss[1] - base_pss[1])
        answered, errors = None, 0
        if ask:
            errors = _ask_all(socks)
            _probe(server.port)
            after = server.pss()
            answered = (after[0] - base_pss[0], after[1] - base_pss[1])
        return IdleRun(count, min(accepted, count), silent, answered, errors)
    finally:
        for sock in socks:
            # RST, not FIN: 100,000 TIME_WAITs would outlive the run
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()


def run_memory(
    lineup: Lineup, env: dict[str, str], rounds: int, idle: int
) -> dict[str, list[IdleRun]]:
    """Case 5: a fresh server per column and round, the columns alternating."""
    results: dict[str, list[IdleRun]] = {}
    for rnd in range(rounds):
        for column in lineup.columns:
            held = min(idle, OIDENTD_MAX_IDLE) if column == "oidentd" else idle
            server = lineup.start(column, env, multiple=True, held=held)
            try:
                server.wait_ready()
                run = hold_idle(server, held, ask=lineup.kept_open(column))
            finally:
                server.stop()
            results.setdefault(column, []).append(run)
            answered = (
                f"{run.answered[0] / held / 1024:6.2f} KiB" if run.answered else "   unsupported"
            )
            print(
                f"  round {rnd + 1} case 5 {column:12} {held:,} held: silent "
                f"{run.silent[0] / held / 1024:6.2f} KiB each ({run.accepted:,} accepted), "
                f"after one query {answered}, errors {run.errors}",
                flush=True,
            )
    return results


# -- the report --------------------------------------------------------------------------------

LABEL = 44
CELL = 13


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "n/a"


def _line(label: str, cells: list[str]) -> str:
    return f"{label:{LABEL}}" + "".join(f"{c:>{CELL}}" for c in cells)


def report_load(cases: list[Case], lineup: Lineup, results: dict[tuple[str, str], Result]) -> None:
    columns = lineup.columns
    ours = [c for c in OURS if c in columns]
    peers = [c for c in PEERS if c in columns]
    for case in cases:
        print(_line(f"({case.number}) {case.title}", columns))
        for fig in (*case.figures, *CONTEXT):
            cells = []
            for column in columns:
                result = results.get((case.name, column))
                cells.append(
                    format(getattr(result, fig.attr), fig.fmt)
                    if result and result.runs
                    else "unsupported"
                )
            print(_line(f"  {fig.label}", cells))
        print(_line("  ratio ours / peer", peers))
        for fig in case.figures:
            better = "higher" if fig.higher_is_better else "lower"
            print(f"    {fig.label.split(' (')[0]} ({better} is better)")
            for mine in ours:
                mr = results.get((case.name, mine))
                cells = []
                for peer in peers:
                    pr = results.get((case.name, peer))
                    if mr and mr.runs and pr and pr.runs:
                        cells.append(_ratio(getattr(mr, fig.attr), getattr(pr, fig.attr)))
                    else:
                        cells.append("-")
                print(_line(f"      {mine}", cells))
        print()
    for fig, meaning in ((LINE_CPU, "at most 1: a line costs no more"), (LPS, "at least 1")):
        growth = segment_growth(results, columns, fig.attr)
        if not growth:
            continue
        what = fig.label.split(" (")[0]
        print(_line(f"(6) {what}, / that of {SEGMENTS[0]}-line segments", columns))
        for i, n in enumerate(SEGMENTS[1:]):
            cells = [f"{growth[c][i]:.2f}" if c in growth else "unsupported" for c in columns]
            print(_line(f"  segments of {n:,} lines", cells))
        print(f"  ({meaning} in a larger segment)\n")


def segment_growth(
    results: dict[tuple[str, str], Result], columns: list[str], attr: str
) -> dict[str, list[float]]:
    """Per server, a figure of case 6 in each larger segment size, divided by that in
    the smallest."""
    growth: dict[str, list[float]] = {}
    for column in columns:
        figures = [results.get((f"6.{n}", column)) for n in SEGMENTS]
        values = [float(getattr(r, attr)) for r in figures if r and r.runs]
        if len(values) == len(SEGMENTS) and values[0]:
            growth[column] = [v / values[0] for v in values[1:]]
    return growth


def _kib(value: int, held: int) -> float:
    return value / held / 1024


def report_memory(lineup: Lineup, results: dict[str, list[IdleRun]]) -> None:
    columns = lineup.columns
    ours = [c for c in OURS if c in columns]
    peers = [c for c in PEERS if c in columns]

    def mean(column: str, pick: Callable[[IdleRun], int | None]) -> float | None:
        runs = results.get(column, [])
        values = [pick(r) for r in runs]
        if not runs or any(v is None for v in values):
            return None
        return sum(
            _kib(v, r.held) for v, r in zip(values, runs, strict=True) if v is not None
        ) / len(runs)

    rows: list[tuple[str, Callable[[IdleRun], int | None]]] = [
        ("silent: PSS per connection (KiB)", lambda r: r.silent[0]),
        ("  of which anonymous (Pss_Anon, KiB)", lambda r: r.silent[1]),
        ("after one query: PSS per connection (KiB)", lambda r: r.answered and r.answered[0]),
        ("  of which anonymous (Pss_Anon, KiB)", lambda r: r.answered and r.answered[1]),
    ]
    print(_line(f"({MEMORY_CASE}) server memory per idle connection", columns))
    print(_line("  connections held", [f"{results[c][0].held:,}" for c in columns]))
    print(
        _line(
            "  silent ones accepted by the server", [f"{results[c][0].accepted:,}" for c in columns]
        )
    )
    figures: dict[tuple[int, str], float | None] = {}
    for i, (label, pick) in enumerate(rows):
        cells = []
        for column in columns:
            value = mean(column, pick)
            figures[(i, column)] = value
            cells.append("unsupported" if value is None else f"{value:.2f}")
        print(_line(f"  {label}", cells))
    print(_line("  errors", [f"{sum(r.errors for r in results[c]):,}" for c in columns]))
    print(_line("  ratio ours / peer", peers))
    for i, label in ((0, "silent"), (2, "after one query")):
        print(f"    PSS per connection, {label} (lower is better)")
        for mine in ours:
            cells = []
            for peer in peers:
                m, p = figures[(i, mine)], figures[(i, peer)]
                if m is None or p is None:
                    cells.append("-")
                elif p < 0.05:
                    cells.append("n/a (~0)")
                else:
                    cells.append(f"{m / p:.2f}")
            print(_line(f"      {mine}", cells))
    print()


def report_goals(
    load: dict[tuple[str, str], Result], memory: dict[str, list[IdleRun]], idle: int
) -> None:
    """Issues 11's and 18's goals, against this run's figures."""

    def get(case: str, column: str) -> Result | None:
        result = load.get((case, column))
        return result if result and result.runs else None

    lines: list[tuple[str, str, bool]] = []
    ours1, tw1, uv1 = get("1", "ours"), get("1", "Twisted"), get("1", "ours+uvloop")
    if ours1 and tw1:
        r = ours1.qps / tw1.qps
        lines.append(("(1) connections/s >= 1.3 x Twisted's", f"{r:.2f} x", r >= 1.3))
    if ours1:
        v = ours1.server_us_per_query
        lines.append(("(1) server CPU <= 45 µs per query", f"{v:.1f} µs", v <= 45))
    if ours1 and uv1:
        ok = uv1.qps > ours1.qps and uv1.server_us_per_query < ours1.server_us_per_query
        lines.append(
            (
                "(1) better with uvloop (conn/s and CPU)",
                f"{uv1.qps / ours1.qps:.2f} x, {uv1.server_us_per_query:.1f} µs",
                ok,
            )
        )
    # Issue 18's: --multiple as fast as single mode, both near the C limit.
    oursm, twm = get("1.m", "ours"), get("1.m", "Twisted")
    if oursm and twm:
        r = oursm.qps / twm.qps
        lines.append(("(1.m) connections/s >= 1.5 x Twisted's", f"{r:.2f} x", r >= 1.5))
        r = oursm.server_us_per_query / twm.server_us_per_query
        lines.append(("(1.m) server CPU per query <= 0.6 x Twisted's", f"{r:.2f} x", r <= 0.6))
    for case in ("1", "1.m"):
        mine, limit = get(case, "ours"), get(case, "C limit")
        if mine and limit:
            r = mine.server_us_per_query / limit.server_us_per_query
            lines.append(
                (f"({case}) server CPU per query <= 1.25 x the C limit's", f"{r:.2f} x", r <= 1.25)
            )
    for case in ("1", "1.m", "2", "3", "4"):
        mine, uv = get(case, "ours"), get(case, "ours+uvloop")
        if mine and uv:
            r = uv.qps / mine.qps
            lines.append(
                (f"({case}) uvloop at least as fast as the default loop", f"{r:.2f} x", r >= 1.0)
            )
    ours2 = get("2", "ours")
    if ours2:
        lines.append(
            ("(2) p50 latency <= 0.10 ms", f"{ours2.p50_us / 1000:.3f} ms", ours2.p50_us <= 100)
        )
        limit2 = get("2", "C limit")
        if limit2:
            r = ours2.p50_us / limit2.p50_us
            lines.append(("(2) p50 latency <= 1.2 x the C limit's", f"{r:.2f} x", r <= 1.2))
    ours4, tw4 = get("4", "ours"), get("4", "Twisted")
    if ours4 and tw4:
        r = ours4.qps / tw4.qps
        lines.append(("(4) queries/s >= 2 x Twisted's", f"{r:.2f} x", r >= 2))
    if ours4:
        v = ours4.server_us_per_query
        lines.append(("(4) server CPU <= 4 µs per query", f"{v:.1f} µs", v <= 4))
    for column, ratios in segment_growth(load, list(OURS), LINE_CPU.attr).items():
        lines.append(
            (
                f"(6) no more CPU per line in larger segments, {column}",
                " ".join(f"{r:.2f}" for r in ratios) + " x",
                all(r <= 1.1 for r in ratios),
            )
        )
    # Not one of the goals: a stall (time, not CPU) in larger segments shows here.
    for column, ratios in segment_growth(load, list(OURS), LPS.attr).items():
        lines.append(
            (
                f"(6) lines/s no lower in larger segments, {column}",
                " ".join(f"{r:.2f}" for r in ratios) + " x",
                all(r >= 0.9 for r in ratios),
            )
        )
    for column in OURS:
        runs = memory.get(column)
        if runs:
            worst = max(max(r.silent[0], (r.answered or (0, 0))[0]) / r.held / 1024 for r in runs)
            lines.append(
                (
                    f"(5) <= 1.0 KiB per idle connection, {column}",
                    f"{worst:.2f} KiB",
                    worst <= 1.0,
                )
            )
            lines.append(
                (
                    f"(5) 100,000 held at once, {column}",
                    f"{runs[0].held:,} held" + ("" if idle >= 100_000 else " (run --idle 100000)"),
                    idle >= 100_000 and all(r.accepted == r.held and not r.errors for r in runs),
                )
            )
    if not lines:
        return
    print("Goals of issues 11 and 18 (ours on the default loop unless said), in this run:")
    for label, value, met in lines:
        print(f"  {label:58}{value:>22}   {'met' if met else 'NOT met'}")
    print()


def explain(seconds: float, rounds: int, idle: int) -> None:
    print(
        f"""What the figures are ({rounds} round(s); {seconds:g} s per measured phase):
  /s: answers checked / wall time of the measured phases, summed over the rounds.
  server CPU per query: utime+stime of the server's process group (the parent, the
    children it reaped, live members) / answers; clock-tick resolution. % of one core:
    the same / wall time (a single-threaded server cannot pass 100).
  latency: case 1-2 from connect() to the answer's end of line; 3-4 and 6 from the
    query's send() to its answer; mean of the rounds' percentiles.
  load generator CPU: the C load generator's own (one thread); near 100 % it, not the
    server, bounds that figure.
  ratio ours / peer: above 1 means ours is higher: better for /s, worse for CPU,
    latency and memory.
  goals: issue 11's, judged on this run's totals; case 6's "no more CPU per line" allows
    10 % for noise (each larger segment's CPU per line at most 1.1 x the smallest's);
    "lines/s no lower" (at least 0.9 x) is not the issue's, but shows a stall.
  memory: (PSS after - before) / connections held, summed over the process group, each
    server a fresh process; silent: connected, nothing sent; after one query: each
    connection sent one query, got its answer and stays open (ours with --multiple;
    oidentd closes after one answer). {idle:,} held (oidentd at most {OIDENTD_MAX_IDLE:,})."""
    )


def server_env() -> dict[str, str]:
    """The servers' environment: this checkout's ``src`` first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 0.8 s a case (~45 s)")
    parser.add_argument("--seconds", type=float, help="length of each measured phase (3)")
    parser.add_argument("--rounds", type=int, help="rounds, the servers alternating (2)")
    parser.add_argument("--cases", default="1,2,3,4,5,6", help="which cases, e.g. 1,4 (all)")
    parser.add_argument(
        "--idle",
        type=int,
        default=2000,
        help="case 5: idle connections to hold (2000); the file limit is raised as needed",
    )
    parser.add_argument("--oidentd", default="/usr/sbin/oidentd", help="oidentd binary")
    args = parser.parse_args(argv)
    try:
        wanted = {int(c) for c in args.cases.split(",")}
    except ValueError:
        parser.error("--cases: numbers 1 to 6, separated by commas")
    if not wanted or not wanted <= {1, 2, 3, 4, 5, 6}:
        parser.error("--cases: numbers 1 to 6, separated by commas")
    if args.idle < 1 or args.idle > 500_000:
        parser.error("--idle: 1 to 500000")
    seconds = args.seconds or (0.8 if args.quick else 3.0)
    rounds = args.rounds or (1 if args.quick else 2)
    warmup = 0.2 if args.quick else 0.5
    cases = [c for c in CASES if c.number in wanted]

    env = server_env()
    if MEMORY_CASE in wanted:
        # the clients here and one server at a time, plus room for the rest
        print(raise_fd_limit(args.idle + FD_MARGIN))
    started = time.monotonic()
    load: dict[tuple[str, str], Result] = {}
    memory: dict[str, list[IdleRun]] = {}
    with tempfile.TemporaryDirectory(prefix="aioidentd-bench-") as tmp:
        loadgen = compile_c(LOADGEN_SRC, Path(tmp))
        lineup = find_lineup(args.oidentd, compile_c(LIMITD_SRC, Path(tmp)))
        for column, why in lineup.missing.items():
            print(f"bench: no {column} column: {why}", file=sys.stderr)
        if cases:
            load = run_load(lineup, cases, env, loadgen, rounds, seconds, warmup)
        if MEMORY_CASE in wanted:
            memory = run_memory(lineup, env, rounds, args.idle)
    print(f"(whole run {time.monotonic() - started:.0f} s)\n")
    if cases:
        report_load(cases, lineup, load)
    if memory:
        report_memory(lineup, memory)
    report_goals(load, memory, args.idle)
    explain(seconds, rounds, args.idle)
    if MEMORY_CASE in wanted and args.idle > OIDENTD_MAX_IDLE:
        print(
            f"To hold {args.idle:,} connections a server needs RLIMIT_NOFILE above that "
            f"(`ulimit -n {args.idle + FD_MARGIN}`, LimitNOFILE= in a systemd unit) and, for ours, "
            f"--max-connections (max_connections in [server]) at least {args.idle:,}."
        )
    failed = False
    for (name, column), result in load.items():
        if result.errors or not result.ok:
            failed = True
            print(
                f"ERRORS case {name} {column}: {result.errors:,}, {result.ok:,} answers "
                f"({result.error_text})"
            )
    for column, runs in memory.items():
        if any(r.errors for r in runs):
            failed = True
            print(f"ERRORS case 5 {column}: {sum(r.errors for r in runs):,} wrong or no answers")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
