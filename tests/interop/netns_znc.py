"""Driver run as root in a private network namespace: ZNC's identfile module writes the
user's oidentd file, and ngircd, asking our daemon, sees the ident ZNC chose.

usage: python netns_znc.py

1. It re-runs itself in a private mount namespace, where a fresh directory is mounted
   over ZNC_USER's home (so the test writes nothing in the real one): ZNC, running as
   that user, writes ``~/.oidentd.conf`` there, and the daemon finds it through the
   passwd home directory as it would on a real host;
2. ngircd on 127.0.0.2:16667, ident lookups on;
3. ``aioidentd serve`` on port 113 with ``allow_user_reply`` for ZNC_USER;
4. ZNC 1.8 (Debian's), as ZNC_USER, with the global ``identfile`` module (its default
   file and format) and one network, ngircd: it writes the file, connects, and removes
   the file once registered;
5. an observer client asks ngircd ``WHOIS`` about ZNC's nick: the user field is the
   ident ngircd accepted (``~...`` when the lookup failed).

Prints JSON ``{"whois_user", "daemon_log", "znc_log", "log"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from identcases import loopback_up, stop, wait_port
from netns_irc import IRC_PORT, start_ircd, stop_ircd

ZNC_USER = "games"
IRC_HOST = "127.0.0.2"
IDENT = "zncident"
ZNC_CONF = """\
Version = 1.8.2
LoadModule = identfile
<Listener listener0>
\tAllowIRC = true
\tAllowWeb = false
\tIPv4 = true
\tIPv6 = false
\tPort = {listen}
\tSSL = false
</Listener>
<User zncuser>
\tAdmin = true
\tNick = zncnick
\tAltNick = zncnick_
\tIdent = {ident}
\tRealName = znc test
\t<Pass password>
\t\tMethod = plain
\t\tHash = unused
\t\tSalt = unused
\t</Pass>
\t<Network interop>
\t\tServer = {server} {port}
\t</Network>
</User>
"""
CONFIG = """\
[server]
log_queries = true
response_timeout = 3

[user.{user}]
allow_user_reply = true
"""


async def whois(nick: str, timeout: float = 30.0) -> str | None:
    """The user field of ``nick`` as ngircd shows it, once ``nick`` is on the server."""
    reader, writer = await asyncio.open_connection(IRC_HOST, IRC_PORT)
    try:
        writer.write(b"NICK observer\r\nUSER observer 0 * :observer\r\n")
        deadline = time.monotonic() + timeout
        registered = False
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(reader.readline(), deadline - time.monotonic())
            if not line:
                return None
            fields = line.decode(errors="replace").split()
            if fields and fields[0] == "PING":
                writer.write(b"PONG " + line.split(b" ", 1)[1])
            elif len(fields) > 1 and fields[1] == "001":
                registered = True
                writer.write(f"WHOIS {nick}\r\n".encode())
            elif registered and len(fields) > 4 and fields[1] == "311":
                return fields[4]
            elif registered and len(fields) > 1 and fields[1] == "401":
                await asyncio.sleep(0.2)  # not connected yet: ask again
                writer.write(f"WHOIS {nick}\r\n".encode())
        return None
    finally:
        writer.close()


def main() -> dict[str, Any]:
    output: dict[str, Any] = {"whois_user": None, "log": "", "daemon_log": "", "znc_log": ""}
    entry = pwd.getpwnam(ZNC_USER)
    with tempfile.TemporaryDirectory(prefix="znc-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        home = workdir / "home"
        (home / "znc" / "configs").mkdir(parents=True)
        subprocess.run(["mount", "--bind", str(home), entry.pw_dir], check=True)
        ircd = daemon = znc = None
        try:
            listen = 16670
            (home / "znc" / "configs" / "znc.conf").write_text(
                ZNC_CONF.format(listen=listen, ident=IDENT, server=IRC_HOST, port=IRC_PORT)
            )
            for path in (home, *home.rglob("*")):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            home.chmod(0o755)
            config = workdir / "aioidentd.toml"
            config.write_text(CONFIG.format(user=ZNC_USER))
            ircd = start_ircd("ngircd", workdir, (IRC_HOST,))
            wait_port(IRC_HOST, IRC_PORT, ircd)
            daemon = subprocess.Popen(
                [sys.executable, "-m", "aioidentd", "serve", "--config", str(config)],
                stdout=open(workdir / "daemon.log", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            wait_port("127.0.0.1", 113, daemon)
            znc_binary = shutil.which("znc") or "/usr/bin/znc"
            znc = subprocess.Popen(
                [znc_binary, "--foreground", "--datadir", f"{entry.pw_dir}/znc"],
                user=entry.pw_uid,
                group=entry.pw_gid,
                extra_groups=[],
                env={"HOME": entry.pw_dir, "PATH": "/usr/bin:/bin"},
                cwd=entry.pw_dir,
                stdout=open(workdir / "znc.log", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            output["whois_user"] = asyncio.run(whois("zncnick"))
        except Exception as exc:
            output["error"] = repr(exc)
        finally:
            for proc in (znc, daemon):
                stop(proc)
            stop_ircd(ircd, workdir, output)
            for name in ("daemon", "znc"):
                path = workdir / f"{name}.log"
                if path.exists():
                    output[f"{name}_log"] = path.read_text(errors="replace")[-4000:]
            subprocess.run(["umount", entry.pw_dir], check=False)
    return output


if __name__ == "__main__":
    if os.environ.get("AIOIDENTD_ZNC_MOUNTS") != "private":
        # A mount namespace of our own: the bind mount over the user's home is ours alone.
        argv = ["unshare", "-m", "--propagation", "private", sys.executable, *sys.argv]
        env = {**os.environ, "AIOIDENTD_ZNC_MOUNTS": "private"}
        sys.exit(subprocess.run(argv, env=env).returncode)
    loopback_up()
    print(json.dumps(main()))
