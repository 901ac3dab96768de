"""Driver run as root in a private network namespace: oidentd_masq.conf through a NAT
gateway, Debian's oidentd ``-m`` against our daemon with what ``import-oidentd`` made
of the same file and flags.

usage: python netns_masq_matrix.py

The machines are those of ``netns_nat.py`` (outer: this namespace; a masquerading
gateway; an inner host), with more addresses on the inner host, one per line of
:data:`MASQ` and one that no line names. From each inner address a connection goes out
to a server here, which reads the inner address from the connection's first line and
the port the gateway gave it from ``accept()``; then the gateway's identd is asked
about each, from the server's address. For each of :data:`FLAGS`: oidentd (its NAT
file mounted over ``/etc/oidentd_masq.conf`` in a mount namespace of its own, as it
reads no other path), then ``aioidentd serve`` with the converted configuration.
oidentd runs with ``-u root -g root`` (not given to the converter): it looks connections
up in conntrack in each query's process, which needs CAP_NET_ADMIN, so as its default
user it finds none (aioidentd keeps a small root helper for that and drops the rest).

Prints JSON ``{"cases": [{"flags", "status", "problems", "toml", "rows"}], "log"}``;
a row is ``{"inner", "query", "oidentd": [answer], "ours": [answer]}`` (``inner`` is
``"none"`` for the query about a port no connection has).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from identcases import end_child, hold_in_child, loopback_up, stop
from netns_nat import CLONE_NEWNET, GW_OUT4, OUTER4, Namespace, topology, wait_port

from aioidentd.oidentd import convert

SERVER_PORT = 16680
#: Inner addresses besides netns_nat's 10.0.0.2; 10.0.1.5, on a network of its own, is
#: one no line names.
EXTRA_INNER = ("10.0.0.3", "10.0.0.70", "10.0.0.130", "10.0.0.200", "10.0.1.5")
MASQ = """\
# host[/mask]           reply     system type
10.0.0.2                inner2    UNIX
10.0.0.128/25           upper     UNIX-BSD
# oidentd 2.5 compares the next line with the host already masked by the line above
10.0.0.3                three     UNIX
10.0.0.0/255.255.255.192  low     OTHER
"""
#: -m: the file only; -mf: forward to the inner host's identd first (none runs there,
#: so the file answers after the forward fails).
FLAGS = ("-m", "-mf")
FORWARDED = ("10.0.0.2", "10.0.0.3", "10.0.0.130")


def inner_connections(inner: Namespace, sources: list[str]) -> int:
    """A child in the inner namespace holding one connection from each source to the
    server, each announcing its source in a first line; returns its pid."""
    netns = os.open(f"/proc/{inner.pid}/ns/net", os.O_RDONLY)

    def prepare() -> list[socket.socket]:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(netns, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        held = []
        for source in sources:
            sock = socket.create_connection((OUTER4, SERVER_PORT), 10, (source, 0))
            sock.sendall(source.encode() + b"\n")
            held.append(sock)
        return held

    try:
        return hold_in_child(prepare)
    finally:
        os.close(netns)


def serve_and_ask(
    argv: list[str], log: Path, gateway: Namespace, queries: list[tuple[str, str]]
) -> list[list[str]]:
    """Start an identd on the gateway, ask every query, stop it."""
    started = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        wait_port(gateway, GW_OUT4, 113, proc)
        listening = time.monotonic()
        answers = [[ask(line)] for _, line in queries]  # static answers: once is enough
        print(
            f"{argv[-1][-60:]}: up in {listening - started:.1f} s, asked in "
            f"{time.monotonic() - listening:.1f} s",
            file=sys.stderr,
        )
        return answers
    finally:
        stop(proc)


def ask(line: str) -> str:
    with socket.create_connection((GW_OUT4, 113), 5, (OUTER4, 0)) as sock:
        sock.sendall(line.encode() + b"\r\n")
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            return "<timeout>"
    return data.decode("latin-1").strip() if data else "<closed without an answer>"


def main() -> dict[str, Any]:
    output: dict[str, Any] = {"cases": [], "log": ""}
    gateway = inner = None
    child: int | None = None
    with tempfile.TemporaryDirectory(prefix="masq-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        try:
            gateway, inner = Namespace(), Namespace()
            topology(gateway, inner)
            for address in EXTRA_INNER:
                inner.run("ip", "addr", "add", f"{address}/24", "dev", "i0")
            gateway.run("ip", "route", "add", "10.0.1.0/24", "dev", "g1")
            sources = ["10.0.0.2", *EXTRA_INNER]
            server = socket.create_server((OUTER4, SERVER_PORT), backlog=16)
            child = inner_connections(inner, sources)
            translated: dict[str, int] = {}
            accepted: list[socket.socket] = []  # kept open: oidentd looks at ESTABLISHED only
            server.settimeout(10)
            for _ in sources:
                conn, peer = server.accept()
                conn.settimeout(10)
                accepted.append(conn)
                line = b""
                while not line.endswith(b"\n"):
                    line += conn.recv(64)
                translated[line.decode().strip()] = peer[1]
            masq = workdir / "oidentd_masq.conf"
            masq.write_text(MASQ)
            masq.chmod(0o644)
            empty = workdir / "oidentd.conf"
            empty.write_text("")
            resolv = workdir / "resolv.conf"
            resolv.write_text("nameserver 127.0.0.1\n")
            oidentd = shutil.which("oidentd") or "/usr/sbin/oidentd"
            asked = [(source, f"{translated[source]}, {SERVER_PORT}") for source in sources]
            # A port the gateway translated for nobody: no conntrack entry, NO-USER (a
            # catch-all forward must not turn that into another answer).
            unused = next(p for p in range(65000, 65100) if p not in translated.values())
            nobody = ("none", f"{unused}, {SERVER_PORT}")
            for flags in FLAGS:
                # With -f both forward to the inner host first (none listens there), and
                # oidentd takes seconds for each failed forward: three hosts (a host
                # line, the masking defect, a masked line) show the order. 10.0.1.5's
                # forward gets no answer at all (no route back for the gateway's SYN).
                queries = [q for q in asked if q[0] in FORWARDED] if "f" in flags else asked
                queries = [*queries, nobody]
                conversion = convert(
                    "", system_name=str(empty), masq=MASQ, masq_name=str(masq), flags=flags
                )
                toml = workdir / "gateway.toml"
                toml.write_text(conversion.toml)
                script = (
                    f"mount --bind {resolv} /etc/resolv.conf && "
                    f"mount --bind {masq} /etc/oidentd_masq.conf && "
                    f"exec {oidentd} -i -S -u root -g root -C {empty} {flags}"
                )
                unshared = ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
                theirs = serve_and_ask(
                    gateway.argv(*unshared), workdir / "oidentd.log", gateway, queries
                )
                serve = [sys.executable, "-m", "aioidentd", "serve", "--config", str(toml)]
                ours = serve_and_ask(gateway.argv(*serve), workdir / "ours.log", gateway, queries)
                output["cases"].append(
                    {
                        "flags": flags,
                        "status": conversion.status,
                        "problems": [str(problem) for problem in conversion.problems],
                        "toml": conversion.toml,
                        "rows": [
                            {"inner": source, "query": line, "oidentd": a, "ours": b}
                            for (source, line), a, b in zip(queries, theirs, ours, strict=True)
                        ],
                    }
                )
            for conn in accepted:
                conn.close()
            server.close()
        except Exception as exc:
            output["error"] = repr(exc)
        finally:
            if child is not None:
                end_child(child)
            for name in ("oidentd", "ours"):
                path = workdir / f"{name}.log"
                if path.exists():
                    output["log"] += f"--- {name}\n" + path.read_text(errors="replace")[-4000:]
            for namespace in (gateway, inner):
                if namespace is not None:
                    with contextlib.suppress(OSError):
                        namespace.close()
    return output


if __name__ == "__main__":
    loopback_up()
    print(json.dumps(main()))
