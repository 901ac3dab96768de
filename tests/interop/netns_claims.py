"""Driver run inside a private network namespace: a real IRC server asks about claimed
connections.

usage: python netns_claims.py ngircd|inspircd ROUNDS

In a fresh network namespace (``unshare -n``, as test_irc_servers.py runs it):

1. ``lo`` up, with extra IPv6 addresses ``fd00::<round>:<n>`` (IPv4 has all of 127/8);
2. our IdentServer on every address, port 113, with **no handler** and the fallback
   ``USERID:UNIX:anon``: every answer other than ``anon`` comes from a claim;
3. the IRC server on 127.0.0.1 and ::1, port 16667, with ident lookups on;
4. ROUNDS rounds, one after the other; in each, all at once, each from its own source
   address (ngircd stalls quick reconnects from one address):

   * ``v4-<i>`` (4 of them): ``IdentServer.open_connection`` over IPv4, each claimed for
     its own id ``r<round>v4u<i>``;
   * ``v6-<i>`` (2): the same over IPv6;
   * ``late``: a plain ``asyncio.open_connection`` inside ``server.connecting(...)``,
     claimed for ``r<round>late`` only once the IRC server's query is already waiting
     (the bounded wait);
   * ``unclaimed``: a plain connection nobody claims: the fallback ``anon``.

5. link-local IPv6 (no IRC server listens there; a small asker does what they do): on a
   veth interface ``ll0`` with ``fe80::a`` and ``fe80::b``, an ``open_connection`` from
   ``fe80::b%ll0`` to a listener on ``fe80::a%ll0`` that asks at once, and explicit claims
   written with the interface name and without a scope;
6. the README's port 113 recipe: an nftables rule redirects port 113 to 1113 (in the
   ``output`` hook, the IRC server being on this host), where a second IdentServer holds
   the claims of two more ``open_connection`` connections (IPv4 and IPv6) and sees every
   query arrive at the loopback address instead of the address it was sent to.

The IRC server asks the moment it accepts, so every round is a race between its query
and our claim; open_connection must win it every time.

Prints JSON: ``{"server", "rounds": [{case: {"user", "expected", "seconds", "error",
"held"}}], "linklocal": {case: answer}, "live_claims", "log"}``; ``user`` is the user
part of the ``001`` welcome mask.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from identcases import loopback_up
from netns_irc import IRC_PORT, start_ircd, stop_ircd, wait_listening, welcome

import aioidentd
from aioidentd.server import IdentServer

FALLBACK = "anon"
V4_CONNECTIONS = 4
V6_CONNECTIONS = 2
#: How long the "late" case waits for the IRC server's query to be held before claiming.
HOLD_TIMEOUT = 5.0


def has_ipv6() -> bool:
    done = subprocess.run(["ip", "-6", "addr", "show", "dev", "lo"], capture_output=True)
    return b"::1" in done.stdout


def add_ipv6(address: str) -> None:
    subprocess.run(
        ["ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"],
        check=True,
        capture_output=True,
    )


async def claimed(
    ident: IdentServer, host: str, source: str, user: str, nick: str
) -> dict[str, Any]:
    started = time.monotonic()
    reader, writer = await ident.open_connection(
        host, IRC_PORT, user_id=user, local_addr=(source, 0)
    )
    return await welcome(reader, writer, nick, user, started)


async def late(ident: IdentServer, source: str, user: str, nick: str) -> dict[str, Any]:
    """Connect without a claim, then claim once the query waits for it."""
    started = time.monotonic()
    waiters = ident._claims._waiters
    async with ident.connecting("127.0.0.1"):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", IRC_PORT, local_addr=(source, 0)
        )
        port = writer.get_extra_info("sockname")[1]
        held = False
        deadline = time.monotonic() + HOLD_TIMEOUT
        while time.monotonic() < deadline:
            if any(k[1] == port for ws in waiters.values() for w in ws for k in w.keys):
                held = True
                break
            await asyncio.sleep(0.002)
        ident.claim(writer, user)
    result = await welcome(reader, writer, nick, user, started)
    result["held"] = held
    return result


async def unclaimed(source: str, nick: str) -> dict[str, Any]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", IRC_PORT, local_addr=(source, 0))
    return await welcome(reader, writer, nick, "unclaimed", started)


async def one_round(ident: IdentServer, number: int, ipv6: bool) -> dict[str, Any]:
    jobs: dict[str, tuple[str, Any]] = {}
    base = 16 * number + 16  # 127.0.<round>.<n>: fresh addresses every round
    for i in range(V4_CONNECTIONS):
        user = f"r{number}v4u{i}"
        jobs[f"v4-{i}"] = (
            user,
            claimed(
                ident, "127.0.0.1", f"127.0.{base // 256}.{base % 256 + i}", user, f"a{number}x{i}"
            ),
        )
    if ipv6:
        for i in range(V6_CONNECTIONS):
            user = f"r{number}v6u{i}"
            source = f"fd00::{number + 1:x}:{i + 1:x}"
            add_ipv6(source)
            jobs[f"v6-{i}"] = (user, claimed(ident, "::1", source, user, f"b{number}x{i}"))
    user = f"r{number}late"
    jobs["late"] = (user, late(ident, f"127.0.{base // 256}.{base % 256 + 8}", user, f"c{number}"))
    jobs["unclaimed"] = (
        FALLBACK,
        unclaimed(f"127.0.{base // 256}.{base % 256 + 9}", f"d{number}"),
    )
    results = await asyncio.gather(*(job for _, job in jobs.values()), return_exceptions=True)
    out: dict[str, Any] = {}
    for (case, (expected, _)), res in zip(jobs.items(), results, strict=True):
        if isinstance(res, BaseException):
            res = {"user": None, "error": repr(res)}
        res["expected"] = expected
        out[case] = res
    return out


async def linklocal(ident: IdentServer) -> dict[str, str]:
    """Claims on link-local connections: the interface is part of the address."""
    for argv in (
        ["ip", "link", "add", "ll0", "type", "veth", "peer", "name", "ll1"],
        ["ip", "link", "set", "ll0", "up"],
        ["ip", "link", "set", "ll1", "up"],
        ["ip", "-6", "addr", "add", "fe80::a/64", "dev", "ll0", "nodad"],
        ["ip", "-6", "addr", "add", "fe80::b/64", "dev", "ll0", "nodad"],
    ):
        subprocess.run(argv, check=True, capture_output=True)
    answers: dict[str, str] = {}
    asked: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            asked.set_result(str(await aioidentd.query_connection(writer, port=113, timeout=5)))
        except Exception as exc:
            asked.set_result(repr(exc))
        finally:
            writer.close()

    listener = await asyncio.start_server(accepted, "fe80::a%ll0", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        _, writer = await ident.open_connection(
            "fe80::a%ll0", port, user_id="linklocal", local_addr=("fe80::b%ll0", 0)
        )
        answers["open_connection"] = await asyncio.wait_for(asked, 10)
        writer.close()
    finally:
        listener.close()

    async def ask(ours: int, theirs: int) -> str:
        reply = await aioidentd.query(
            "fe80::b%ll0", ours, theirs, port=113, local_addr=("fe80::a%ll0", 0), timeout=5
        )
        return str(reply)

    with ident.claim((("fe80::b%ll0", 40001), ("fe80::a%ll0", 6667)), "named"):
        answers["explicit_named_scope"] = await ask(40001, 6667)
    with ident.claim((("fe80::b", 40002), ("fe80::a", 6667)), "unscoped"):
        answers["explicit_no_scope"] = await ask(40002, 6667)
    answers["unclaimed"] = await ask(40003, 6667)
    return answers


REDIRECT_RULES = """
table inet aioidentd_redirect {
    chain output {
        type nat hook output priority -100;
        tcp dport 113 redirect to :1113
    }
}
"""


async def redirected(ipv6: bool) -> dict[str, Any]:
    """Claims behind ``tcp dport 113 redirect to :1113``: the rewritten local address."""
    nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if nft is None:
        return {"error": "nft (nftables) not installed"}
    subprocess.run([nft, "-f", "-"], input=REDIRECT_RULES.encode(), check=True)
    out: dict[str, Any] = {}
    try:
        async with IdentServer(None, 1113, default=FALLBACK) as ident:
            jobs = {
                "v4": claimed(ident, "127.0.0.1", "127.0.9.1", "redir4", "e0"),
                "unclaimed": unclaimed("127.0.9.2", "e1"),
            }
            if ipv6:
                add_ipv6("fd00::99:1")
                jobs["v6"] = claimed(ident, "::1", "fd00::99:1", "redir6", "e2")
            results = await asyncio.gather(*jobs.values(), return_exceptions=True)
            for case, res in zip(jobs, results, strict=True):
                out[case] = res if isinstance(res, dict) else {"user": None, "error": repr(res)}
    finally:
        subprocess.run([nft, "delete", "table", "inet", "aioidentd_redirect"], check=True)
    return out


async def main(kind: str, rounds: int) -> dict[str, Any]:
    ipv6 = has_ipv6()
    listen = ("127.0.0.1", "::1") if ipv6 else ("127.0.0.1",)
    output: dict[str, Any] = {"server": kind, "ipv6": ipv6, "rounds": [], "log": ""}
    with tempfile.TemporaryDirectory(prefix=f"claims-{kind}-") as tmp:
        workdir = Path(tmp)
        proc: subprocess.Popen[bytes] | None = None
        try:
            async with IdentServer(None, 113, default=FALLBACK) as ident:
                proc = start_ircd(kind, workdir, listen)
                await wait_listening(proc)
                for number in range(rounds):
                    output["rounds"].append(await one_round(ident, number, ipv6))
                if ipv6:
                    output["linklocal"] = await linklocal(ident)
                output["redirect"] = await redirected(ipv6)
                # Every connection is closed by now: no claim may still answer.
                output["live_claims"] = len(ident.claims)
        except Exception as exc:
            output["error"] = repr(exc)
        finally:
            stop_ircd(proc, workdir, output)
    return output


if __name__ == "__main__":
    loopback_up()
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2])))))
