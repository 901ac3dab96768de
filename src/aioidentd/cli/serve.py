"""``aioidentd serve``: the ident daemon.

By default every query is answered from the kernel's socket table through the policy
(a configuration file, or the built-in one: user names, root hidden). ``--default USER``
or ``--random`` answer every query the same way without any lookup, like ``oidentd -R``.

Without ``--config`` it listens on an unprivileged loopback port so that trying it needs
no root; the configuration file's defaults are those of a real identd (every interface,
port 113). Flags given on the command line win over the file, on every reload too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from aioidentd.cli.arguments import count, port, seconds
from aioidentd.config import ConfigError, ServerConfig
from aioidentd.daemon import Daemon, DaemonError
from aioidentd.protocol import safe_user_id

if TYPE_CHECKING:
    from aioidentd.cli.arguments import SubParsers

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1113

logger = logging.getLogger(__name__)


def _user_id(text: str) -> str:
    """``--default``: the rule of the configuration's fixed answer (no colon, no
    surrounding blanks, no control characters), so both refuse the same ids."""
    try:
        safe_user_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _host(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("empty address")
    return text


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the ident daemon",
        description="Run an RFC 1413 ident server. Answers come from the kernel's socket "
        "table through the policy of --config (or the built-in one), or, with --default "
        "or --random, are the same static answer for every query.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (docs/config.md)")
    where = parser.add_argument_group("listening (flags win over the configuration file)")
    where.add_argument(
        "--host",
        action="append",
        type=_host,
        metavar="ADDR",
        help=f"address to listen on; repeat for several; '*' for every interface "
        f"(default without --config: {DEFAULT_HOST})",
    )
    where.add_argument(
        "--port",
        type=port(0),
        help=f"TCP port; 113 is the ident port, 0 a free one (default without --config: "
        f"{DEFAULT_PORT})",
    )
    where.add_argument(
        "--multiple",
        action=argparse.BooleanOptionalAction,
        help="answer many queries per connection",
    )
    where.add_argument(
        "--idle-timeout",
        type=seconds,
        metavar="S",
        help="close a connection idle this long (default 60; RFC 1413 suggests 60-180)",
    )
    where.add_argument(
        "--response-timeout",
        type=seconds,
        metavar="S",
        help="deadline for an answer before the fallback goes out (default 1)",
    )
    where.add_argument(
        "--reply-style",
        choices=("compact", "spaced"),
        help="'compact' (6193,23:USERID:UNIX:x, default) or 'spaced' "
        "(6193 , 23 : USERID : UNIX : x)",
    )
    where.add_argument("--max-connections", type=count(1, 10**6), metavar="N")
    where.add_argument(
        "--workers",
        type=count(1, 256),
        metavar="N",
        help="processes sharing the port with SO_REUSEPORT (default 1)",
    )
    where.add_argument(
        "--uvloop",
        action=argparse.BooleanOptionalAction,
        help="run on uvloop (the 'uvloop' extra): about a third more connections/s",
    )
    where.add_argument(
        "--inetd",
        action="store_true",
        help="serve the one connection on standard input (inetd, systemd Accept=yes)",
    )
    who = parser.add_argument_group("privileges")
    who.add_argument("--user", metavar="USER", help="user to run as after binding (nobody)")
    who.add_argument("--group", metavar="GROUP", help="group to run as (the user's primary group)")
    who.add_argument(
        "--allow-root",
        action=argparse.BooleanOptionalAction,
        help="keep running as root if --user is root (refused otherwise)",
    )
    answer = parser.add_mutually_exclusive_group()
    answer.add_argument(
        "--default",
        type=_user_id,
        metavar="USER",
        help="static mode: answer USERID:UNIX:USER to every query (no lookup)",
    )
    answer.add_argument(
        "--random",
        action="store_true",
        help="static mode: answer a fresh random user id to every query (no lookup)",
    )
    logs = parser.add_argument_group("logging")
    logs.add_argument(
        "--log-queries",
        action=argparse.BooleanOptionalAction,
        help="log every query and its answer at INFO",
    )
    logs.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="default info",
    )
    parser.set_defaults(func=run)


#: ``[server]`` settings that have a flag of the same name; given flags override the file.
_SERVER_FLAGS = (
    "port",
    "multiple",
    "idle_timeout",
    "response_timeout",
    "reply_style",
    "max_connections",
    "workers",
    "user",
    "group",
    "allow_root",
    "log_queries",
    "uvloop",
)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        key: getattr(args, key) for key in _SERVER_FLAGS if getattr(args, key) is not None
    }
    if args.host:
        overrides["listen"] = None if "*" in args.host else tuple(args.host)
    return overrides


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.host and "*" in args.host and len(args.host) > 1:
        print("aioidentd serve: error: '*' (every interface) must be given alone", file=sys.stderr)
        return 2
    base = ServerConfig(listen=(DEFAULT_HOST,), port=DEFAULT_PORT)
    try:
        daemon = Daemon.load(
            args.config,
            _overrides(args),
            base=base,
            default=args.default,
            random=args.random,
            inetd=args.inetd,
        )
        return daemon.run()
    except ConfigError as exc:
        print(f"aioidentd: {exc}", file=sys.stderr)
        return 1
    except DaemonError as exc:
        print(f"aioidentd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
