#!/usr/bin/env python3
"""Where a fresh connection's CPU goes: ours against the C limit, user and kernel time apart.

    python benchmarks/profile_fresh.py              # 3 rounds of 3 s, both modes
    python benchmarks/profile_fresh.py --perf       # and perf's top symbols for ours (root)

Issue 18 asks for server CPU per query within 1.25x of the C limit's on a fresh connection.
Both servers make the same system calls per connection (accept4, recv, send, close; ours
adds nothing per query on the fast path), so the kernel's share should be about the same,
and the gap is what the interpreter does between them. This script measures exactly that,
in one run with interleaved rounds: utime and stime of each server (from /proc) per
answered query, with benchmarks/loadgen.c opening a fresh connection per query, 50 in
flight, closed with an RST; both modes (one answer then close, and ``--multiple`` / the
C limit's "many"). ``--perf`` then samples ours with ``perf record`` and prints the share
of each binary (kernel, libpython, the socket module...) and the top symbols, which says
what the user time is made of.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_daemon import ports_in_use
from bench_server import (
    CLK_TCK,
    HOST,
    LIMITD_SRC,
    USER,
    Server,
    compile_c,
    compile_loadgen,
    free_port,
    our_argv,
)

ROOT = Path(__file__).resolve().parent.parent


def user_kernel(server: Server) -> tuple[float, float]:
    """(utime, stime) in seconds of the server's leader process (both are one process)."""
    with open(f"/proc/{server.proc.pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def load(exe: Path, server: Server, seconds: float, listfile: Path | None = None) -> int:
    """One loadgen run (fresh connection per query, 50 in flight): answers checked;
    ``listfile``: the queries and their exact answers from that file."""
    argv = [str(exe), HOST, str(server.port), "conn", "50", str(seconds), USER]
    if listfile is not None:
        argv[3], argv[-1] = "list", str(listfile)
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    values = dict(item.split("=", 1) for item in out.split())
    if int(values["errors"]):
        raise RuntimeError(f"{server.name}: {values['errors']} wrong answers")
    return int(values["ok"])


def perf_profile(exe: Path, server: Server, seconds: float, workdir: Path) -> None:
    perf = shutil.which("perf")
    if perf is None:
        print("perf: not installed (apt install linux-perf)")
        return
    data = workdir / "perf.data"
    record = subprocess.Popen(
        [perf, "record", "-q", "-F", "2000", "-o", str(data), "-p", str(server.proc.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    load(exe, server, seconds)
    record.send_signal(2)
    _, err = record.communicate()
    if record.returncode not in (0, -2) or not data.exists():
        print(f"perf record failed: {err.decode(errors='replace').strip()[:300]}")
        return
    for sort, top in (("dso", 8), ("dso,sym", 25)):
        out = subprocess.run(
            [perf, "report", "-i", str(data), "--stdio", "--sort", sort, "--percent-limit", "0.7"],
            capture_output=True,
            text=True,
        ).stdout
        rows = [line for line in out.splitlines() if line.strip() and not line.startswith("#")]
        print(f"\nperf, ours, share of samples by {sort} (top {top}):")
        for line in rows[:top]:
            print("  " + " ".join(line.split()))


def measure(
    exe: Path, servers: list[Server], rounds: int, seconds: float, files: dict[str, Path]
) -> dict[str, tuple[float, float]]:
    """(user, kernel) µs per answered query of each server, rounds interleaved."""
    for server in servers:
        server.wait_ready()
        load(exe, server, 0.5, files.get(server.name))  # warm-up
    totals: dict[str, list[float]] = {s.name: [0, 0.0, 0.0] for s in servers}
    for rnd in range(rounds):
        for server in servers if rnd % 2 == 0 else servers[::-1]:
            user0, kernel0 = user_kernel(server)
            answered = load(exe, server, seconds, files.get(server.name))
            user1, kernel1 = user_kernel(server)
            total = totals[server.name]
            total[0] += answered
            total[1] += user1 - user0
            total[2] += kernel1 - kernel0
    return {
        name: (user * 1e6 / answered, kernel * 1e6 / answered)
        for name, (answered, user, kernel) in totals.items()
    }


def print_table(title: str, per: dict[str, tuple[float, float]]) -> None:
    """``per``'s (user, kernel) µs per query under ``title``, a line per server."""
    print(f"\n{title}:")
    print(f"  {'':10}{'user µs/q':>11}{'kernel µs/q':>13}{'total µs/q':>12}")
    for name, (user, kernel) in per.items():
        print(f"  {name:10}{user:11.1f}{kernel:13.1f}{user + kernel:12.1f}")


def lookups(exe: Path, tmp: Path, env: dict[str, str], rounds: int, seconds: float) -> None:
    """The daemon with real lookups (no connection owns the queried ports: NO-USER after
    the kernel said so) against the same daemon's fixed answer, user and kernel apart."""
    used = ports_in_use()
    free = [p for p in range(600, 1024) if p not in used][:50]
    listfile = tmp / "miss.txt"
    listfile.write_text("".join(f"{s},{c}\t{s},{c}:ERROR:NO-USER\n" for c, s in enumerate(free, 1)))
    static_file = tmp / "static.txt"
    static_file.write_text(
        "".join(f"{s},{c}\t{s},{c}:USERID:UNIX:{USER}\n" for c, s in enumerate(free, 1))
    )
    base = [sys.executable, "-m", "aioidentd", "serve", "--host", HOST, "--no-config"]
    base += ["--user", "nobody", "--port"]
    real_port, static_port = free_port(), free_port()
    servers = [
        Server("lookups", [*base, str(real_port)], real_port, env),
        Server("static", [*base, str(static_port), "--default", USER], static_port, env),
    ]
    try:
        per = measure(exe, servers, rounds, seconds, {"lookups": listfile, "static": static_file})
    finally:
        for server in servers:
            server.stop()
    print_table(
        f"the daemon, real kernel lookups (a miss) vs its static answer ({rounds} rounds)", per
    )
    (lu, lk), (su, sk) = per["lookups"], per["static"]
    print(
        f"  lookups / static: total x{(lu + lk) / (su + sk):.2f}; the lookups add "
        f"{lu - su:.1f} µs/q of user time and {lk - sk:.1f} µs/q in the kernel"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--perf", action="store_true", help="perf record ours (root)")
    parser.add_argument(
        "--lookups",
        action="store_true",
        help="also the daemon's real kernel lookups (queries naming no connection) against "
        "its static answer (root: the daemon drops to nobody)",
    )
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    with tempfile.TemporaryDirectory(prefix="aioidentd-profile-") as tmpname:
        tmp = Path(tmpname)
        exe, limitd = compile_loadgen(tmp), compile_c(LIMITD_SRC, tmp)
        for multiple in (False, True):
            mode = "--multiple / many" if multiple else "one answer, then close"
            servers = []
            port = free_port()
            servers.append(
                Server("ours", our_argv(port, multiple=multiple, uvloop=False), port, env)
            )
            port = free_port()
            many = "many" if multiple else "one"
            servers.append(Server("C limit", [str(limitd), HOST, str(port), USER, many], port, env))
            try:
                per = measure(exe, servers, args.rounds, args.seconds, {})
                print_table(
                    f"fresh connection per query, 50 in flight, {mode} ({args.rounds} rounds)", per
                )
                (ou, ok), (cu, ck) = per["ours"], per["C limit"]
                print(
                    f"  ours / C limit: total x{(ou + ok) / (cu + ck):.2f}, kernel "
                    f"x{ok / ck:.2f}, user x{ou / max(cu, 0.01):.1f}; ours' user time above "
                    f"the C limit's: {ou - cu:.1f} µs/q. For x1.25 in total it would have "
                    f"to be {0.25 * (cu + ck) - (ok - ck):.1f} µs/q."
                )
                if args.perf and not multiple:
                    perf_profile(exe, servers[0], args.seconds, tmp)
            finally:
                for server in servers:
                    server.stop()
        if args.lookups:
            lookups(exe, tmp, env, args.rounds, args.seconds)
    print(
        "\nuser/kernel: utime/stime of the server process (/proc, clock ticks) per answered "
        "query, summed over the rounds; the machine's other load moves both servers alike "
        "within a round."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
