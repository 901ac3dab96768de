#!/usr/bin/env python3
"""The ``irc`` package (jaraco's), asyncio or blocking reactor, each connection under its own ident.

    python examples/irc_jaraco.py irc.example.net 6667 alice bob [--blocking] [--tls]

Both of the package's reactors make their connections through a ``connect_factory``
argument of ``connect()``, and that is where the claim goes: the factories below open the
connection already claimed for the name the application chose, so the IRC server's ident
query, sent the moment it accepts, finds the claim whatever the timing.

* ``irc.client_aio`` (``AioReactor``): the factory is a coroutine function taking the
  protocol and ``(host, port)``; ``IdentServer.connect_socket`` gives a connected,
  claimed socket, handed to ``loop.create_connection(sock=...)``.
* ``irc.client`` (``Reactor``, ``--blocking``): the factory takes ``(host, port)`` and
  returns a connected socket; ``Controller.create_connection`` is that, claimed, with the
  ident server in a thread of its own.

A claim ends when its connection closes, reconnections included: ``connect()`` calls the
factory again, which claims the new connection. The user name sent in ``USER`` is
``bot``: a server that could not get our ident shows ``~bot`` in the welcome mask.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

# The irc package ships no type information: its objects are Any here.
try:
    import irc.client  # type: ignore[import-untyped]
    import irc.client_aio  # type: ignore[import-untyped]
except ImportError:
    sys.exit("irc_jaraco: this example needs the irc package (pip install irc)")

import aioidentd

#: What the asyncio reactor awaits from its factory: (transport, protocol).
AioFactory = Callable[[Any, tuple[str, int]], Awaitable[tuple[asyncio.BaseTransport, Any]]]


def claimed_aio_factory(
    ident: aioidentd.IdentServer, user_id: str, tls: ssl.SSLContext | None = None
) -> AioFactory:
    """A ``connect_factory`` for ``AioConnection.connect``: each connection it opens is
    claimed for ``user_id`` before its first packet leaves."""

    async def connect(protocol: Any, address: tuple[str, int]) -> tuple[asyncio.BaseTransport, Any]:
        host, port = address
        sock = await ident.connect_socket(host, port, user_id=user_id)
        try:
            return await asyncio.get_running_loop().create_connection(
                lambda: protocol, sock=sock, ssl=tls, server_hostname=host if tls else None
            )
        except BaseException:
            sock.close()  # ends the claim too
            raise

    return connect


def claimed_factory(
    controller: aioidentd.Controller, user_id: str, tls: ssl.SSLContext | None = None
) -> Callable[[tuple[str, int]], socket.socket]:
    """A ``connect_factory`` for ``ServerConnection.connect`` (the blocking reactor)."""

    def connect(address: tuple[str, int]) -> socket.socket:
        sock = controller.create_connection(address, user_id=user_id, timeout=30)
        return tls.wrap_socket(sock, server_hostname=address[0]) if tls else sock

    return connect


async def run_aio(host: str, port: int, users: list[str], ident_port: int, tls: bool) -> int:
    context = ssl.create_default_context() if tls else None
    loop = asyncio.get_running_loop()
    welcomes: dict[Any, asyncio.Future[str]] = {}

    def on_welcome(connection: Any, event: Any) -> None:
        welcomes[connection].set_result(event.arguments[0])

    # Every interface: the IRC server asks on the address our connection came from.
    async with aioidentd.IdentServer(None, ident_port) as ident:
        reactor = irc.client_aio.AioReactor(loop=loop)
        reactor.add_global_handler("welcome", on_welcome)
        connections = []
        for user in users:
            connection = reactor.server()
            welcomes[connection] = loop.create_future()
            await connection.connect(
                host,
                port,
                user,
                username="bot",
                connect_factory=claimed_aio_factory(ident, user, context),
            )
            connections.append(connection)
        async with asyncio.timeout(30):
            texts = [await welcomes[connection] for connection in connections]
        for connection in connections:
            connection.disconnect("bye")
    for user, text in zip(users, texts, strict=True):
        print(f"{user}: {text}")
    return 0


def run_blocking(host: str, port: int, users: list[str], ident_port: int, tls: bool) -> int:
    context = ssl.create_default_context() if tls else None
    welcomes: dict[Any, str] = {}

    def on_welcome(connection: Any, event: Any) -> None:
        welcomes[connection] = event.arguments[0]

    with aioidentd.Controller(aioidentd.IdentServer(None, ident_port)) as controller:
        reactor = irc.client.Reactor()
        reactor.add_global_handler("welcome", on_welcome)
        connections = [
            reactor.server().connect(
                host,
                port,
                user,
                username="bot",
                connect_factory=claimed_factory(controller, user, context),
            )
            for user in users
        ]
        deadline = time.monotonic() + 30
        while len(welcomes) < len(connections) and time.monotonic() < deadline:
            reactor.process_once(timeout=0.2)
        for connection in connections:
            connection.disconnect("bye")
    missing = [user for user, c in zip(users, connections, strict=True) if c not in welcomes]
    if missing:
        print(f"{host} did not welcome {', '.join(missing)} within 30 s", file=sys.stderr)
        return 1
    for user, connection in zip(users, connections, strict=True):
        print(f"{user}: {welcomes[connection]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host", help="the IRC server")
    parser.add_argument("port", type=int, help="its port (6667, or 6697 with --tls)")
    parser.add_argument("users", nargs="+", help="one connection per name, claimed for it")
    parser.add_argument("--blocking", action="store_true", help="irc.client, not irc.client_aio")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ident-port", type=int, default=113, help="default 113")
    args = parser.parse_args(argv)
    try:
        if args.blocking:
            return run_blocking(args.host, args.port, args.users, args.ident_port, args.tls)
        return asyncio.run(run_aio(args.host, args.port, args.users, args.ident_port, args.tls))
    except (OSError, TimeoutError, ValueError, irc.client.ServerConnectionError) as exc:
        # ValueError: a name that cannot be an ident (a colon, a space, a control character)
        print(f"irc_jaraco: {exc or 'no welcome within 30 s'}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
