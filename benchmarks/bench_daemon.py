#!/usr/bin/env python3
"""Benchmark ``aioidentd serve`` against Debian's oidentd, both with REAL connection lookups.

    python benchmarks/bench_daemon.py            # full run, about 70 seconds
    python benchmarks/bench_daemon.py --quick    # about 30 seconds

Run as root (both servers bind, then drop to nobody; the connections queried about are
made by a child that switches to uid 65534). What runs, all on 127.0.0.1:

* ours: ``python -m aioidentd serve --host 127.0.0.1 --port P`` with this checkout's
  ``src`` first on PYTHONPATH: a netlink sock_diag exact-match lookup per query, then the
  built-in policy (user names; root HIDDEN-USER).
* oidentd: ``oidentd -i -S -q -a 127.0.0.1 -p P2 -C FILE``, FILE being Debian's default
  ``/etc/oidentd.conf`` policy (user names, no spoofing, nothing hidden), so a host's own
  oidentd.conf does not change the figures. It forks a child per connection; on Linux it
  tries a sock_diag lookup, and when that finds nothing it reads the whole /proc/net/tcp,
  then asks sock_diag for the v4-mapped form and reads /proc/net/tcp6 (seen with strace).
  Generating those files walks every bucket of the kernel's established hash, so even a
  near-empty table costs milliseconds, and a big one more.
* the load: ``benchmarks/loadgen.c`` in ``list`` mode (C, one thread, epoll,
  ``--concurrency`` queries in flight, one query per new connection, closed with an RST),
  sending queries from a file and checking every answer against the file's exact line.

Two kinds of query, each measured against both servers (and hits against a third: ours
with ``[default] answer = "pseudonym"``, whose CPU per query is compared with ours
answering user names, issue 21's cost):

* hit: ``A,B`` naming a live connection 127.0.0.1:A (a socket owned by nobody, uid 65534)
  <-> 127.0.0.1:B (a listener of this script), sent from 127.0.0.1, which is that
  connection's remote end as RFC 1413 requires. A pool of ``--pool`` such connections is
  queried in turn; the answer must be ``A,B:USERID:UNIX:nobody``.
* miss: ``S,C`` with S a local port nothing uses (checked in /proc/net/tcp at start) and
  C in 1..64: no such connection, and the answer must be ``S,C:ERROR:NO-USER``.

And two host sizes: first with only the pool (and whatever else the host has), then with
``--extra`` more sockets (default 10,000: 5,000 established loopback pairs this script
keeps open; RLIMIT_NOFILE is raised to its hard limit). The TCP table size shown is the
line count of /proc/net/tcp + /proc/net/tcp6, taken between the runs.

Figures per server, query kind and host size: connections/s, p50/p99 latency (connect to
the answer's end of line), server CPU microseconds per answered query (utime+stime of the
server's process group, including oidentd's reaped children via cutime+cstime; clock-tick
resolution), the load generator's own CPU per query, answers checked, errors. Each test
alternates between the servers for ``--rounds`` rounds after a short warm-up. The exit
status is 1 when any answer was wrong or missing.
"""

from __future__ import annotations

import argparse
import encodings.idna  # noqa: F401  (connect() needs it; the nobody child cannot import it)
import os
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from aioidentd.pseudonym import Pseudonyms
from bench_lookup import open_sockets
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
NOBODY = 65534
#: The same daemon answering answer = "pseudonym" (hit queries only: a miss never gets
#: that far), for issue 21's cost: its server CPU per query against ours with user names.
PSEUDONYM = "ours-pseudonym"
PSEUDONYM_CONF = """\
[pseudonym]
key_file = "{key}"

[default]
answer = "pseudonym"
"""
#: Debian's /etc/oidentd.conf (oidentd 2.5.0) without its comments.
OIDENTD_CONF = """\
default {
\tdefault {
\t\tdeny spoof
\t\tdeny spoof_all
\t\tdeny spoof_privport
\t\tdeny random
\t\tdeny random_numeric
\t\tdeny numeric
\t\tdeny hide
\t\tdeny forward
\t}
}
"""
#: The same daemon with no lookup at all (``--default nobody``: every query gets the fixed
#: answer the hit queries expect), issue 18's baseline: the real-lookup path's server CPU
#: per query should stay within 1.4x of it, hits and misses alike.
STATIC = "ours-static"
KINDS = ("hit", "miss")


@dataclass
class Scenario:
    """One host size: its figures per (kind, server) and the TCP table sizes seen."""

    label: str
    extra: int
    table: list[int] = field(default_factory=list)
    results: dict[tuple[str, str], Result] = field(default_factory=dict)


def _ratio(ours: float, theirs: float) -> str:
    """ours/theirs, with two significant digits below 0.1 (a miss can be 1/300)."""
    if not theirs:
        return "n/a"
    value = ours / theirs
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def table_lines() -> int:
    """Sockets on the host: the entries of /proc/net/tcp and /proc/net/tcp6."""
    total = 0
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}", "rb") as f:
                total += f.read().count(b"\n") - 1
        except FileNotFoundError:
            pass
    return total


def ports_in_use() -> set[int]:
    """Local ports of every TCP socket on the host."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}", "rb") as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            ports.add(int(line.split()[1].rsplit(b":", 1)[1], 16))
    return ports


def nobody_pool(
    listener: socket.socket, count: int
) -> tuple[list[socket.socket], int, int, list[int]]:
    """``count`` connections from a child running as nobody to ``listener``.

    Returns our accepted ends, the child's pid, the write end of a pipe (the child keeps
    its sockets open until that pipe is closed) and the child's local ports. Sockets are
    owned by whoever created them, so the child switches uid first and only then creates
    them; it uses nothing that is not already imported (the interpreter may live under /root).
    """
    addr = listener.getsockname()
    ports_r, ports_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            os.close(ports_r)
            os.close(hold_w)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            socks = []
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.connect(addr)
                socks.append(sock)
            text = " ".join(str(s.getsockname()[1]) for s in socks) + "\n"
            with os.fdopen(ports_w, "w") as out:
                out.write(text)
            os.read(hold_r, 1)  # until the parent closes hold_w (or exits)
            status = 0
        except BaseException as exc:
            print(f"bench_daemon: nobody child: {exc!r}", file=sys.stderr)
        finally:
            os._exit(status)
    os.close(ports_w)
    os.close(hold_r)
    accepted = [listener.accept()[0] for _ in range(count)]
    with os.fdopen(ports_r) as inp:
        ports = [int(p) for p in inp.read().split()]
    if len(ports) != count:
        raise RuntimeError("the nobody child did not make its connections")
    return accepted, pid, hold_w, ports


def query(port: int, text: str) -> str:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(text.encode() + b"\r\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(512)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


def run_list(exe: Path, server: Server, listfile: Path, concurrency: int, seconds: float) -> Run:
    values, cpu = run_loadgen(exe, server, "list", concurrency, seconds, str(listfile))
    return Run.from_loadgen(values, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short phases, one round (~30 s)")
    parser.add_argument("--seconds", type=float, help="length of each measured phase")
    parser.add_argument("--rounds", type=int, help="rounds per test (servers alternate)")
    parser.add_argument("--concurrency", type=int, default=32, help="queries in flight (32)")
    parser.add_argument("--pool", type=int, default=256, help="nobody connections (256)")
    parser.add_argument(
        "--extra", type=int, default=10000, help="extra sockets for the big table (10000)"
    )
    parser.add_argument(
        "--only-big", action="store_true", help="skip the run with few extra sockets"
    )
    parser.add_argument("--oidentd", default="/usr/sbin/oidentd", help="oidentd binary")
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 3.0)
    rounds = args.rounds or (1 if args.quick else 2)
    warmup = 0.3 if args.quick else 0.5
    if os.geteuid() != 0:
        sys.exit("bench_daemon: run as root (a child must become uid 65534)")
    oidentd = shutil.which(args.oidentd)
    if oidentd is None:
        sys.exit(f"bench_daemon: {args.oidentd} not found")
    raise_fd_limit(args.extra + 2 * args.pool + 1000)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    scenarios = [] if args.only_big else [Scenario("few extra sockets", 0)]
    scenarios.append(Scenario(f"{args.extra:,} extra sockets", args.extra))
    started = time.monotonic()
    keep: list[socket.socket] = []
    servers: dict[str, Server] = {}
    child = hold = -1
    with tempfile.TemporaryDirectory(prefix="aioidentd-bench-") as tmpname:
        tmp = Path(tmpname)
        tmp.chmod(0o755)  # oidentd, as nobody, may read its configuration again
        exe = compile_loadgen(tmp)
        conf = tmp / "oidentd.conf"
        conf.write_text(OIDENTD_CONF)
        conf.chmod(0o644)
        try:
            # The connections the hit queries name: nobody's 127.0.0.1:A -> our 127.0.0.1:B.
            listener = socket.create_server((HOST, 0), backlog=4096)
            keep.append(listener)
            b_port = listener.getsockname()[1]
            accepted, child, hold, a_ports = nobody_pool(listener, args.pool)
            keep += accepted
            lists = {
                "hit": [(f"{a},{b_port}", f"{a},{b_port}:USERID:UNIX:nobody") for a in a_ports],
                "miss": [],
            }
            used = ports_in_use()
            free = [p for p in range(600, 1024) if p not in used][:64]
            lists["miss"] = [(f"{s},{c}", f"{s},{c}:ERROR:NO-USER") for c, s in enumerate(free, 1)]
            files: dict[str | tuple[str, str], Path] = {}
            for kind, entries in lists.items():
                files[kind] = tmp / f"{kind}.txt"
                files[kind].write_text("".join(f"{q}\t{a}\n" for q, a in entries))

            secret = secrets.token_bytes(32)
            key_file = tmp / "pseudonym.key"
            key_file.write_text(secret.hex() + "\n")
            key_file.chmod(0o400)
            pseudonym_conf = tmp / "pseudonym.toml"
            pseudonym_conf.write_text(PSEUDONYM_CONF.format(key=key_file))
            pseudonym_id = Pseudonyms(secret, rotate="monthly").of(str(NOBODY), HOST)
            files[("hit", PSEUDONYM)] = tmp / "hit-pseudonym.txt"
            files[("hit", PSEUDONYM)].write_text(
                "".join(f"{a},{b_port}\t{a},{b_port}:USERID:UNIX:{pseudonym_id}\n" for a in a_ports)
            )
            ours_port, oid_port, pn_port = free_port(), free_port(), free_port()
            static_port = free_port()
            static_argv = [sys.executable, "-m", "aioidentd", "serve", "--host", HOST]
            static_argv += ["--port", str(static_port), "--no-config", "--default", "nobody"]
            servers[STATIC] = Server(STATIC, static_argv, static_port, env)
            ours_argv = [sys.executable, "-m", "aioidentd", "serve", "--host", HOST]
            ours_argv += ["--port", str(ours_port)]
            servers["ours"] = Server("ours", ours_argv, ours_port, env)
            pn_argv = [sys.executable, "-m", "aioidentd", "serve", "--host", HOST, "--port"]
            pn_argv += [str(pn_port), "--config", str(pseudonym_conf)]
            servers[PSEUDONYM] = Server(PSEUDONYM, pn_argv, pn_port, env)
            servers["oidentd"] = Server(
                "oidentd",
                [oidentd, "-i", "-S", "-q", "-a", HOST, "-p", str(oid_port), "-C", str(conf)],
                oid_port,
                env,
            )
            for server in servers.values():
                server.wait_ready()
            for kind in lists:
                for server in servers.values():
                    if kind == "miss" and server.name in (PSEUDONYM, STATIC):
                        continue
                    first = files.get((kind, server.name), files[kind]).read_text()
                    q, want = first.partition("\n")[0].split("\t")
                    got = query(server.port, q).rstrip("\r\n")
                    if got != want:
                        raise RuntimeError(
                            f"{server.name}: {kind} query {q!r}: {got!r} != {want!r}"
                        )
            print(
                f"servers up; {len(a_ports)} connections owned by nobody to query; "
                f"{rounds} round(s) of {seconds:g} s per test, {args.concurrency} in flight"
            )
            for scenario in scenarios:
                have = len(keep) - 1 - len(accepted)
                if scenario.extra > have:
                    keep += open_sockets(scenario.extra - have)
                scenario.table.append(table_lines())
                print(f"{scenario.label}: {scenario.table[-1]:,} sockets in /proc/net/tcp{{,6}}")
                for rnd in range(rounds):
                    for kind in KINDS:
                        order = list(servers.values())
                        if rnd % 2:
                            order.reverse()
                        for server in order:
                            if kind == "miss" and server.name in (PSEUDONYM, STATIC):
                                continue
                            listfile = files.get((kind, server.name), files[kind])
                            run_list(exe, server, listfile, args.concurrency, warmup)
                            run = run_list(exe, server, listfile, args.concurrency, seconds)
                            scenario.table.append(table_lines())
                            key = (kind, server.name)
                            scenario.results.setdefault(key, Result()).runs.append(run)
                            print(
                                f"  round {rnd + 1} {kind:4} {server.name:8}: "
                                f"{run.ok / run.elapsed:8,.0f}/s  p50 {run.p50_us:6.0f} us  "
                                f"p99 {run.p99_us:6.0f} us  server {run.server_cpu:5.2f} s "
                                f"CPU  loadgen {run.loadgen_cpu:5.2f} s  errors {run.errors}"
                            )
        finally:
            for server in servers.values():
                server.stop()
            # With an RST (SO_LINGER 0), ours first so that the nobody child's ends are
            # reset too: closing 10,000 sockets normally would leave thousands in
            # TIME_WAIT for a minute, in the next run's table.
            linger = struct.pack("ii", 1, 0)
            for sock in keep:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                sock.close()
            if hold >= 0:
                os.close(hold)
            if child > 0:
                os.waitpid(child, 0)
    print(f"(whole run {time.monotonic() - started:.0f} s)\n")
    report(scenarios, args.concurrency)
    errors = sum(r.errors for s in scenarios for r in s.results.values())
    return 1 if errors else 0


def report(scenarios: list[Scenario], concurrency: int) -> None:
    header = f"{'':42}{'ours':>12}{'oidentd':>12}{'ours/oidentd':>14}"
    rows = (
        ("connections/s", "qps", ",.0f"),
        ("p50 latency, connect -> answer (us)", "p50_us", ",.0f"),
        ("p99 latency, connect -> answer (us)", "p99_us", ",.0f"),
        ("server CPU per query (us)", "server_us_per_query", ",.1f"),
        ("load generator CPU per query (us)", "loadgen_us_per_query", ",.1f"),
        ("answers checked", "ok", ",d"),
        ("errors", "errors", ",d"),
    )
    print(header)
    print("-" * len(header))
    for scenario in scenarios:
        lo, hi = min(scenario.table), max(scenario.table)
        size = f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"
        print(f"{scenario.label}: {size} sockets on the host (/proc/net/tcp + tcp6 entries)")
        for kind in KINDS:
            ours = scenario.results.get((kind, "ours"))
            base = scenario.results.get((kind, "oidentd"))
            what = "names a nobody-owned connection" if kind == "hit" else "names no connection"
            print(f"  {kind} (query {what})")
            for label, attr, fmt in rows:
                mv = getattr(ours, attr) if ours else 0
                bv = getattr(base, attr) if base else 0
                ratio = _ratio(mv, bv) if attr not in ("ok", "errors") else ""
                print(f"    {label:38}{format(mv, fmt):>12}{format(bv, fmt):>12}{ratio:>14}")
    print('\nanswer = "pseudonym" vs user names (hit queries, the same daemon, issue 21: <= 1.1):')
    for scenario in scenarios:
        plain = scenario.results.get(("hit", "ours"))
        pseudonym = scenario.results.get(("hit", PSEUDONYM))
        if plain and pseudonym:
            print(
                f"  {scenario.label}: server CPU per query {pseudonym.server_us_per_query:.1f} us "
                f"vs {plain.server_us_per_query:.1f} us: x"
                f"{_ratio(pseudonym.server_us_per_query, plain.server_us_per_query)}; "
                f"connections/s x{_ratio(pseudonym.qps, plain.qps)}"
            )
    print(
        "\nreal kernel lookups vs the static answer (--default, no lookup; the same daemon, "
        "issue 18: <= 1.4), server CPU per query:"
    )
    for scenario in scenarios:
        static = scenario.results.get(("hit", STATIC))
        if not static:
            continue
        for kind in KINDS:
            real = scenario.results.get((kind, "ours"))
            if real:
                print(
                    f"  {scenario.label}, {kind}: {real.server_us_per_query:.1f} us vs "
                    f"{static.server_us_per_query:.1f} us: "
                    f"x{_ratio(real.server_us_per_query, static.server_us_per_query)}"
                )
    if len(scenarios) == 2:
        print("\nScaling, big table / few sockets (1.00 = unaffected by the table size):")
        for kind in KINDS:
            for name in ("ours", "oidentd"):
                small = scenarios[0].results.get((kind, name))
                big = scenarios[1].results.get((kind, name))
                if small and big:
                    cpu = _ratio(big.server_us_per_query, small.server_us_per_query)
                    rate = _ratio(big.qps, small.qps)
                    print(f"  {kind:4} {name:8} CPU/query x{cpu}  connections/s x{rate}")
    print(
        f"\nours/oidentd: above 1 means ours is higher (better for /s, worse for latency and "
        f"CPU). {concurrency} queries in flight; one query per connection; the machine has "
        f"{os.cpu_count()} CPUs."
    )
    print(
        "Server CPU = utime+stime of the server's process group per answered query: the "
        "parent's own time + cutime/cstime of the children it reaped (oidentd forks one per "
        "connection) + live group members; ours is one process."
    )
    for scenario in scenarios:
        for (kind, name), result in scenario.results.items():
            if result.errors:
                print(
                    f"ERRORS {scenario.label} {kind} {name}: {result.errors:,} "
                    f"({result.error_text})"
                )


if __name__ == "__main__":
    sys.exit(main())
