"""``aioidentd serve``: run an ident server from the command line.

Without handlers every query gets the fallback answer (``--default``, ``--random``, else
``HIDDEN-USER``), at once. The default address is an unprivileged loopback port so that
trying it needs no root; ``--port 113`` makes it a real identd.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from aioidentd.protocol import UserIdReply
from aioidentd.server import IdentServer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1113

logger = logging.getLogger(__name__)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _user_id(text: str) -> str:
    try:
        UserIdReply.from_text(0, 0, "UNIX", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run an ident server",
        description="Run an RFC 1413 ident server answering every query with the fallback.",
    )
    parser.add_argument(
        "--host",
        action="append",
        metavar="ADDR",
        help=f"address to listen on; repeat for several; '*' for every interface "
        f"(default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port (default {DEFAULT_PORT}; 113 is the real ident port, 0 ephemeral)",
    )
    parser.add_argument(
        "--multiple", action="store_true", help="answer many queries per connection"
    )
    parser.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="close a connection idle this long (default 60; RFC 1413 suggests 60-180)",
    )
    parser.add_argument(
        "--response-timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="deadline for an answer before the fallback goes out (default 10)",
    )
    answer = parser.add_mutually_exclusive_group()
    answer.add_argument("--default", type=_user_id, metavar="USER", help="answer USERID:UNIX:USER")
    answer.add_argument(
        "--random", action="store_true", help="answer a fresh random user id per query"
    )
    parser.add_argument(
        "--reply-style",
        choices=("compact", "spaced"),
        default="compact",
        help="'compact' (6193,23:USERID:UNIX:x) or 'spaced' (6193 , 23 : USERID : UNIX : x)",
    )
    parser.add_argument(
        "--max-connections", type=_count, default=1024, metavar="N", help="default 1024"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="default info",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    hosts: list[str] | None = args.host or [DEFAULT_HOST]
    if hosts is not None and "*" in hosts:
        hosts = None
    server = IdentServer(
        hosts,
        args.port,
        multiple=args.multiple,
        idle_timeout=args.idle_timeout,
        response_timeout=args.response_timeout,
        default=args.default,
        random=args.random,
        reply_style=args.reply_style,
        max_connections=args.max_connections,
        name="aioidentd",
    )
    try:
        return asyncio.run(_serve(server))
    except KeyboardInterrupt:
        return 130


async def _serve(server: IdentServer) -> int:
    try:
        await server.start()
    except OSError as exc:
        print(
            f"aioidentd: cannot listen on port {server.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    where = ", ".join(f"{host}:{port}" for host, port in server.addresses)
    logger.info("serving ident on %s", where)
    await stop.wait()
    logger.info("shutting down")
    await server.close()
    return 0
