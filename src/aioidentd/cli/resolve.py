"""``aioidentd resolve``: which local user a pseudonym names, for abuse handling.

A network's operator reports ``*!k3x9q2mfa0@host``; the administrator asks which user
that was: the id is computed again for every account on the host (the passwd database),
for the querier's network at that time, with the daemon's key. Every match is printed,
so that a collision (two users with one id, see :func:`aioidentd.pseudonym.collision_rate`)
shows every candidate instead of one wrong name.

Exit status: 0 when the id names a user, 1 when it names none, 2 for bad arguments, a
configuration that does not load, or a key that cannot be read (the key is readable by
root and the daemon's user only).
"""

from __future__ import annotations

import argparse
import pwd
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aioidentd.cli._arguments import add_config_options, config_path, ip_address
from aioidentd.daemon.pseudonym_key import read_daemon_key
from aioidentd.errors import ConfigError, DaemonError
from aioidentd.policy import Config, load_config
from aioidentd.policy.answers import pseudonyms_for
from aioidentd.pseudonym import MAX_LENGTH, REST

if TYPE_CHECKING:
    from aioidentd.cli._arguments import SubParsers


def _pseudonym(text: str) -> str:
    if not 1 <= len(text) <= MAX_LENGTH or not all(c in REST for c in text.lower()):
        raise argparse.ArgumentTypeError(
            f"not a pseudonym: {text!r} (1-{MAX_LENGTH} letters and digits)"
        )
    return text


def _time(text: str) -> float:
    """ISO 8601 (``2026-12-01``, ``2026-12-01T18:30``, with ``Z`` or an offset); UTC when
    no offset is given."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601: 2026-12-01, 2026-12-01T18:30Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "resolve",
        help='name the local user(s) behind a pseudonym (answer = "pseudonym")',
        description=(
            "Name the local user(s) whose pseudonym for the querier at --from was ID at "
            "--at (default now): every account in the passwd database is tried with the "
            "daemon's key. Needs the key ([pseudonym] key_file; root or the daemon's user). "
            "Exit status: 0 a user, 1 none, 2 usage, configuration or key error."
        ),
    )
    parser.add_argument("pseudonym", type=_pseudonym, metavar="ID", help="the id a server saw")
    parser.add_argument(
        "--from",
        dest="querier",
        required=True,
        type=ip_address,
        metavar="ADDR",
        help="the address of the server that saw it (any address of that network)",
    )
    parser.add_argument(
        "--at",
        type=_time,
        metavar="TIME",
        help="when it was seen, ISO 8601, UTC unless an offset is given (default now): "
        "ids change with each [pseudonym] rotate epoch",
    )
    add_config_options(parser)
    parser.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"aioidentd resolve: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        path = config_path(args)
        config = load_config(path) if path is not None else Config()
        key = read_daemon_key(config.pseudonym.key_file, config.daemon.user)
    except (ConfigError, DaemonError) as exc:
        return _fail(str(exc))
    pseudonyms = pseudonyms_for(config.pseudonym, key)
    names: dict[int, list[str]] = {}
    for entry in pwd.getpwall():
        names.setdefault(entry.pw_uid, []).append(entry.pw_name)
    found = pseudonyms.resolve(args.pseudonym, args.querier, map(str, names), args.at)
    network = pseudonyms.network(args.querier)
    epoch = pseudonyms.epoch(args.at)
    when = f", epoch {epoch}" if epoch else ""
    cut = "" if len(args.pseudonym) >= pseudonyms.length else " (as the start of a longer id)"
    print(f"{args.pseudonym}{cut} on network {network}{when}: {len(found)} of {len(names)} uids")
    for uid in found:
        print(f"  {', '.join(names[int(uid)])} (uid {uid})")
    if len(found) > 1:
        print("  several users share this id on that network (a collision): all are listed")
    tables = [config.default, *config.users.values(), *config.groups.values()]
    if any(t.allow_user_reply for t in (*tables, *(r.settings for r in config.rules))):
        print(
            "  note: users allowed to choose their reply (allow_user_reply) may have sent "
            "this id themselves; the daemon logs every chosen reply with the real user"
        )
    return 0 if found else 1
