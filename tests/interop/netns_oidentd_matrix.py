"""Driver run as root in a private network namespace: Debian's oidentd and our daemon,
each configuration of ``oidentd_cases.CASES`` in turn, asked the same queries about the
same live connections of real local users.

usage: python netns_oidentd_matrix.py  (AIOIDENTD_MATRIX_CASES=name,name: only those cases,
while iterating)

1. It re-runs itself in a private mount namespace, where a passwd and a group file of
   its own (the host's, plus the users of ``oidentd_cases.USERS`` with homes in a
   temporary directory) are mounted over /etc/passwd and /etc/group, and a resolv.conf
   that fails at once over /etc/resolv.conf (oidentd resolves each querier's name);
2. every user (and root, and a uid without a passwd entry) opens its connections from a
   forked child that became that user, and keeps them open;
3. for each case: oidentd (``-i -S -C FILE`` and the case's flags) on port 113, every
   query twice, stop; then ``aioidentd serve`` with what ``import-oidentd`` made of the
   same file and flags, the same queries, stop.

Prints JSON ``{"cases": [{"name", "status", "problems", "toml", "rows": [...]}], "log"}``;
a row is ``{"connection", "querier", "query", "oidentd": [a, b], "ours": [a, b]}``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from identcases import end_child, hold_in_child, loopback_up, stop, wait_port
from oidentd_cases import (
    CASES,
    CONNECTIONS,
    NO_PASSWD_UID,
    SERVER_A,
    USER_FILES,
    USERS,
    Case,
    Connection,
)

from aioidentd.oidentd import OidentdInputError, convert

IDENT_PORT = 113
QUERY_TIMEOUT = 5.0
QUERIES_AT_ONCE = 6


def prepare_users(workdir: Path) -> dict[str, str]:
    """The passwd and group files with the test users; their homes and files. Returns
    each user's home."""
    homes: dict[str, str] = {}
    taken = set(USERS) | {str(uid) for uid in USERS.values()}
    passwd = [
        line
        for line in Path("/etc/passwd").read_text().splitlines()
        if line and line.split(":")[0] not in taken and line.split(":")[2] not in taken
    ]
    group = [
        line
        for line in Path("/etc/group").read_text().splitlines()
        if line and line.split(":")[0] not in taken and line.split(":")[2] not in taken
    ]
    root_home = workdir / "home" / "root"
    root_home.mkdir(parents=True)
    passwd = [
        f"root:x:0:0:root:{root_home}:/bin/sh" if line.startswith("root:") else line
        for line in passwd
    ]
    for name, uid in USERS.items():
        home = workdir / "home" / name
        home.mkdir(parents=True)
        passwd.append(f"{name}:x:{uid}:{uid}::{home}:/usr/sbin/nologin")
        group.append(f"{name}:x:{uid}:")
        if name in USER_FILES:
            path = home / ".oidentd.conf"
            path.write_text(USER_FILES[name])
            path.chmod(0o644)
            os.chown(path, uid, uid)
        home.chmod(0o755)
        os.chown(home, uid, uid)
        homes[name] = str(home)
    (workdir / "home").chmod(0o755)
    (workdir / "passwd").write_text("\n".join(passwd) + "\n")
    (workdir / "group").write_text("\n".join(group) + "\n")
    (workdir / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    for name in ("passwd", "group", "resolv.conf"):
        (workdir / name).chmod(0o644)
        subprocess.run(["mount", "--bind", str(workdir / name), f"/etc/{name}"], check=True)
    for cache in ("/run/nscd", "/var/run/nscd"):
        if os.path.isdir(cache):  # a running nscd would answer from the host's files
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", cache], check=False)
    return homes


def listeners() -> list[socket.socket]:
    """The servers the connections go to (never accepted: the kernel completes them)."""
    made: list[socket.socket] = []
    for host, port in sorted({(c.remote, c.fport) for c in CONNECTIONS}):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))
        server.listen(256)
        made.append(server)
    return made


def open_connections(uid: int, connections: list[Connection]) -> int:
    """A child that becomes ``uid`` and holds ``connections`` open; returns its pid."""

    def prepare() -> list[socket.socket]:
        if uid != 0:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        held = []
        for connection in connections:
            family = socket.AF_INET6 if ":" in connection.local else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((connection.local, connection.lport))
            sock.connect((connection.remote, connection.fport))
            held.append(sock)
        return held

    return hold_in_child(prepare)


def ask(querier: str, identd: str, line: bytes) -> str:
    """One query from ``querier`` to the identd at ``identd``: the answer line, or what
    happened instead."""
    family = socket.AF_INET6 if ":" in identd else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(QUERY_TIMEOUT)
        sock.bind((querier, 0))
        try:
            sock.connect((identd, IDENT_PORT))
            sock.sendall(line)
            data = b""
            while not data.endswith(b"\n") and len(data) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            return "<timeout>"
        except OSError as exc:
            return f"<{exc.strerror or exc}>"
    return data.decode("latin-1").strip() if data else "<closed without an answer>"


def queries() -> list[dict[str, Any]]:
    """Every connection asked by its server; one asked by another host (the other
    server); a connection nobody has; a port out of range."""
    asked: list[dict[str, Any]] = [
        {
            "connection": connection.label(),
            "owner": connection.owner,
            "querier": connection.remote,
            "identd": connection.local,
            "lport": connection.lport,
            "fport": connection.fport,
            "query": f"{connection.lport}, {connection.fport}",
        }
        for connection in CONNECTIONS
    ]
    first = CONNECTIONS[0]
    asked.append(
        {
            "connection": first.label() + " asked by another host",
            "owner": "(not the querier's)",
            "querier": "127.0.0.3" if first.remote != "127.0.0.3" else SERVER_A,
            "identd": first.local,
            "lport": first.lport,
            "fport": first.fport,
            "query": f"{first.lport}, {first.fport}",
        }
    )
    asked.append(
        {
            "connection": "no such connection",
            "owner": "(none)",
            "querier": SERVER_A,
            "identd": first.local,
            "lport": 42999,
            "fport": 6667,
            "query": "42999, 6667",
        }
    )
    asked.append(
        {
            "connection": "port 0 (out of range)",
            "owner": "(none)",
            "querier": SERVER_A,
            "identd": first.local,
            "lport": 0,
            "fport": 6667,
            "query": "0, 6667",
        }
    )
    return asked


def run_queries(asked: list[dict[str, Any]], at_once: int) -> list[list[str]]:
    """Every query twice (a random answer shows as two different ones), ``at_once`` at a
    time."""
    lines = [(q["querier"], q["identd"], q["query"].encode() + b"\r\n") for q in asked]
    with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
        answers = list(pool.map(lambda line: ask(*line), [*lines, *lines]))
    return [[answers[i], answers[i + len(lines)]] for i in range(len(lines))]


def one_case(case: Case, workdir: Path, asked: list[dict[str, Any]]) -> dict[str, Any]:
    # With -l, oidentd closes connections over the limit, counting query processes that
    # are still exiting: one query at a time there.
    at_once = 1 if "-l" in case.flags.split() else QUERIES_AT_ONCE
    conf = workdir / f"{case.name}.oidentd.conf"
    conf.write_text(case.system)
    conf.chmod(0o644)
    result: dict[str, Any] = {"name": case.name, "source": case.source, "flags": case.flags}
    try:
        conversion = convert(case.system, system_name=str(conf), flags=case.flags)
    except OidentdInputError as exc:
        result["error"] = f"import-oidentd refused the input: {exc}"
        return result
    result["status"] = conversion.status
    result["problems"] = [str(problem) for problem in conversion.problems]
    result["toml"] = conversion.toml
    toml = workdir / f"{case.name}.toml"
    toml.write_text(conversion.toml)
    toml.chmod(0o644)
    oidentd = subprocess.Popen(
        ["oidentd", "-i", "-S", "-C", str(conf), *case.flags.split()],
        stdout=open(workdir / "oidentd.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"},
    )
    try:
        wait_port("127.0.0.1", IDENT_PORT, oidentd)
        theirs = run_queries(asked, at_once)
    finally:
        stop(oidentd)
    ours_proc = subprocess.Popen(
        [sys.executable, "-m", "aioidentd", "serve", "--config", str(toml)],
        stdout=open(workdir / "ours.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", IDENT_PORT, ours_proc)
        ours = run_queries(asked, at_once)
    finally:
        stop(ours_proc)
    result["rows"] = [
        {**q, "oidentd": a, "ours": b} for q, a, b in zip(asked, theirs, ours, strict=True)
    ]
    return result


def main() -> dict[str, Any]:
    output: dict[str, Any] = {"cases": [], "log": ""}
    children: list[int] = []
    servers: list[socket.socket] = []
    with tempfile.TemporaryDirectory(prefix="oidentd-matrix-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        try:
            prepare_users(workdir)
            subprocess.run(["ip", "addr", "add", "127.0.0.10/8", "dev", "lo"], check=False)
            servers = listeners()
            owners: dict[int, list[Connection]] = {}
            for connection in CONNECTIONS:
                owners.setdefault(connection.uid, []).append(connection)
            for uid, connections in owners.items():
                children.append(open_connections(uid, connections))
            assert pwd.getpwuid(USERS["alice"]).pw_name == "alice"
            with contextlib.suppress(KeyError):
                pwd.getpwuid(NO_PASSWD_UID)
                raise RuntimeError(f"uid {NO_PASSWD_UID} has a passwd entry here")
            asked = queries()
            started = time.monotonic()
            only = os.environ.get("AIOIDENTD_MATRIX_CASES")
            chosen = [c for c in CASES if only is None or c.name in only.split(",")]
            for case in chosen:
                output["cases"].append(one_case(case, workdir, asked))
            output["seconds"] = round(time.monotonic() - started, 1)
        except Exception as exc:
            output["error"] = repr(exc)
        finally:
            for pid in children:
                end_child(pid)
            for server in servers:
                server.close()
            for name in ("oidentd", "ours"):
                path = workdir / f"{name}.log"
                if path.exists():
                    output["log"] += f"--- {name}\n" + path.read_text(errors="replace")[-4000:]
    return output


if __name__ == "__main__":
    if os.environ.get("AIOIDENTD_MATRIX_MOUNTS") != "private":
        argv = ["unshare", "-m", "--propagation", "private", sys.executable, *sys.argv]
        env = {**os.environ, "AIOIDENTD_MATRIX_MOUNTS": "private"}
        sys.exit(subprocess.run(argv, env=env).returncode)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    loopback_up()
    print(json.dumps(main()))
