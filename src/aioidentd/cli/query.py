"""``aioidentd query``: ask a host's identd about one connection, from the shell.

Meant for diagnosing "why does the IRC server say ~user" by hand and for scripts, so the
exit status separates the three outcomes a script branches on (an id, an ERROR answer, no
answer at all), and a failed exchange is one line on stderr rather than a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from aioidentd.cli._arguments import host, port, seconds
from aioidentd.client import IDENT_PORT
from aioidentd.client import query as ident_query
from aioidentd.errors import IdentError
from aioidentd.protocol import Reply, UserIdReply

if TYPE_CHECKING:
    from aioidentd.cli._arguments import SubParsers

#: Exit statuses: an id was returned; the server answered ERROR; there was no answer.
EXIT_USERID, EXIT_ERROR, EXIT_FAILED = 0, 1, 2


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "query",
        help="ask a host's identd who owns a connection",
        description=(
            "Ask the identd on HOST who owns the TCP connection between SERVER_PORT on "
            "HOST and CLIENT_PORT on this machine (RFC 1413 order). The identd only "
            "answers about connections between itself and the address the query comes "
            "from. Exit status: 0 USERID, 1 ERROR, 2 no answer (reason on stderr)."
        ),
    )
    parser.add_argument(
        "host", type=host, metavar="HOST", help="host whose identd to ask (name or address)"
    )
    parser.add_argument(
        "server_port", metavar="SERVER_PORT", type=port(), help="the connection's port on HOST"
    )
    parser.add_argument(
        "client_port", metavar="CLIENT_PORT", type=port(), help="the connection's port here"
    )
    parser.add_argument(
        "--port",
        type=port(),
        default=IDENT_PORT,
        metavar="P",
        help=f"the identd's port (default {IDENT_PORT})",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=5.0,
        metavar="S",
        help="seconds for the whole exchange (default 5)",
    )
    parser.add_argument("--json", action="store_true", help="print the answer as a JSON object")
    parser.set_defaults(func=run)


def as_json(reply: Reply) -> dict[str, Any]:
    """The answer as a JSON-ready dict.

    ``user_id`` is ``null`` when the octets do not decode by the charset; ``user_id_hex``
    is always there so scripts never lose what the server sent.
    """
    if isinstance(reply, UserIdReply):
        user = reply.user_id
        return {
            "type": "USERID",
            "server_port": reply.server_port,
            "client_port": reply.client_port,
            "opsys": reply.opsys,
            "charset": reply.charset,
            "user_id": user if isinstance(user, str) else None,
            "user_id_hex": reply.raw.hex(),
        }
    return {
        "type": "ERROR",
        "server_port": reply.server_port,
        "client_port": reply.client_port,
        "error": reply.error,
    }


def as_text(reply: Reply) -> str:
    """``USERID UNIX alice`` / ``ERROR NO-USER``.

    An id that decodes but holds control characters (an escape sequence, a tab) is shown
    in hex like an undecodable one: a remote server must not be able to drive the
    terminal of whoever runs the command.
    """
    if isinstance(reply, UserIdReply):
        user = reply.user_id
        if isinstance(user, str) and not user.isprintable():
            opsys = reply.opsys if reply.charset is None else f"{reply.opsys},{reply.charset}"
            return f"USERID {opsys} 0x{reply.raw.hex()}"
    return str(reply)


def run(args: argparse.Namespace) -> int:
    try:
        reply = asyncio.run(
            ident_query(
                args.host,
                args.server_port,
                args.client_port,
                port=args.port,
                timeout=args.timeout,
            )
        )
    except IdentError as exc:
        print(f"aioidentd query: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(as_json(reply), ensure_ascii=False))
    else:
        print(as_text(reply))
    return EXIT_USERID if isinstance(reply, UserIdReply) else EXIT_ERROR
