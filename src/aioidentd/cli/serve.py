"""``aioidentd serve``: the ident daemon.

By default every query is answered from the kernel's socket table through the policy
(a configuration file, or the built-in one: user names, root hidden). ``--default USER``
or ``--random`` answer every query the same way without any lookup, like ``oidentd -R``.

Without ``--config`` it reads ``/etc/aioidentd.toml`` when that exists (the host's
identd); with no file at all it listens on an unprivileged loopback port so that trying
it needs no root. The configuration file's defaults are those of a real identd (every
interface, port 113). Flags given on the command line win over the file, on every reload too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from aioidentd.cli._arguments import add_config_options, config_path, host
from aioidentd.daemon import Daemon
from aioidentd.daemon.logs import LOG_FORMATS, configure_logging
from aioidentd.errors import ConfigError, DaemonError
from aioidentd.policy import DaemonSettings
from aioidentd.policy.settings import TOML_TYPES, Key, keys_of
from aioidentd.protocol import safe_user_id

if TYPE_CHECKING:
    from aioidentd.cli._arguments import SubParsers

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


#: oidentd's options (2.5) that have an equivalent here, for the error that meets them.
OIDENTD_FLAGS = {
    "-a": "--host",
    "--address": "--host",
    "-C": "--config",
    "-d": "--log-level debug",
    "--debug": "--log-level debug",
    "-g": "--group",
    "-I": "--inetd",
    "--stdio": "--inetd",
    "-l": "--max-connections",
    "--limit": "--max-connections",
    "-p": "--port",
    "-q": "--log-level warning",
    "--quiet": "--log-level warning",
    "-R": "--default",
    "--reply-all": "--default",
    "-t": "--idle-timeout",
    "--timeout": "--idle-timeout",
    "-u": "--user",
}


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        oidentd_flags=OIDENTD_FLAGS,
        help="run the ident daemon",
        description="Run an RFC 1413 ident server. Answers come from the kernel's socket "
        "table through the policy of --config (or the built-in one), or, with --default "
        "or --random, are the same static answer for every query.",
    )
    add_config_options(parser)
    where = parser.add_argument_group("listening (flags win over the configuration file)")
    where.add_argument(
        "--host",
        action="append",
        type=host,
        metavar="ADDR",
        help=f"address to listen on; repeat for several; '*' for every interface "
        f"(default with no configuration file: {DEFAULT_HOST})",
    )
    groups = {where.title: where}
    for name, _, spec in keys_of(DaemonSettings):
        if spec.flag is None:
            continue  # 'listen' is --host, above
        group = groups.get(spec.group)
        if group is None:
            group = groups[spec.group] = parser.add_argument_group(spec.group)
        # With no file, serve's own defaults apply where the file's would (see run()).
        note = f" (default with no configuration file: {DEFAULT_PORT})" if name == "port" else ""
        _add_flag(group, name, spec, note)
    where.add_argument(
        "--inetd",
        action="store_true",
        help="serve the one connection on standard input (inetd, systemd Accept=yes)",
    )
    static = parser.add_mutually_exclusive_group()
    static.add_argument(
        "--default",
        type=_user_id,
        metavar="USER",
        help="static mode: answer USERID:UNIX:USER to every query (no lookup)",
    )
    static.add_argument(
        "--random",
        action="store_true",
        help="static mode: answer a fresh random user id to every query (no lookup)",
    )
    logs = groups.get("logging") or parser.add_argument_group("logging")
    logs.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the least severe messages to log (default info)",
    )
    logs.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="plain",
        help="'plain' lines (default; no timestamp of their own when stderr is the systemd "
        "journal) or 'json', one object per line",
    )
    parser.set_defaults(func=run)


def _add_flag(group: argparse._ArgumentGroup, name: str, spec: Key, note: str = "") -> None:
    """``--name`` for a ``[server]`` key: the schema's help, and its rule for the value, so
    that a flag refuses exactly what the file refuses."""
    flag = "--" + name.replace("_", "-")
    if spec.toml is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, help=spec.flag)
        return
    kind = spec.toml or str

    def parse(text: str) -> Any:
        try:
            value = int(text, 10) if kind is int else kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not {TOML_TYPES.get(kind, kind.__name__)}: {text!r}"
            ) from None
        try:
            return spec.check(name, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names the type in its messages
    metavar = spec.metavar or name.upper()
    group.add_argument(flag, type=parse, metavar=metavar, help=f"{spec.flag}{note}")


#: ``[server]`` keys that have a flag of the same name; given flags override the file.
_SERVER_FLAGS = tuple(name for name, _, spec in keys_of(DaemonSettings) if spec.flag)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        key: getattr(args, key) for key in _SERVER_FLAGS if getattr(args, key) is not None
    }
    if args.host:
        overrides["listen"] = None if "*" in args.host else tuple(args.host)
    return overrides


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    if args.host and "*" in args.host and len(args.host) > 1:
        print("aioidentd serve: error: '*' (every interface) must be given alone", file=sys.stderr)
        return 2
    base = DaemonSettings(listen=(DEFAULT_HOST,), port=DEFAULT_PORT)
    try:
        daemon = Daemon.load(
            config_path(args),
            _overrides(args),
            base=base,
            default=args.default,
            random=args.random,
            inetd=args.inetd,
        )
        return daemon.run()
    except ConfigError as exc:  # one that does not load, or that the daemon refuses
        print(f"aioidentd: {exc}", file=sys.stderr)
        return 2
    except DaemonError as exc:
        print(f"aioidentd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
