"""Driver run as root inside a private network namespace: the host daemon forwards to an
application's own identd, and ngircd shows what it was told.

usage: python netns_forward.py

In a fresh network namespace (``unshare -n``, as test_forward_netns.py runs it):

1. ``lo`` up; ngircd on 127.0.0.2:16667 with ident lookups on;
2. ``aioidentd serve`` on port 113 of every address (real kernel lookups; it drops to
   nobody), configured so that APP_USER's connections are forwarded with a PROXY v2 header
   to 127.0.0.1:APP_PORT, and ROGUE_USER's (a misconfiguration) to the same port;
3. APP_USER's application, a forked child that has become that unprivileged user: an
   embedded ``IdentServer`` on 127.0.0.1:APP_PORT trusting 127.0.0.1 for PROXY headers,
   with two ``open_connection`` connections to ngircd claimed for their own ids and one
   plain connection it does not claim (its handler answers NO-USER for it);
4. while the application runs, OTHER_USER (no forward configured), ROGUE_USER (whose
   forward points at APP_USER's identd) and FORWARDED_USER (whose identd is down while
   IMPOSTOR_USER listens on its port with TCP_DEFER_ACCEPT) connect to ngircd from their
   own children.

Prints JSON: ``{"app": {case: welcome result}, "others": {user: welcome result},
"app_asked": [[server_port, client_port, querier]], "impostor_asked": [query line],
"ports": {case: local port},
"daemon_log", "log"}``; ``user`` in a welcome result is the user part of the ``001`` mask.
"""

from __future__ import annotations

import asyncio

# Everything the unprivileged children run is imported here, while root can read the
# interpreter's files (a Python under /root is not readable by other users).
import concurrent.futures.thread  # noqa: F401 (getaddrinfo in run_in_executor)
import contextlib
import encodings.idna  # noqa: F401
import json
import os
import pwd
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from identcases import loopback_up, stop, wait_port
from netns_irc import IRC_PORT, start_ircd, stop_ircd, welcome

from aioidentd import HostClaimError, HostClaims
from aioidentd.server import IdentRequest, IdentServer

APP_USER, OTHER_USER, ROGUE_USER, CLAIMING_USER = "games", "man", "lp", "news"
#: FORWARDED_USER's identd is down; IMPOSTOR_USER listens on its port with TCP_DEFER_ACCEPT.
FORWARDED_USER, IMPOSTOR_USER = "uucp", "proxy"
APP_PORT = 10113
IMPOSTOR_PORT = 10114
IRC_HOST = "127.0.0.2"
CONFIG = """\
[server]
port = 113
log_queries = true
# Long enough for a claim made under load (the query waits for it); forwards stay short.
response_timeout = 3
forward_timeout = 0.5
claims_socket = "{claims}"

[user.{app}]
answer = "forward"
forward = "127.0.0.1:{port}"
forward_proxy = "v2"

# A forward that points at another user's identd: never believed.
[user.{rogue}]
answer = "forward"
forward = "127.0.0.1:{port}"

# Its identd is down, and another user listens on the port with TCP_DEFER_ACCEPT (the
# kernel shows the daemon's connection with no owner until the query is sent): never believed.
[user.{forwarded}]
answer = "forward"
forward = "127.0.0.1:{impostor_port}"

# May choose answers: claims over the claims socket.
[user.{claiming}]
allow_user_reply = true
"""


def as_user(name: str, work: Callable[[int, int], None]) -> tuple[int, int, int]:
    """Fork a child that becomes ``name`` and runs ``work(report_fd, go_fd)``; returns
    ``(pid, report read end, go write end)``."""
    entry = pwd.getpwnam(name)
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.close(report_r)
            os.close(go_w)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            work(report_w, go_r)
            status = 0
        except BaseException as exc:
            os.write(report_w, json.dumps({"error": repr(exc)}).encode() + b"\n")
        finally:
            os._exit(status)
    os.close(report_w)
    os.close(go_r)
    return pid, report_r, go_w


def read_report(fd: int, timeout: float = 60.0) -> dict[str, Any]:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError("no report from a child in time")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    report: dict[str, Any] = json.loads(data.splitlines()[0]) if data else {"error": "no report"}
    return report


def application(report: int, go: int) -> None:
    """APP_USER's program: its own identd, two claimed connections and one it does not
    claim; then it waits (``go``) while the other users connect, and reports the queries
    its identd was asked that no claim answered."""

    async def main() -> None:
        asked: list[list[Any]] = []

        def unknown(request: IdentRequest) -> None:
            asked.append([request.server_port, request.client_port, request.peer[0]])
            request.error("NO-USER")

        async with IdentServer(
            "127.0.0.1", APP_PORT, trusted_proxies=["127.0.0.1"], handlers=[unknown]
        ) as ident:
            ports: dict[str, int] = {}

            async def claimed(case: str, source: str, user: str) -> dict[str, Any]:
                started = time.monotonic()
                reader, writer = await ident.open_connection(
                    IRC_HOST, IRC_PORT, user_id=user, local_addr=(source, 0)
                )
                ports[case] = writer.get_extra_info("sockname")[1]
                return await welcome(reader, writer, case, user, started)

            async def unclaimed(source: str) -> dict[str, Any]:
                started = time.monotonic()
                reader, writer = await asyncio.open_connection(
                    IRC_HOST, IRC_PORT, local_addr=(source, 0)
                )
                ports["unclaimed"] = writer.get_extra_info("sockname")[1]
                return await welcome(reader, writer, "unclaimed", "unclaimed", started)

            one, two, three = await asyncio.gather(
                claimed("appone", "127.0.0.5", "appone"),
                claimed("apptwo", "127.0.0.6", "apptwo"),
                unclaimed("127.0.0.7"),
            )
            results = {"appone": one, "apptwo": two, "unclaimed": three}
            os.write(report, json.dumps({"app": results, "ports": ports}).encode() + b"\n")
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            loop.add_reader(go, done.set_result, None)
            await done
            loop.remove_reader(go)
        os.write(report, json.dumps({"asked": asked}).encode() + b"\n")

    asyncio.run(main())


def impostor(report: int, go: int) -> None:
    """IMPOSTOR_USER's program: a listener with TCP_DEFER_ACCEPT on FORWARDED_USER's
    forward port that answers every query as "impostor", until ``go``; reports the
    queries it was sent."""
    asked: list[str] = []
    with socket.socket() as listener:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
        listener.bind(("127.0.0.1", IMPOSTOR_PORT))
        listener.listen(8)
        os.write(report, b'{"listening": true}\n')
        while True:
            ready, _, _ = select.select([listener.fileno(), go], [], [])
            if go in ready:
                break
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    line = conn.recv(1000).split(b"\n")[0].strip()
                    if line:
                        asked.append(line.decode(errors="replace"))
                        conn.sendall(line + b":USERID:UNIX:impostor\r\n")
    os.write(report, json.dumps({"asked": asked}).encode() + b"\n")


def plain_user(source: str) -> Callable[[int, int], None]:
    def work(report: int, go: int) -> None:
        async def main() -> dict[str, Any]:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection(
                IRC_HOST, IRC_PORT, local_addr=(source, 0)
            )
            port = writer.get_extra_info("sockname")[1]
            result = await welcome(reader, writer, f"u{port}", "plain", started)
            result["port"] = port
            return result

        os.write(report, json.dumps(asyncio.run(main())).encode() + b"\n")

    return work


def claiming(claims_path: str, root_port: int) -> Callable[[int, int], None]:
    """CLAIMING_USER's program: no identd; two connections claimed on the host daemon
    (one through HostClaims.open_connection, one claimed after a plain connect, inside
    connecting()), and an attempt to claim root's open connection from 127.0.0.12."""

    def work(report: int, go: int) -> None:
        async def main() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with HostClaims(claims_path) as claims:
                started = time.monotonic()
                reader, writer = await claims.open_connection(
                    IRC_HOST, IRC_PORT, user_id="hostclaimed", local_addr=("127.0.0.10", 0)
                )
                out["open_connection"] = await welcome(reader, writer, "hc1", "hc", started)
                started = time.monotonic()
                async with claims.connecting(IRC_HOST):
                    reader, writer = await asyncio.open_connection(
                        IRC_HOST, IRC_PORT, local_addr=("127.0.0.11", 0)
                    )
                    await asyncio.to_thread(claims.claim, writer, "claimedlate")
                out["claim_after_connect"] = await welcome(reader, writer, "hc2", "hc", started)
                stolen = (("127.0.0.12", root_port), (IRC_HOST, IRC_PORT))
                try:
                    await asyncio.to_thread(claims.claim, stolen, "stolen")
                    out["steal"] = "accepted"
                except HostClaimError as exc:
                    out["steal"] = str(exc)
            return out

        os.write(report, json.dumps(asyncio.run(main())).encode() + b"\n")

    return work


def main() -> dict[str, Any]:
    output: dict[str, Any] = {"log": "", "daemon_log": ""}
    with tempfile.TemporaryDirectory(prefix="forward-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # the users' children reach the claims socket in it
        config = workdir / "aioidentd.toml"
        claims_path = str(workdir / "claims.sock")
        config.write_text(
            CONFIG.format(
                app=APP_USER,
                rogue=ROGUE_USER,
                forwarded=FORWARDED_USER,
                impostor_port=IMPOSTOR_PORT,
                claiming=CLAIMING_USER,
                port=APP_PORT,
                claims=claims_path,
            )
        )
        ircd: subprocess.Popen[bytes] | None = None
        daemon: subprocess.Popen[bytes] | None = None
        children: list[int] = []
        daemon_log = open(workdir / "daemon.log", "wb")  # noqa: SIM115 - closed below
        try:
            ircd = start_ircd("ngircd", workdir, (IRC_HOST,))
            wait_port(IRC_HOST, IRC_PORT, ircd)
            daemon = subprocess.Popen(
                [sys.executable, "-m", "aioidentd", "serve", "--config", str(config)],
                stdout=daemon_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            wait_port("127.0.0.1", 113, daemon)
            app_pid, app_report, app_go = as_user(APP_USER, application)
            children.append(app_pid)
            first = read_report(app_report)
            if "error" in first:
                raise RuntimeError(f"application: {first['error']}")
            output.update(first)
            wait_port("127.0.0.1", APP_PORT)
            imp_pid, imp_report, imp_go = as_user(IMPOSTOR_USER, impostor)
            children.append(imp_pid)
            listening = read_report(imp_report)
            if "error" in listening:
                raise RuntimeError(f"impostor: {listening['error']}")
            output["others"] = {}
            for user, source in (
                (OTHER_USER, "127.0.0.8"),
                (ROGUE_USER, "127.0.0.9"),
                (FORWARDED_USER, "127.0.0.13"),
            ):
                pid, report, _go = as_user(user, plain_user(source))
                children.append(pid)
                output["others"][user] = read_report(report)
            os.write(imp_go, b"go")
            output["impostor_asked"] = read_report(imp_report).get("asked")
            roots = socket.create_connection((IRC_HOST, IRC_PORT), source_address=("127.0.0.12", 0))
            pid, report, _go = as_user(CLAIMING_USER, claiming(claims_path, roots.getsockname()[1]))
            children.append(pid)
            output["claims"] = read_report(report)
            roots.close()
            os.write(app_go, b"go")
            output["app_asked"] = read_report(app_report).get("asked")
        except Exception as exc:
            output["error"] = repr(exc)
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            stop(daemon)
            daemon_log.close()
            output["daemon_log"] = (workdir / "daemon.log").read_text(errors="replace")[-6000:]
            stop_ircd(ircd, workdir, output)
    return output


if __name__ == "__main__":
    loopback_up()
    print(json.dumps(main()))
