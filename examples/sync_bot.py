#!/usr/bin/env python3
"""A synchronous (blocking) IRC client whose ident server runs in a background thread.

    python examples/sync_bot.py irc.example.net 6667 carol [--ident-port 113]

For programs without an event loop (the ``irc`` package's blocking client, scripts):
``aioidentd.Controller`` runs the ident server in its own thread, and
``controller.create_connection`` is ``socket.create_connection`` with the connection
claimed for ``carol`` before it is made. Leaving the ``with`` block stops the server and
its thread.
"""

from __future__ import annotations

import argparse
import sys

import aioidentd


def register(host: str, port: int, user: str, controller: aioidentd.Controller) -> str:
    """Connect as ``user``, register and quit; return the server's welcome line."""
    with controller.create_connection((host, port), user_id=user, timeout=30) as sock:
        stream = sock.makefile("rwb")
        stream.write(f"NICK {user}\r\nUSER bot 0 * :aioidentd sync example\r\n".encode())
        stream.flush()
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("PING"):
                stream.write(f"PONG{line[4:]}\r\n".encode())
                stream.flush()
            elif line.startswith("ERROR"):
                raise ConnectionError(f"{host} refused {user}: {line}")
            elif line.split(" ")[1:2] == ["001"]:
                stream.write(b"QUIT :bye\r\n")
                stream.flush()
                return line
        raise ConnectionError(f"{host} closed the connection before welcoming {user}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host", help="the IRC server")
    parser.add_argument("port", type=int, help="its port")
    parser.add_argument("user", help="the ident to answer for this connection")
    parser.add_argument("--ident-port", type=int, default=113, help="default 113")
    args = parser.parse_args(argv)
    with aioidentd.Controller(aioidentd.IdentServer(None, args.ident_port)) as controller:
        welcome = register(args.host, args.port, args.user, controller)
    print(f"{args.user}: {welcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
