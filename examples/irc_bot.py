#!/usr/bin/env python3
"""An asyncio IRC bot with two connections to one server, each under its own ident.

    python examples/irc_bot.py irc.example.net 6667 alice bob [--tls] [--ident-port 113]

Every name given opens one connection, made through ``IdentServer.open_connection``: the
connection is claimed for that name before its first packet leaves, so the IRC server's
ident query (sent the moment it accepts) is answered with that name, never mixed up with
the other connection's, with no handler to write. The user name sent in ``USER`` is
``bot``: a server that could not get our ident shows ``~bot`` in the welcome mask.

Port 113 needs root (or CAP_NET_BIND_SERVICE); see the README's "Port 113" section for
running on 1113 behind a firewall redirect (``--ident-port 1113``).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

import aioidentd


async def run_bot(
    ident: aioidentd.IdentServer,
    host: str,
    port: int,
    user: str,
    tls: bool,
    channel: str | None,
) -> str:
    """Connect as ``user``, register, optionally greet ``channel``, quit; return the
    server's welcome line."""
    context = ssl.create_default_context() if tls else None
    reader, writer = await ident.open_connection(host, port, user_id=user, ssl=context)
    try:
        writer.write(f"NICK {user}\r\nUSER bot 0 * :aioidentd example bot\r\n".encode())
        while True:
            raw = await asyncio.wait_for(reader.readline(), 30)
            if not raw:
                raise ConnectionError(f"{host} closed the connection before welcoming {user}")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("PING"):
                writer.write(f"PONG{line[4:]}\r\n".encode())
            elif line.startswith("ERROR"):
                raise ConnectionError(f"{host} refused {user}: {line}")
            elif line.split(" ")[1:2] == ["001"]:
                welcome = line
                break
        if channel:
            writer.write(f"JOIN {channel}\r\nPRIVMSG {channel} :hello from {user}\r\n".encode())
        writer.write(b"QUIT :bye\r\n")
        await writer.drain()
        return welcome
    finally:
        writer.close()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host", help="the IRC server")
    parser.add_argument("port", type=int, help="its port (6667, or 6697 with --tls)")
    parser.add_argument("users", nargs="+", help="one connection per name, claimed for it")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--channel", help="join this channel and say hello")
    parser.add_argument("--ident-port", type=int, default=113, help="default 113")
    args = parser.parse_args(argv)
    # Every interface: the IRC server asks on the address our connection came from.
    ident = aioidentd.IdentServer(None, args.ident_port)
    async with ident:
        welcomes = await asyncio.gather(
            *(
                run_bot(ident, args.host, args.port, user, args.tls, args.channel)
                for user in args.users
            )
        )
    for user, welcome in zip(args.users, welcomes, strict=True):
        print(f"{user}: {welcome}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
