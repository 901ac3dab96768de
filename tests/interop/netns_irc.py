"""Driver run inside a private network namespace: a real IRC server asks our ident server.

usage: python netns_irc.py ngircd|inspircd CASE[:STYLE]...

Both IRC servers always ask port 113 on the connecting address, so this script expects a
fresh network namespace (``unshare -n``; test_irc_servers.py runs it that way). In it:

1. ``ip link set lo up``;
2. our IdentServer on 127.0.0.<n+2>:113 for every case n (the case connects from there),
   one server per reply style (``compact`` unless the case says ``:spaced``), answering
   with its fallback (``HIDDEN-USER``) after RESPONSE_TIMEOUT;
3. the IRC server on 127.0.0.1:16667 with ident lookups on (see the configs below);
4. per case, all at once, a raw-socket IRC client from its own source address (ngircd
   stalls quick reconnects from one address for ~20 s) sends NICK/USER with the user name
   ``fallback`` and reads until ``001``;
5. the handler answers each lookup as its case says (``identcases``), picked by the queried
   port (the IRC client's source port).

It prints JSON: ``{"server", "cases": {case: {"user", "notices", "lookups", "seconds",
"error"}}, "log"}`` where ``user`` is the user part of the ``nick!user@host`` mask in the
``001`` welcome (``~fallback`` when the ident lookup failed).
Every wait is bounded; the IRC server is killed in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from identcases import loopback_up, make_handler

from aioidentd.server import IdentServer

IRC_PORT = 16667
#: Longer than either server's ident timeout (ngircd 10 s, InspIRCd 5 s as configured).
REGISTER_TIMEOUT = 15.0
#: Our fallback deadline: after identcases.DELAY, well before the IRC servers give up.
RESPONSE_TIMEOUT = 2.0
START_TIMEOUT = 10.0
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")

NGIRCD_CONF = """\
[Global]
    Name = irc.interop.test
    Info = aioidentd interop
    Listen = {listen}
    Ports = {port}
    MotdPhrase = aioidentd interop
    PidFile = {dir}/ngircd.pid
[Limits]
    MaxConnectionsIP = 0
[Options]
    # Debian's 26.x only runs ident lookups together with DNS lookups.
    DNS = yes
    Ident = yes
    PAM = no
    NoticeBeforeRegistration = yes
"""

INSPIRCD_CONF = """\
<server name="irc.interop.test" description="aioidentd interop" network="Interop">
<admin name="interop" nick="interop" email="interop@interop.test">
{binds}
<connect name="main" allow="*" useident="yes" resolvehostnames="no" localmax="1000"
         globalmax="1000" maxconnwarn="off" limit="1000">
<module name="ident">
<ident timeout="5">
<limits maxuser="10">
<pid file="{dir}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="debug" target="{dir}/inspircd.log">
<performance clonesonconnect="no">
<security announceinvites="dynamic">
"""


def find(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))
    if path is None:
        raise SystemExit(f"{name} not found")
    return path


def start_ircd(
    kind: str, workdir: Path, listen: tuple[str, ...] = ("127.0.0.1",)
) -> subprocess.Popen[bytes]:
    """Start ``kind`` on port IRC_PORT of every address in ``listen``."""
    if kind == "ngircd":
        conf = workdir / "ngircd.conf"
        conf.write_text(NGIRCD_CONF.format(port=IRC_PORT, dir=workdir, listen=",".join(listen)))
        argv = [find("ngircd"), "--nodaemon", "--config", str(conf)]
    elif kind == "inspircd":
        conf = workdir / "inspircd.conf"
        binds = "\n".join(
            f'<bind address="{address}" port="{IRC_PORT}" type="clients">' for address in listen
        )
        conf.write_text(INSPIRCD_CONF.format(port=IRC_PORT, dir=workdir, binds=binds))
        argv = [find("inspircd"), "--nofork", "--runasroot", f"--config={conf}"]
    else:
        raise SystemExit(f"unknown IRC server {kind!r}")
    log = open(workdir / "ircd.out", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir
    )


def stop_ircd(proc: subprocess.Popen[bytes] | None, workdir: Path, output: dict[str, Any]) -> None:
    """Stop the IRC server (SIGTERM; SIGKILL after 3 s) and keep the end of its log in
    ``output["log"]`` for the test's failure message."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out = workdir / "ircd.out"
    if out.exists():
        output["log"] = out.read_text(errors="replace")[-4000:]


async def wait_listening(proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"IRC server exited with {proc.returncode}")
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", IRC_PORT)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError("IRC server did not listen in time")


_NOTICE = re.compile(rb"^(:\S+ )?NOTICE ")
_WELCOME = re.compile(rb"^:\S+ 001 \S+ :.*?(\S+)!(\S+)@(\S+)\s*$")


async def register(
    spec: str, nick: str, source: str, ports: dict[tuple[str, int], str]
) -> dict[str, Any]:
    """Connect from ``source``, register, and return what the server said."""
    started = time.monotonic()
    # Bind first and record the source port before connecting: the IRC server's ident
    # lookup can reach our handler before open_connection() returns here.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    # Keyed by address and port: clients bound to different source addresses may be
    # given the same ephemeral port.
    ports[(source, sock.getsockname()[1])] = spec
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", IRC_PORT))
    reader, writer = await asyncio.open_connection(sock=sock)
    result = await welcome(reader, writer, nick, spec, started)
    result["source"] = source
    return result


async def welcome(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    nick: str,
    label: str,
    started: float,
) -> dict[str, Any]:
    """Register as ``nick`` (user name ``fallback``) on a connected stream; return
    ``{"user", "notices", "error", "seconds"}`` (seconds since ``started``) and close."""
    result: dict[str, Any] = {"user": None, "notices": [], "error": None}
    try:
        writer.write(f"NICK {nick}\r\nUSER fallback 0 * :interop {label}\r\n".encode())
        async with asyncio.timeout(REGISTER_TIMEOUT):
            while True:
                line = await reader.readline()
                if not line:
                    result["error"] = "connection closed before 001"
                    break
                line = line.rstrip(b"\r\n")
                if line.startswith(b"PING"):
                    writer.write(b"PONG" + line[4:] + b"\r\n")
                    continue
                text = line.decode("utf-8", "replace")
                if _NOTICE.match(line) and "ident" in text.lower():
                    result["notices"].append(text.split(" :", 1)[-1])
                match = _WELCOME.match(line)
                if match is not None:
                    result["user"] = match.group(2).decode("utf-8", "replace")
                    break
                if line.startswith(b"ERROR"):
                    result["error"] = text
                    break
    except TimeoutError:
        result["error"] = f"no 001 within {REGISTER_TIMEOUT} s"
    finally:
        result["seconds"] = round(time.monotonic() - started, 2)
        writer.close()
    return result


async def main(kind: str, specs: list[str]) -> dict[str, Any]:
    if len(set(specs)) != len(specs):
        raise SystemExit(f"duplicate case in {specs}")
    case_of = {spec: spec.partition(":")[0] for spec in specs}
    styles = {spec: spec.partition(":")[2] or "compact" for spec in specs}
    sources = {spec: f"127.0.0.{i + 2}" for i, spec in enumerate(specs)}
    ports: dict[tuple[str, int], str] = {}  # IRC client's (source, port) -> spec
    seen: list[dict[str, Any]] = []
    handler = make_handler(lambda r: case_of.get(ports.get((r.local[0], r.server_port), "")), seen)
    idents = [
        IdentServer(
            sorted(sources[spec] for spec in specs if styles[spec] == style),
            113,
            reply_style=style,  # type: ignore[arg-type]
            response_timeout=RESPONSE_TIMEOUT,
            handlers=[handler],
        )
        for style in sorted(set(styles.values()))
    ]
    output: dict[str, Any] = {"server": kind, "cases": {}, "log": ""}
    with tempfile.TemporaryDirectory(prefix=f"interop-{kind}-") as tmp:
        workdir = Path(tmp)
        proc: subprocess.Popen[bytes] | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                for ident in idents:
                    await stack.enter_async_context(ident)
                proc = start_ircd(kind, workdir)
                await wait_listening(proc)
                results = await asyncio.gather(
                    *(
                        register(spec, f"c{i}", sources[spec], ports)
                        for i, spec in enumerate(specs)
                    ),
                    return_exceptions=True,
                )
            end_of = {spec: end for end, spec in ports.items()}
            for spec, res in zip(specs, results, strict=True):
                if isinstance(res, BaseException):
                    res = {"user": None, "notices": [], "error": repr(res)}
                res["style"] = styles[spec]
                res["lookups"] = [
                    s for s in seen if (s["local"][0], s["server_port"]) == end_of.get(spec)
                ]
                output["cases"][spec] = res
        except Exception as exc:
            output["error"] = repr(exc)
        finally:
            stop_ircd(proc, workdir, output)
    return output


if __name__ == "__main__":
    loopback_up()
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2:]))))
