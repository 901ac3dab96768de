"""Driver run as root inside a private network namespace: the host daemon answers
``answer = "pseudonym"``, and real IRC servers show, ban and forget the ids.

usage: python netns_pseudonym.py

In a fresh network namespace (``unshare -n``, as test_irc_pseudonyms.py runs it):

1. ``lo`` up, with the IRC servers' addresses: ngircd A on 10.1.0.1 and InspIRCd on
   10.3.0.1 (both in the named network ``alpha``, two ranges), ngircd B on 10.2.0.1 (in
   no named network: its /24 is its network);
2. ``aioidentd serve`` on port 113 (real kernel lookups, privileges dropped to nobody)
   with ``[default] answer = "pseudonym"``, the key made at its start;
3. connections made by real users (sockets created by children that became USER and
   OTHER, passed back to this process): USER registers on A three times, on InspIRCd
   once and on B once, OTHER on A once; each from a source address of its own (ngircd
   stalls quick reconnects from one address);
4. an operator registers on A, opens #room (the first to join is its operator) and bans
   ``*!<USER's id on A>@*``; USER then joins #room twice, reconnecting in between, and
   OTHER once;
5. ``aioidentd resolve`` of USER's id on A;
6. the daemon restarted under ``faketime`` 40 days on (the next month's epoch): USER
   registers on A again; ``resolve`` of both ids, with and without ``--at``.

Prints JSON: ``{"welcome": {case: welcome result}, "joins": {case: numeric}, "resolve":
{case: {"status", "stdout"}}, "times": {...}, "daemon_log", "log"}``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from identcases import loopback_up, stop, wait_port
from netns_irc import IRC_PORT, REGISTER_TIMEOUT, start_ircd, stop_ircd, welcome

USER, OTHER = "games", "man"
A, INSPIRCD, B = "10.1.0.1", "10.3.0.1", "10.2.0.1"
#: How far the second daemon's clock is moved: always into another month.
SHIFT_DAYS = 40
CONFIG = """\
[server]
port = 113
log_queries = true
user = "nobody"

[pseudonym]
key_file = "{state}/pseudonym.key"
rotate = "monthly"

[pseudonym.networks]
alpha = ["10.1.0.0/24", "10.3.0.0/24"]

[default]
answer = "pseudonym"
"""


def socket_as(user: str, source: str) -> socket.socket:
    """A TCP socket created by a child process that became ``user`` (so the kernel says
    ``user`` owns it), bound to ``source``, handed back over a Unix socket."""
    entry = pwd.getpwnam(user)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            parent.close()
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((source, 0))
            child.sendmsg(
                [b"s"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))]
            )
            status = 0
        finally:
            os._exit(status)
    child.close()
    try:
        _data, ancillary, _flags, _addr = parent.recvmsg(1, socket.CMSG_SPACE(4))
    finally:
        parent.close()
        os.waitpid(pid, 0)
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not fds:
        raise RuntimeError(f"no socket from the child that became {user}")
    return socket.socket(fileno=fds[0])


async def connect_as(
    user: str, source: str, server: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket_as(user, source)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (server, IRC_PORT))
    return await asyncio.open_connection(sock=sock)


async def register_as(user: str, source: str, server: str, nick: str) -> dict[str, Any]:
    reader, writer = await connect_as(user, source, server)
    result = await welcome(reader, writer, nick, f"{user}@{server}", time.monotonic())
    result["source"] = source
    return result


async def lines_until(reader: asyncio.StreamReader, pattern: bytes) -> list[bytes]:
    """Lines up to the first that matches ``pattern`` (PINGs answered elsewhere: the
    servers do not ping within these few seconds)."""
    seen: list[bytes] = []
    async with asyncio.timeout(REGISTER_TIMEOUT):
        while True:
            line = await reader.readline()
            if not line:
                raise RuntimeError(f"closed before {pattern!r}: {seen}")
            seen.append(line.rstrip(b"\r\n"))
            if re.search(pattern, line):
                return seen


async def client(
    user: str, source: str, server: str, nick: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """A registered client of ``server`` as ``user``; its ident as the server shows it."""
    reader, writer = await connect_as(user, source, server)
    writer.write(f"NICK {nick}\r\nUSER fallback 0 * :pseudonym test\r\n".encode())
    lines = await lines_until(reader, rb"^:\S+ 001 ")
    match = re.search(rb"(\S+)!(\S+)@(\S+)\s*$", lines[-1])
    if match is None:
        raise RuntimeError(f"no mask in {lines[-1]!r}")
    return reader, writer, match.group(2).decode()


async def join(user: str, source: str, nick: str) -> dict[str, Any]:
    """``user`` registers on A and joins #room: 474 is the ban, JOIN is in."""
    reader, writer, ident = await client(user, source, A, nick)
    try:
        writer.write(b"JOIN #room\r\n")
        lines = await lines_until(reader, rb"^:\S+ (474|JOIN) |^:\S+ JOIN ")
        last = lines[-1].decode(errors="replace")
        return {"ident": ident, "result": "banned" if " 474 " in last else "joined", "line": last}
    finally:
        writer.close()


def resolve(config: Path, pseudonym: str, at: str | None = None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "aioidentd", "resolve", pseudonym, "--from", A]
    argv += ["--config", str(config), *(["--at", at] if at else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return {"status": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def start_daemon(config: Path, log: Path, faketime: str | None = None) -> subprocess.Popen[bytes]:
    prefix: list[str] = []
    env = dict(os.environ)
    if faketime is not None:
        prefix = ["faketime", "-f", faketime]
        env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    with open(log, "ab") as out:
        daemon = subprocess.Popen(
            [*prefix, sys.executable, "-m", "aioidentd", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    wait_port("127.0.0.1", 113, daemon)
    return daemon


async def scenario(config: Path, log: Path, output: dict[str, Any]) -> None:
    welcome_of = output["welcome"]
    sources = (f"127.0.0.{n}" for n in range(10, 250))
    for number in range(3):
        welcome_of[f"a{number}"] = await register_as(USER, next(sources), A, f"u{number}")
    welcome_of["inspircd"] = await register_as(USER, next(sources), INSPIRCD, "ui")
    welcome_of["b"] = await register_as(USER, next(sources), B, "ub")
    welcome_of["other"] = await register_as(OTHER, next(sources), A, "oa")
    ident = welcome_of["a0"]["user"]
    # The operator: the first to join #room is its operator, and bans USER's id.
    op_reader, op_writer, _ = await client("root", next(sources), A, "op")
    op_writer.write(f"JOIN #room\r\nMODE #room +b *!{ident}@*\r\n".encode())
    output["ban"] = (await lines_until(op_reader, rb" MODE #room \+b "))[-1].decode()
    joins = output["joins"]
    joins["user"] = await join(USER, next(sources), "uj1")
    joins["user again"] = await join(USER, next(sources), "uj2")
    joins["other"] = await join(OTHER, next(sources), "oj")
    op_writer.close()
    output["resolve"]["now"] = resolve(config, ident)
    output["resolve"]["cut"] = resolve(config, ident[:8])
    output["resolve"]["other network"] = {
        **resolve(config, welcome_of["b"]["user"]),
        "note": "asked as if from A: B's id names no one there",
    }


async def after_rotation(config: Path, output: dict[str, Any]) -> None:
    welcome_of = output["welcome"]
    welcome_of["next month"] = await register_as(USER, "127.0.0.251", A, "un")
    old, new = welcome_of["a0"]["user"], welcome_of["next month"]["user"]
    later = datetime.fromtimestamp(time.time() + SHIFT_DAYS * 86400, UTC).isoformat()
    output["times"] = {"later": later}
    output["resolve"]["old id, now"] = resolve(config, old)
    output["resolve"]["new id, later"] = resolve(config, new, later)
    output["resolve"]["new id, now"] = resolve(config, new)
    output["resolve"]["old id, later"] = resolve(config, old, later)


def main() -> dict[str, Any]:
    output: dict[str, Any] = {"welcome": {}, "joins": {}, "resolve": {}, "log": ""}
    for address in (A, INSPIRCD, B):
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    with tempfile.TemporaryDirectory(prefix="pseudonym-") as tmp:
        workdir = Path(tmp)
        config = workdir / "aioidentd.toml"
        config.write_text(CONFIG.format(state=workdir / "state"))
        log = workdir / "daemon.log"
        servers: list[tuple[subprocess.Popen[bytes] | None, Path]] = []
        daemon: subprocess.Popen[bytes] | None = None
        try:
            for kind, address in (("ngircd", A), ("inspircd", INSPIRCD), ("ngircd", B)):
                directory = workdir / f"{kind}-{address}"
                directory.mkdir()
                proc = start_ircd(kind, directory, (address,))
                servers.append((proc, directory))
                wait_port(address, IRC_PORT, proc)
            daemon = start_daemon(config, log)
            asyncio.run(scenario(config, log, output))
            stop(daemon)
            daemon = start_daemon(config, log, faketime=f"+{SHIFT_DAYS}d")
            asyncio.run(after_rotation(config, output))
        except Exception as exc:
            output["error"] = repr(exc)
        finally:
            stop(daemon)
            output["daemon_log"] = log.read_text(errors="replace")[-8000:] if log.exists() else ""
            for server, directory in servers:
                part: dict[str, Any] = {}
                stop_ircd(server, directory, part)
                output["log"] += f"--- {directory.name}\n{part.get('log', '')[-2000:]}\n"
            with contextlib.suppress(OSError):
                key = workdir / "state" / "pseudonym.key"
                output["key"] = {"mode": oct(key.stat().st_mode & 0o777), "uid": key.stat().st_uid}
    return output


if __name__ == "__main__":
    loopback_up()
    print(json.dumps(main()))
