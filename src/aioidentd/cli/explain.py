"""``aioidentd explain``: what the daemon would answer for one connection, and why.

For the question administrators ask most ("why did it answer NO-USER?"): every step in
words, from the same code that answers queries (see :mod:`aioidentd.daemon.explain`),
so that the explanation cannot disagree with the daemon. ``--json`` for scripts.

Exit status: 0 when the answer is a USERID, 1 when it is an ERROR, 2 for bad arguments,
a configuration that does not load, or a connection that cannot be chosen.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import socket
import sys
from typing import TYPE_CHECKING

from aioidentd._printable import printable_lines
from aioidentd.cli._arguments import add_config_options, config_path, host, ip_address, port
from aioidentd.daemon.explain import explain, find_connections
from aioidentd.daemon.pseudonym_key import read_daemon_key
from aioidentd.errors import ConfigError, DaemonError, SocketLookupError
from aioidentd.policy import Config, load_config
from aioidentd.protocol import Address, ip_of, show_address

if TYPE_CHECKING:
    from aioidentd.cli._arguments import SubParsers


def _local(text: str) -> tuple[str | None, int]:
    """``PORT``, ``ADDR:PORT`` or ``[V6ADDR]:PORT``."""
    address, sep, number = text.rpartition(":")
    if not sep:
        return None, port()(text)
    if address.count(":") and not address.startswith("["):
        raise argparse.ArgumentTypeError(f"write an IPv6 address as [ADDR]:PORT, not {text!r}")
    return ip_address(address), port()(number)


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="show what the daemon would answer for a connection, and why",
        description=(
            "Explain what the daemon, with this configuration, answers when REMOTE_HOST "
            "asks about its connection to REMOTE_PORT from --local on this host: the "
            "lookup, the policy's tables and rules, users' reply files, each with its "
            "reason. Exit status: 0 USERID, 1 ERROR, 2 usage or configuration error."
        ),
    )
    parser.add_argument(
        "remote_host",
        type=host,
        metavar="REMOTE_HOST",
        help="the other end's address or host name (resolved as query resolves HOST)",
    )
    parser.add_argument(
        "remote_port", type=port(), metavar="REMOTE_PORT", help="the other end's port"
    )
    parser.add_argument(
        "--local",
        type=_local,
        metavar="[ADDR:]PORT",
        help="this host's end of the connection (default: the only connection to "
        "REMOTE_HOST:REMOTE_PORT in the socket table)",
    )
    parser.add_argument(
        "--from",
        dest="querier",
        type=host,
        metavar="ADDR",
        help="the address (or host name) the query comes from (default REMOTE_HOST)",
    )
    add_config_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _fail(message: str) -> int:
    print(printable_lines(f"aioidentd explain: {message}"), file=sys.stderr)
    return 2


def _resolve(name: str) -> list[str]:
    """The addresses of ``name`` in the resolver's order, as ``query`` connects to them
    (an address is its own); :class:`OSError` says why there are none."""
    try:
        return [str(ipaddress.ip_address(name))]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {name!r}: {exc.strerror}") from None
    hosts = [str(info[4][0]) for info in found if info[0] in (socket.AF_INET, socket.AF_INET6)]
    if not hosts:
        raise OSError(f"cannot resolve {name!r}: no IP address")
    return list(dict.fromkeys(hosts))


def _version(address: str) -> int:
    return ip_of(address).version


def _choose(
    remotes: list[str], remote_port: int, local: tuple[str | None, int] | None
) -> tuple[Address, Address] | str:
    """Both ends of the connection, ours first, or why they cannot be chosen. With several
    addresses for the remote host, the one a connection was found to (or the one of
    ``--local``'s family)."""
    if local is not None and local[0] is not None:
        ours = local[0]
        same = [remote for remote in remotes if _version(remote) == _version(ours)]
        return (ours, local[1]), ((same or remotes)[0], remote_port)
    local_port = None if local is None else local[1]
    ends: dict[tuple[Address, Address], None] = {}
    try:
        for remote in remotes:
            for entry in find_connections((remote, remote_port), local_port):
                ends[entry.local, (remote, remote_port)] = None
    except OSError as exc:
        return f"cannot read the socket table ({exc}): give --local ADDR:PORT"
    if len(ends) == 1:
        return next(iter(ends))
    which = f" from local port {local_port}" if local_port is not None else ""
    where = " or ".join(show_address((remote, remote_port)) for remote in remotes)
    if not ends:
        return (
            f"no connection to {where}{which} in this network namespace; "
            f"give --local ADDR:PORT to explain the answer for one anyway"
        )
    listed = ", ".join(show_address(end) for end, _ in list(ends)[:10])
    return f"{len(ends)} connections to {where}{which} ({listed}): choose with --local"


def run(args: argparse.Namespace) -> int:
    # What the daemon would log (a refused reply file, a dropped privilege) is in the
    # explanation already; only errors go to stderr.
    logging.basicConfig(level=logging.ERROR, format="aioidentd explain: %(message)s")
    try:
        path = config_path(args)
        config = load_config(path) if path is not None else Config()
    except ConfigError as exc:
        return _fail(str(exc))
    key = None
    if config.uses_pseudonyms:
        try:
            key = read_daemon_key(config.pseudonym.key_file, config.daemon.user)
        except DaemonError as exc:
            return _fail(str(exc))
    try:
        remotes = _resolve(args.remote_host)
        queriers = None if args.querier is None else _resolve(args.querier)
    except OSError as exc:
        return _fail(str(exc))
    chosen = _choose(remotes, args.remote_port, args.local)
    if isinstance(chosen, str):
        return _fail(chosen)
    local, remote = chosen
    querier = None
    if queriers is not None:  # the address of the connection's IP version, if it has one
        same = [q for q in queriers if _version(q) == _version(remote[0])]
        querier = (same or queriers)[0]
    try:
        result = explain(config, local, remote, querier=querier, pseudonym_key=key)
    except (SocketLookupError, OSError) as exc:
        return _fail(f"cannot look up connections: {exc}")
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        ends = f"{show_address(local)} <-> {show_address(remote)}"
        print(f"connection {ends}, asked by {result.querier}")
        # Escaped, as every step may quote what a user or a forward target wrote.
        for step in result.steps:
            print(printable_lines(f"{step.topic}: {step.text}"))
    return 0 if result.decision.user_id is not None else 1
