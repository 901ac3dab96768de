"""Driver run as root in a private network namespace: three machines, a NAT gateway in
the middle, and ngircd outside asking about a connection of a user inside.

usage: python netns_nat.py

* outer (this namespace): ngircd on 203.0.113.1 and 2001:db8:1::1, port 16667;
* gateway (a namespace of its own): 203.0.113.2 / 2001:db8:1::2 outside, 10.0.0.1 /
  fd00:10::1 inside, forwarding, nftables masquerade out of its outer interface, and
  ``aioidentd serve`` on port 113 with ``[[nat]]``;
* inner (another): 10.0.0.2 / fd00:10::2, default routes via the gateway; the user
  INNER_USER (a forked child that entered the namespace and became that user) registers
  with ngircd through the NAT.

Cases, one after the other (the gateway's daemon and the inner identd restarted for each):

* ``ours``: the inner identd is ``aioidentd serve`` trusting the gateway's PROXY header;
  the gateway forwards with ``forward_proxy = "v2"`` (IPv4 and IPv6);
* ``oidentd``: the inner identd is Debian's oidentd 2.5 with ``-P 10.0.0.1`` (its
  forwarding-proxy mode); the gateway forwards without a header;
* ``static``: no inner identd; the gateway answers from a static ``[[nat]]`` entry;
* ``workers``: as ``ours``, with the gateway's daemon in two worker processes.

Prints JSON ``{"cases": {case: {"v4": welcome result, "v6": ...}}, "logs": {...}}``.
"""

from __future__ import annotations

import asyncio

# Loaded while root can read the interpreter's files: the inner user's child cannot.
import concurrent.futures.thread  # noqa: F401
import contextlib
import ctypes
import encodings.idna  # noqa: F401
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from identcases import loopback_up, stop
from netns_irc import IRC_PORT, start_ircd, stop_ircd, welcome

INNER_USER = "games"
CLONE_NEWNET = 0x40000000
OUTER4, GW_OUT4, GW_IN4, INNER4 = "203.0.113.1", "203.0.113.2", "10.0.0.1", "10.0.0.2"
OUTER6, GW_OUT6, GW_IN6, INNER6 = "2001:db8:1::1", "2001:db8:1::2", "fd00:10::1", "fd00:10::2"
START_TIMEOUT = 15.0

GATEWAY_CONFIG = """\
[server]
log_queries = true
response_timeout = 3
forward_timeout = 2
workers = {workers}

[[nat]]
network = ["10.0.0.0/24", "fd00:10::/64"]
{nat}
"""
INNER_CONFIG = """\
[server]
log_queries = true
trusted_proxies = ["10.0.0.1", "fd00:10::1"]
"""
NAT = {
    "ours": 'answer = "forward"\nforward_proxy = "v2"',
    "oidentd": 'answer = "forward"',
    "static": 'answer = "fixed"\nreply = "innerstatic"',
    # Two worker processes sharing port 113: each forks its own conntrack helper.
    "workers": 'answer = "forward"\nforward_proxy = "v2"',
}


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Namespace:
    """A network namespace held open by a sleeping process; commands run in it with
    nsenter."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "-n", "sleep", "600"])
        path = f"/proc/{self.proc.pid}/ns/net"
        deadline = time.monotonic() + 5
        while os.readlink(path) == os.readlink("/proc/self/ns/net"):
            if time.monotonic() > deadline:
                raise RuntimeError("the namespace did not appear")
            time.sleep(0.01)
        self.pid = self.proc.pid

    def argv(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n", *argv]

    def run(self, *argv: str) -> None:
        run(*self.argv(*argv))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def topology(gateway: Namespace, inner: Namespace) -> None:
    run("ip", "link", "add", "o0", "type", "veth", "peer", "name", "g0")
    run("ip", "link", "set", "g0", "netns", str(gateway.pid))
    run("ip", "link", "add", "g1", "type", "veth", "peer", "name", "i0")
    run("ip", "link", "set", "g1", "netns", str(gateway.pid))
    run("ip", "link", "set", "i0", "netns", str(inner.pid))
    run("ip", "addr", "add", f"{OUTER4}/24", "dev", "o0")
    run("ip", "-6", "addr", "add", f"{OUTER6}/64", "dev", "o0", "nodad")
    run("ip", "link", "set", "o0", "up")
    g = gateway.run
    g("ip", "link", "set", "lo", "up")
    g("ip", "addr", "add", f"{GW_OUT4}/24", "dev", "g0")
    g("ip", "-6", "addr", "add", f"{GW_OUT6}/64", "dev", "g0", "nodad")
    g("ip", "addr", "add", f"{GW_IN4}/24", "dev", "g1")
    g("ip", "-6", "addr", "add", f"{GW_IN6}/64", "dev", "g1", "nodad")
    g("ip", "link", "set", "g0", "up")
    g("ip", "link", "set", "g1", "up")
    g("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
    g("sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")
    for family in ("ip", "ip6"):
        g("nft", "add", "table", family, "nat")
        g(
            "nft",
            f"add chain {family} nat post {{ type nat hook postrouting priority srcnat; }}",
        )
        g("nft", "add", "rule", family, "nat", "post", "oifname", "g0", "masquerade")
    i = inner.run
    i("ip", "link", "set", "lo", "up")
    i("ip", "addr", "add", f"{INNER4}/24", "dev", "i0")
    i("ip", "-6", "addr", "add", f"{INNER6}/64", "dev", "i0", "nodad")
    i("ip", "link", "set", "i0", "up")
    i("ip", "route", "add", "default", "via", GW_IN4)
    i("ip", "-6", "route", "add", "default", "via", GW_IN6)


def wait_port(namespace: Namespace | None, host: str, port: int, proc: Any = None) -> None:
    """Wait until ``host:port`` accepts, seen from ``namespace`` (None: this one)."""
    deadline = time.monotonic() + START_TIMEOUT
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
    argv = [sys.executable, "-c", probe]
    if namespace is not None:
        argv = namespace.argv(*argv)
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        if subprocess.run(argv, capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def inner_user(inner: Namespace, source: str, server: str, nick: str) -> dict[str, Any]:
    """Register with ngircd from inside, as INNER_USER (a forked child in the inner
    namespace)."""
    entry = pwd.getpwnam(INNER_USER)
    netns = os.open(f"/proc/{inner.pid}/ns/net", os.O_RDONLY)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(netns, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

            async def main() -> dict[str, Any]:
                started = time.monotonic()
                reader, writer = await asyncio.open_connection(
                    server, IRC_PORT, local_addr=(source, 0)
                )
                return await welcome(reader, writer, nick, "inner", started)

            welcomed = asyncio.run(main())
            os.write(write_end, json.dumps(welcomed).encode() + b"\n")
            status = 0
        except BaseException as exc:
            os.write(write_end, json.dumps({"user": None, "error": repr(exc)}).encode() + b"\n")
        finally:
            os._exit(status)
    os.close(write_end)
    os.close(netns)
    data = b""
    deadline = time.monotonic() + 30
    while not data.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], 1)
        if ready:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
    os.close(read_end)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data) if data else {"user": None, "error": "no report"}
    return result


def daemon(namespace: Namespace, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            namespace.argv(sys.executable, "-m", "aioidentd", "serve", "--config", str(config)),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def one_case(
    case: str, gateway: Namespace, inner: Namespace, workdir: Path, number: int
) -> dict[str, Any]:
    gw_conf = workdir / f"gateway-{case}.toml"
    workers = 2 if case == "workers" else 1
    gw_conf.write_text(GATEWAY_CONFIG.format(nat=NAT[case], workers=workers))
    inner_proc: subprocess.Popen[bytes] | None = None
    gw_proc: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {}
    try:
        if case in ("ours", "workers"):
            conf = workdir / "inner.toml"
            conf.write_text(INNER_CONFIG)
            inner_proc = daemon(inner, conf, workdir / "inner.log")
        elif case == "oidentd":
            oconf = workdir / "oidentd.conf"
            oconf.write_text("")
            # oidentd resolves every peer's name before it reads the query; with the
            # host's resolver unreachable from here that takes longer than any forward
            # waits. Its own mount namespace gets a resolv.conf that fails at once.
            resolv = workdir / "resolv.conf"
            resolv.write_text("nameserver 127.0.0.1\n")
            oidentd = shutil.which("oidentd") or "/usr/sbin/oidentd"
            script = (
                f"mount --bind {resolv} /etc/resolv.conf && exec {oidentd} -i -S -d "
                f"-P {GW_IN4} -C {oconf}"
            )
            with open(workdir / "inner.log", "ab") as out:
                inner_proc = subprocess.Popen(
                    inner.argv("unshare", "-m", "sh", "-c", script),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
        if inner_proc is not None:
            wait_port(inner, INNER4, 113, inner_proc)
        gw_proc = daemon(gateway, gw_conf, workdir / "gateway.log")
        wait_port(gateway, GW_OUT4, 113, gw_proc)
        results["v4"] = inner_user(inner, INNER4, OUTER4, f"i{number}a")
        if case != "oidentd":  # oidentd's -P proxy mode is IPv4 only
            results["v6"] = inner_user(inner, INNER6, OUTER6, f"i{number}b")
        if case == "workers":  # more queries, for the kernel to spread over both
            for extra in range(4):
                results[f"v4-{extra}"] = inner_user(inner, INNER4, OUTER4, f"i{number}c{extra}")
    finally:
        stop(gw_proc)
        stop(inner_proc)
    return results


def main() -> dict[str, Any]:
    output: dict[str, Any] = {"cases": {}, "logs": {}, "log": ""}
    with tempfile.TemporaryDirectory(prefix="nat-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        gateway = inner = None
        ircd = None
        try:
            gateway, inner = Namespace(), Namespace()
            topology(gateway, inner)
            ircd = start_ircd("ngircd", workdir, (OUTER4, OUTER6))
            wait_port(None, OUTER4, IRC_PORT, ircd)
            for number, case in enumerate(NAT):
                output["cases"][case] = one_case(case, gateway, inner, workdir, number)
        except Exception as exc:
            output["error"] = repr(exc)
        finally:
            stop_ircd(ircd, workdir, output)
            for name in ("gateway", "inner"):
                path = workdir / f"{name}.log"
                if path.exists():
                    output["logs"][name] = path.read_text(errors="replace")[-6000:]
            for namespace in (gateway, inner):
                if namespace is not None:
                    with contextlib.suppress(OSError):
                        namespace.close()
    return output


if __name__ == "__main__":
    loopback_up()
    print(json.dumps(main()))
