#!/usr/bin/env python3
"""A bouncer-like relay: each local user reaches the IRC server under their own ident.

    python examples/bouncer.py irc.example.net 6667 --listen 127.0.0.1:6700 alice bob

A local IRC client connects to ``--listen`` and sends ``PASS <name>`` first (a real
bouncer would check a password here). The bouncer opens the upstream connection for that
user with ``IdentServer.open_connection(..., user_id=name)`` and relays bytes both ways.
Every upstream connection is claimed before it is made, so the IRC server sees ``alice``
for alice's connections and ``bob`` for bob's, however many there are at once; a claim
ends with its connection, so a long-running bouncer keeps none for closed ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import aioidentd


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class Bouncer:
    def __init__(self, ident: aioidentd.IdentServer, host: str, port: int, users: set[str]):
        self.ident = ident
        self.host = host
        self.port = port
        self.users = users

    async def login(self, reader: asyncio.StreamReader) -> str:
        """The user named by the client's first line, ``PASS <name>``."""
        first = await asyncio.wait_for(reader.readline(), 30)
        command, _, name = first.decode("utf-8", "replace").strip().partition(" ")
        if command.upper() != "PASS" or name not in self.users:
            raise ValueError("send PASS <user> first, with a known user")
        return name

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            name = await self.login(reader)
            up_reader, up_writer = await self.ident.open_connection(
                self.host, self.port, user_id=name
            )
        except (OSError, TimeoutError, ValueError) as exc:
            writer.write(f"ERROR :{exc}\r\n".encode())
            writer.close()
            return
        print(f"{name}: connected to {self.host} port {self.port}", flush=True)
        await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))
        print(f"{name}: disconnected", flush=True)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host", help="the IRC server")
    parser.add_argument("port", type=int, help="its port")
    parser.add_argument("users", nargs="+", help="the users allowed to connect")
    parser.add_argument("--listen", default="127.0.0.1:6700", help="HOST:PORT for clients")
    parser.add_argument("--ident-port", type=int, default=113, help="default 113")
    args = parser.parse_args(argv)
    listen_host, _, listen_port = args.listen.rpartition(":")
    ident = aioidentd.IdentServer(None, args.ident_port)
    bouncer = Bouncer(ident, args.host, args.port, set(args.users))
    async with ident:
        server = await asyncio.start_server(bouncer.client, listen_host, int(listen_port))
        print(f"listening on {args.listen} for {', '.join(args.users)}", flush=True)
        async with server:
            await server.serve_forever()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
