#!/usr/bin/env python3
"""A pydle bot, each connection under its own ident, though pydle takes no socket.

    python examples/irc_pydle.py irc.example.net 6667 alice bob [--tls] [--ident-port 113]

pydle opens its connections itself (``asyncio.open_connection`` inside
``pydle.connection.Connection``) and takes neither a socket nor a factory, so the
connection cannot be claimed before it exists. What pydle does expose is the connection it
made: ``client.connection.writer``, the stream writer, there as soon as ``connect()``
returns. So the client below overrides ``connect()`` (pydle's public method, which its
reconnects call too) to

1. declare the connection with ``IdentServer.connecting(host)`` before pydle connects:
   the IRC server's ident query, which arrives as soon as it accepts and so usually before
   the claim, waits for it (up to ``claim_wait``, 0.5 s) instead of being answered;
2. claim ``self.connection.writer`` the moment ``connect()`` returns. The claim ends when
   pydle closes that writer (quit, or a dropped connection before a reconnect).

Queries from other hosts never wait. The user name sent in ``USER`` is ``bot``: a server
that could not get our ident shows ``~bot`` in the welcome mask.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

try:
    import pydle  # type: ignore[import-untyped]  # no type information: Any here
except ImportError:
    sys.exit("irc_pydle: this example needs the pydle package (pip install pydle)")

import aioidentd


class IdentClient(pydle.Client):  # type: ignore[misc]  # subclassing Any
    """A pydle client whose every connection, reconnections included, is claimed for
    ``ident_user``."""

    def __init__(self, ident: aioidentd.IdentServer, ident_user: str, nickname: str) -> None:
        super().__init__(nickname, username="bot", realname="aioidentd pydle example")
        self.ident = ident
        self.ident_user = ident_user
        self.welcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def connect(
        self, hostname: str | None = None, port: int | None = None, **kwargs: Any
    ) -> None:
        # A reconnect names no host: pydle reuses the one it connected to.
        host = hostname or self.connection.hostname
        async with self.ident.connecting(host):
            await super().connect(hostname, port, **kwargs)
            self.ident.claim(self.connection.writer, self.ident_user)

    async def on_raw_001(self, message: Any) -> None:
        await super().on_raw_001(message)
        if not self.welcome.done():
            self.welcome.set_result(message.params[-1])


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host", help="the IRC server")
    parser.add_argument("port", type=int, help="its port (6667, or 6697 with --tls)")
    parser.add_argument("users", nargs="+", help="one connection per name, claimed for it")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ident-port", type=int, default=113, help="default 113")
    args = parser.parse_args(argv)
    # Every interface: the IRC server asks on the address our connection came from.
    async with aioidentd.IdentServer(None, args.ident_port) as ident:
        clients = [IdentClient(ident, user, nickname=user) for user in args.users]
        try:
            async with asyncio.timeout(30):
                for client in clients:
                    await client.connect(args.host, args.port, tls=args.tls, tls_verify=args.tls)
                welcomes = [await client.welcome for client in clients]
        except (OSError, TimeoutError, ValueError) as exc:  # ValueError: not a valid ident
            print(f"irc_pydle: {args.host} port {args.port}: {exc or 'timed out'}", file=sys.stderr)
            return 1
        finally:
            for client in clients:
                if client.connected:
                    await client.quit("bye")
    for user, welcome in zip(args.users, welcomes, strict=True):
        print(f"{user}: {welcome}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
