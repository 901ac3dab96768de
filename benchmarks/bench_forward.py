#!/usr/bin/env python3
"""The forwarded path against a direct answer, and our forward against oidentd 2.5's.

    python benchmarks/bench_forward.py            # about a minute
    python benchmarks/bench_forward.py --quick    # about 25 seconds

Run as root (oidentd binds and drops privileges; ours drops to nobody). Everything is on
127.0.0.1 with ephemeral ports. The connection asked about is one this script holds
(127.0.0.1:A <-> 127.0.0.1:B, owned by the user running it), asked about from 127.0.0.1
as RFC 1413 requires.

**1. Cost of forwarding.** Four ``aioidentd serve`` processes with real kernel lookups,
differing only in their configuration, each asked the same query in turn (one query per
new connection, sequential, the strict client), alternating for ``--rounds`` rounds:

* ``direct``: no forward anywhere: the user's login name;
* ``direct, forward configured``: ``answer = "forward"`` for another user only, so this
  query is not forwarded (its cost must not change: the ratio to ``direct`` is ~1);
* ``forwarded``: the user forwarded to an embedded ``IdentServer`` in another process
  holding a claim on the connection (no PROXY header: the querier and the daemon are
  both 127.0.0.1 here, so the claim matches anyway);
* ``forwarded, PROXY v2``: the same with a PROXY v2 header (``trusted_proxies``).

Printed: queries/s, p50 and p99 latency, and each one's ratio to ``direct``.

**2. Forward failures, ours vs oidentd 2.5.0** (``force forward`` in its system
configuration, ``forward_timeout = 0.5`` and ``response_timeout = 1`` in ours): a scripted
target that answers correctly, answers about other ports, sends garbage, hangs, or is not
listening. Printed per case: what the querier got and after how long, from each daemon,
and what the target was sent (query line and source address).

**3. The NAT path** (in network namespaces of its own: a gateway with ``[[nat]]``, an
inner host with ``aioidentd serve`` trusting the gateway's PROXY header): queries from
outside to the gateway about its own socket (direct), about an inner connection answered
by forwarding to the inner daemon, and about one answered by a static ``[[nat]]`` entry.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import HOST, Server, free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
import aioidentd  # noqa: E402
from aioidentd.errors import IdentError  # noqa: E402

CONFIGS = {
    "direct": '[user.{me}]\nanswer = "username"\n',
    "direct, forward configured": (
        '[user.{me}]\nanswer = "username"\n'
        '[user.nobody]\nanswer = "forward"\nforward = "{target}"\n'
    ),
    "forwarded": '[user.{me}]\nanswer = "forward"\nforward = "{target}"\n',
    "forwarded, PROXY v2": (
        '[user.{me}]\nanswer = "forward"\nforward = "{target}"\nforward_proxy = "v2"\n'
    ),
}
SERVER = '[server]\nresponse_timeout = 1\nforward_timeout = 0.5\nallow_root = true\nuser = "{me}"\n'
TARGET = """\
import asyncio, sys
from aioidentd import IdentServer
async def main():
    port, lport, rport = map(int, sys.argv[1:4])
    def handler(request):
        request.reply("UNIX", "fromhandler")
    async with IdentServer("127.0.0.1", port, handlers=[handler],
                           trusted_proxies=["127.0.0.1"]) as server:
        server.claim((("127.0.0.1", lport), ("127.0.0.1", rport)), "fromclaim")
        await server.serve_forever()
asyncio.run(main())
"""


def serve_config(name: str, conf: Path, env: dict[str, str]) -> Server:
    """``aioidentd serve --config conf`` on a free loopback port."""
    port = free_port()
    argv = [sys.executable, "-m", "aioidentd", "serve", "--config", str(conf)]
    return Server(name, [*argv, "--host", HOST, "--port", str(port)], port, env)


async def ask(port: int, lport: int, rport: int) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        reply = await aioidentd.query(HOST, lport, rport, port=port, timeout=10)
        text = str(reply)
    except IdentError as exc:
        text = f"{type(exc).__name__}"
    return text, time.perf_counter() - started


def latency(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def cost(servers: dict[str, Server], lport: int, rport: int, rounds: int, n: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in servers}
    answers: dict[str, set[str]] = {name: set() for name in servers}
    elapsed: dict[str, float] = dict.fromkeys(servers, 0.0)
    cpu: dict[str, float] = dict.fromkeys(servers, 0.0)
    for server in servers.values():  # warm-up
        for _ in range(20):
            await ask(server.port, lport, rport)
    names = list(servers)
    for number in range(rounds):
        # A different first server every round: no one gains from going first.
        for name in names[number % len(names) :] + names[: number % len(names)]:
            server = servers[name]
            started, cpu_before = time.perf_counter(), server.cpu_seconds()
            for _ in range(n):
                text, seconds = await ask(server.port, lport, rport)
                times[name].append(seconds)
                answers[name].add(text)
            elapsed[name] += time.perf_counter() - started
            cpu[name] += server.cpu_seconds() - cpu_before
    base = len(times["direct"]) / elapsed["direct"]
    base_cpu = cpu["direct"] / len(times["direct"])
    print(
        f"\n1. cost of forwarding ({rounds} rounds x {n} sequential queries, one connection each)"
    )
    print(
        f"{'':28}{'queries/s':>10}{'vs direct':>10}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'daemon CPU/q':>14}{'vs direct':>10}   answers"
    )
    for name in servers:
        rate = len(times[name]) / elapsed[name]
        per_query = cpu[name] / len(times[name])
        share = per_query / base_cpu
        print(
            f"{name:28}{rate:10.0f}{rate / base:9.2f}x{latency(times[name], 0.5):8.2f}"
            f"{latency(times[name], 0.99):8.2f}{per_query * 1e6:11.0f} us{share:9.2f}x"
            f"   {sorted(answers[name])}"
        )
    median = statistics.median
    same = median(times["direct, forward configured"]) / median(times["direct"])
    print(
        "  queries/s 'vs direct' below 1 is slower; daemon CPU per query (the target's is not "
        "counted) 'vs direct' above 1 costs more. Median latency of 'direct, forward "
        f"configured' over 'direct': {same:.2f}"
    )


class Scripted:
    """A target identd whose behaviour is switched per case; records what it was sent."""

    def __init__(self) -> None:
        self.mode = "good"
        self.seen: list[tuple[str, bytes]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.serve, HOST, 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            self.seen.append((writer.get_extra_info("peername")[0], line))
            ports = line.strip().replace(b" ", b"")
            if self.mode == "good":
                writer.write(ports + b":USERID:UNIX:fromapp\r\n")
            elif self.mode == "other ports":
                writer.write(b"1,2:USERID:UNIX:fromapp\r\n")
            elif self.mode == "garbage":
                writer.write(b"hello there\r\n")
            elif self.mode == "hangs":
                await reader.read()  # until the forwarder gives up and closes
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


async def failures(
    ours: Server, oidentd: Server, scripted: Scripted, lport: int, rport: int
) -> None:
    print("\n2. forward failures: what the querier gets, and when")
    print(f"{'target':16}{'ours':>38}{'oidentd 2.5':>38}   target was sent")
    for mode in ("good", "other ports", "garbage", "hangs", "not listening"):
        scripted.mode = mode
        if mode == "not listening":
            await scripted.close()
        row = []
        sent = ""
        for server in (ours, oidentd):
            scripted.seen.clear()
            text, seconds = await ask(server.port, lport, rport)
            row.append(f"{text[:28]} {seconds:5.2f} s")
            if server is oidentd and scripted.seen:
                peer, line = scripted.seen[0]
                sent = f"{line!r} from {peer}"
        print(f"{mode:16}{row[0]:>38}{row[1]:>38}   {sent}")
    print(
        "  ours: the user's own answer (here the login name) within forward_timeout, ports "
        "checked; oidentd: see its column"
    )


NAT_GATEWAY = """\
[server]
response_timeout = 3
forward_timeout = 2
[user.root]
answer = "username"

[[nat]]
network = "10.0.0.2/32"
forward_proxy = "v2"
[[nat]]
network = "10.0.0.3/32"
answer = "fixed"
reply = "natstatic"
"""
NAT_INNER = """\
[server]
trusted_proxies = ["10.0.0.1"]
[user.root]
answer = "username"
"""
HOLD = (
    "import socket, sys, time; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), "
    "source_address=(sys.argv[3], 0)); print(s.getsockname()[1], flush=True); time.sleep(600)"
)


async def nat_paths(rounds: int, n: int) -> None:
    """Run inside a fresh network namespace (the outer host): a gateway and an inner
    host in namespaces of their own (tests/interop/netns_nat.py's topology)."""
    sys.path.insert(0, str(ROOT / "tests" / "interop"))
    from netns_nat import GW_OUT4, OUTER4, Namespace, daemon, topology, wait_port

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    gateway, inner = Namespace(), Namespace()
    holders: list[subprocess.Popen[str]] = []
    accepted_sockets: list[socket.socket] = []  # the outer ends, held open
    procs: list[subprocess.Popen[bytes]] = []
    try:
        topology(gateway, inner)
        inner.run("ip", "addr", "add", "10.0.0.3/24", "dev", "i0")
        with tempfile.TemporaryDirectory(prefix="bench-nat-") as tmpname:
            tmp = Path(tmpname)
            tmp.chmod(0o755)
            (tmp / "gateway.toml").write_text(NAT_GATEWAY)
            (tmp / "inner.toml").write_text(NAT_INNER)
            procs.append(daemon(inner, tmp / "inner.toml", tmp / "inner.log"))
            wait_port(inner, "10.0.0.2", 113, procs[-1])
            procs.append(daemon(gateway, tmp / "gateway.toml", tmp / "gateway.log"))
            wait_port(gateway, GW_OUT4, 113, procs[-1])
            listener = socket.create_server((OUTER4, 0))
            port = listener.getsockname()[1]
            pairs: dict[str, tuple[int, int]] = {}
            for name, namespace, source in (
                ("direct (a gateway socket)", gateway, GW_OUT4),
                ("NAT, forwarded (PROXY v2)", inner, "10.0.0.2"),
                ("NAT, static map", inner, "10.0.0.3"),
            ):
                holder = subprocess.Popen(
                    namespace.argv(sys.executable, "-c", HOLD, OUTER4, str(port), source),
                    stdout=subprocess.PIPE,
                    text=True,
                )
                holders.append(holder)
                assert holder.stdout is not None
                holder.stdout.readline()
                accepted, peer = listener.accept()
                accepted_sockets.append(accepted)
                pairs[name] = (peer[1], port)  # the gateway's port, as the outside sees it
            times: dict[str, list[float]] = {name: [] for name in pairs}
            answers: dict[str, set[str]] = {name: set() for name in pairs}
            for _ in range(rounds):
                for name, (gateway_port, server_port) in pairs.items():
                    for _ in range(n):
                        text, seconds = await ask_at(GW_OUT4, gateway_port, server_port)
                        times[name].append(seconds)
                        answers[name].add(text)
            base = statistics.median(times["direct (a gateway socket)"])
            print(f"\n3. NAT path ({rounds} rounds x {n} sequential queries to the gateway)")
            print(f"{'':30}{'queries/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs direct':>11}   answers")
            for name, values in times.items():
                rate = len(values) / sum(values)
                direct = len(times["direct (a gateway socket)"]) / sum(
                    times["direct (a gateway socket)"]
                )
                print(
                    f"{name:30}{rate:10.0f}{latency(values, 0.5):9.2f}"
                    f"{latency(values, 0.99):9.2f}{rate / direct:10.2f}x   {sorted(answers[name])}"
                )
            print(f"  median direct latency {base * 1000:.2f} ms")
    finally:
        for sock in accepted_sockets:
            sock.close()
        for holder in holders:
            holder.kill()
            holder.wait()
        for proc in procs:
            proc.terminate()
            proc.wait()
        for namespace in (gateway, inner):
            namespace.close()


async def ask_at(host: str, lport: int, rport: int) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        text = str(await aioidentd.query(host, lport, rport, timeout=10))
    except IdentError as exc:
        text = type(exc).__name__
    return text, time.perf_counter() - started


async def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        sys.exit("bench_forward: run as root (oidentd binds and drops privileges)")
    oidentd = shutil.which("oidentd") or shutil.which("oidentd", path="/usr/sbin")
    if oidentd is None:
        sys.exit("bench_forward: oidentd not installed (scripts/install-system-deps.sh)")
    me = pwd.getpwuid(os.geteuid()).pw_name
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    listener = socket.create_server((HOST, 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    lport, rport = client.getsockname()[1], client.getpeername()[1]
    servers: dict[str, Server] = {}
    others: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmpname:
        tmp = Path(tmpname)
        tmp.chmod(0o755)
        target_port = free_port()
        target = Server(
            "target",
            [sys.executable, "-c", TARGET, str(target_port), str(lport), str(rport)],
            target_port,
            env,
        )
        scripted = Scripted()
        script_port = await scripted.start()
        try:
            target.wait_ready()
            for name, extra in CONFIGS.items():
                conf = tmp / f"{len(servers)}.toml"
                conf.write_text(
                    SERVER.format(me=me) + extra.format(me=me, target=f"{HOST}:{target_port}")
                )
                servers[name] = serve_config(name, conf, env)
            # The failure cases: ours and oidentd forwarding to the scripted target.
            conf = tmp / "fail.toml"
            conf.write_text(
                SERVER.format(me=me)
                + CONFIGS["forwarded"].format(me=me, target=f"{HOST}:{script_port}")
            )
            ours = serve_config("ours", conf, env)
            others.append(ours)
            oconf = tmp / "oidentd.conf"
            oconf.write_text(
                f'user "{me}" {{\n\tdefault {{\n\t\tforce forward {HOST} {script_port}\n\t}}\n}}\n'
            )
            oport = free_port()
            theirs = Server(
                "oidentd",
                [oidentd, "-i", "-S", "-q", "-a", HOST, "-p", str(oport), "-C", str(oconf)],
                oport,
                env,
            )
            others.append(theirs)
            for server in (*servers.values(), ours, theirs):
                server.wait_ready()
            await cost(servers, lport, rport, args.rounds, args.queries)
            await failures(ours, theirs, scripted, lport, rport)
            for server in (*servers.values(), *others, target):
                server.stop()
            servers.clear()
            others.clear()
            # The NAT path needs namespaces of its own: the same script, in one.
            argv = [sys.executable, __file__, "--nat", "--rounds", str(args.rounds)]
            argv += ["--queries", str(args.queries)]
            done = subprocess.run(["unshare", "-n", *argv], env=env, timeout=600)
            if done.returncode != 0:
                print("bench_forward: the NAT part failed", file=sys.stderr)
                return 1
        finally:
            await scripted.close()
            for server in (*servers.values(), *others, target):
                server.stop()
            for sock in (client, accepted, listener):
                sock.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200, help="queries per round and server")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 100 queries")
    parser.add_argument("--nat", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.rounds, arguments.queries = 2, 100
    if arguments.nat:
        asyncio.run(nat_paths(arguments.rounds, arguments.queries))
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments)))
