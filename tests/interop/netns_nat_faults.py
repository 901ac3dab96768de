"""Driver run as root in a private network namespace: the NAT gateway of netns_nat.py
under faults of its conntrack helper and its workers, with real translated connections.

usage: python netns_nat_faults.py

Two inner hosts (10.0.0.2 and 10.0.0.3) connect to a plain listener outside; the
gateway's daemon answers from two static ``[[nat]]`` entries ("two", "three"), so that an
answer meant for one host's connection is told from the other's. Cases:

* ``stop``: the helper stopped (SIGSTOP) until the daemon has answered a query without
  it, then continued; then queries for both hosts in turn; then the daemon told to stop
  (SIGTERM) while its helper is stopped again;
* ``kill``: the helper killed (SIGKILL), then queries until one is answered right again;
* ``workers``: two worker processes, one killed; then queries for both hosts;
* in each: what the helper process holds (uid, capabilities, no_new_privs).

Prints JSON ``{"cases": {...}, "logs": {...}}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from identcases import loopback_up, stop
from netns_nat import GW_OUT4, INNER4, OUTER4, Namespace, daemon, topology, wait_port

INNER4_B = "10.0.0.3"
ANSWERS = {INNER4: "two", INNER4_B: "three"}
CONFIG = """\
[server]
response_timeout = 3
workers = {workers}

[[nat]]
network = ["{a}/32"]
answer = "fixed"
reply = "two"

[[nat]]
network = ["{b}/32"]
answer = "fixed"
reply = "three"
"""
#: In the inner namespace: open a connection from the address on each line read, keep it.
OPENER = """\
import socket, sys
keep = []
for line in sys.stdin:
    source, port = line.split()
    sock = socket.create_connection((%r, int(port)), timeout=10, source_address=(source, 0))
    keep.append(sock)
    print("ok", flush=True)
"""
NETLINK_NETFILTER = 12


class Outside:
    """The outer server: a listener, and connections from inside accepted one at a time
    (so that each accepted one is known to be the one just opened)."""

    def __init__(self, inner: Namespace) -> None:
        self.listener = socket.create_server((OUTER4, 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(10)
        self.opener = subprocess.Popen(
            inner.argv(sys.executable, "-c", OPENER % OUTER4),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.accepted: list[socket.socket] = []

    def connect_from(self, source: str) -> int:
        """A new connection from ``source`` inside; returns its port as seen outside
        (the gateway's, after masquerading)."""
        assert self.opener.stdin is not None and self.opener.stdout is not None
        self.opener.stdin.write(f"{source} {self.port}\n")
        self.opener.stdin.flush()
        conn, peer = self.listener.accept()
        assert self.opener.stdout.readline().strip() == "ok"
        self.accepted.append(conn)
        assert peer[0] == GW_OUT4, peer
        return int(peer[1])

    def ask(self, masq_port: int, timeout: float = 10.0) -> str:
        """Ask the gateway's identd about that connection; the answer's last field (the
        user, or the error), or what went wrong."""
        try:
            with socket.create_connection(
                (GW_OUT4, 113), timeout=timeout, source_address=(OUTER4, 0)
            ) as sock:
                sock.sendall(b"%d,%d\r\n" % (masq_port, self.port))
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(512)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            return f"({exc.__class__.__name__})"
        return data.decode(errors="replace").strip().rsplit(":", 1)[-1]

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        if self.opener.stdin is not None:
            self.opener.stdin.close()
        self.opener.wait(10)
        self.listener.close()


def _descendants(pid: int) -> list[int]:
    found = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            todo.append(child)
    return found


def conntrack_holders(daemon_pid: int) -> list[int]:
    """The daemon's processes that hold a conntrack (NETLINK_NETFILTER) socket: its
    helper, whoever forked it."""
    inodes = set()
    for line in Path(f"/proc/{daemon_pid}/net/netlink").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1]) == NETLINK_NETFILTER:
            inodes.add(f"socket:[{fields[-1]}]")
    holders = []
    for pid in [daemon_pid, *_descendants(daemon_pid)]:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        holders.append(pid)
                        break
    return holders


def wait_for(condition: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {within} s: {what}")
        time.sleep(0.02)


def the_helper(daemon_pid: int, not_: int = 0) -> int:
    holders = wait_for(
        lambda: [p for p in conntrack_holders(daemon_pid) if p != not_],
        15,
        "a conntrack helper",
    )
    return int(holders[0])


def holds(pid: int) -> dict[str, str]:
    """What a process holds: its uids, capability sets, no_new_privs."""
    wanted = ("Uid", "CapPrm", "CapEff", "CapBnd", "NoNewPrivs")
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            status[key] = " ".join(value.split())
    return status


def gone(pid: int) -> bool:
    """Exited and reaped (a zombie still has its /proc entry, state Z)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "X"


def case_stop(outside: Outside, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    pid = proc.pid
    a, b = outside.connect_from(INNER4), outside.connect_from(INNER4_B)
    before = [outside.ask(a), outside.ask(b)]
    helper = the_helper(pid)
    os.kill(helper, signal.SIGSTOP)
    try:
        started = time.monotonic()
        during = outside.ask(a)  # answered by the daemon without the helper
        stopped_for = time.monotonic() - started
    finally:
        os.kill(helper, signal.SIGCONT)
    continued = time.monotonic()
    after = []
    first_right = None
    for n in range(10):
        port, host = (b, INNER4_B) if n % 2 == 0 else (a, INNER4)
        answer = outside.ask(port)
        after.append([host, answer])
        if first_right is None and answer == ANSWERS[host]:
            first_right = time.monotonic() - continued
    # Told to stop while its helper is stopped: the daemon still exits, by itself.
    os.kill(helper, signal.SIGSTOP)
    try:
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            status: int | None = proc.wait(15)
        except subprocess.TimeoutExpired:
            status = None
        exit_seconds = time.monotonic() - began
    finally:
        os.kill(helper, signal.SIGCONT)  # it reads EOF and exits
    return {
        "exit_status": status,
        "exit_seconds": exit_seconds,
        "before": before,
        "during": during,
        "stopped_for": stopped_for,
        "after": after,
        "first_right_after": first_right,
        "helper": holds(helper),
    }


def case_kill(outside: Outside, pid: int) -> dict[str, Any]:
    a = outside.connect_from(INNER4)
    before = outside.ask(a)
    helper = the_helper(pid)
    os.kill(helper, signal.SIGKILL)
    killed = time.monotonic()
    answers = []
    recovered = None
    while time.monotonic() - killed < 15:
        answer = outside.ask(a)
        answers.append(answer)
        if answer == ANSWERS[INNER4]:
            recovered = time.monotonic() - killed
            break
    new = [p for p in conntrack_holders(pid) if p != helper]
    return {
        "before": before,
        "answers": {answer: answers.count(answer) for answer in set(answers)},
        "last": answers[-1],
        "recovered_after": recovered,
        "old_reaped": wait_for_bool(lambda: gone(helper), 5),
        "new_helper": holds(new[0]) if new else None,
    }


def wait_for_bool(condition: Any, within: float) -> bool:
    try:
        wait_for(condition, within, "")
    except RuntimeError:
        return False
    return True


def case_workers(outside: Outside, pid: int, log: Path) -> dict[str, Any]:
    text = wait_for(
        lambda: "started 2 workers" in log.read_text() and log.read_text(), 15, "two workers"
    )
    line = next(line for line in text.splitlines() if "started 2 workers" in line)
    first = int(line.rsplit(":", 1)[1].split(",")[0])
    wait_for(lambda: log.read_text().count("serving ident on") >= 2, 15, "both serving")
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: log.read_text().count("serving ident on") >= 3, 15, "the replacement")
    replaced = time.monotonic() - killed
    results = []
    for n in range(24):
        host = INNER4 if n % 2 == 0 else INNER4_B
        results.append([host, outside.ask(outside.connect_from(host))])
    return {"answers": results, "replaced_after": replaced}


def one_case(case: str, gateway: Namespace, inner: Namespace, workdir: Path) -> dict[str, Any]:
    conf = workdir / f"gateway-{case}.toml"
    conf.write_text(CONFIG.format(workers=2 if case == "workers" else 1, a=INNER4, b=INNER4_B))
    log = workdir / f"gateway-{case}.log"
    proc = daemon(gateway, conf, log)
    outside = None
    try:
        wait_port(gateway, GW_OUT4, 113, proc)
        outside = Outside(inner)
        if case == "stop":
            return case_stop(outside, proc)
        if case == "kill":
            return case_kill(outside, proc.pid)
        return case_workers(outside, proc.pid, log)
    finally:
        if outside is not None:
            outside.close()
        stop(proc)


def main() -> dict[str, Any]:
    output: dict[str, Any] = {"cases": {}, "logs": {}, "log": ""}
    with tempfile.TemporaryDirectory(prefix="natfaults-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        gateway = inner = None
        try:
            gateway, inner = Namespace(), Namespace()
            topology(gateway, inner)
            inner.run("ip", "addr", "add", f"{INNER4_B}/24", "dev", "i0")
            for case in ("stop", "kill", "workers"):
                output["cases"][case] = one_case(case, gateway, inner, workdir)
        except Exception as exc:
            output["error"] = repr(exc)
        finally:
            for path in workdir.glob("gateway-*.log"):
                output["logs"][path.stem] = path.read_text(errors="replace")[-6000:]
            for namespace in (gateway, inner):
                if namespace is not None:
                    with contextlib.suppress(OSError):
                        namespace.close()
    return output


if __name__ == "__main__":
    loopback_up()
    print(json.dumps(main()))
