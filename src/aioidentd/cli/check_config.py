"""``aioidentd check-config FILE``: validate a configuration and show what it means.

Meant to run before a start or a reload (``check-config && systemctl reload``, the units'
``ExecStartPre=``), so it refuses every file ``serve`` refuses (the same rules:
:mod:`aioidentd.daemon.refusals`), prints the effective policy on success and exactly
one ``file:line: message`` line on failure, never a traceback: the exit status is what
scripts test. Tables naming accounts this host lacks are warnings, not failures.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from aioidentd._printable import printable_lines
from aioidentd.cli._arguments import config_file
from aioidentd.daemon.refusals import check_startable, unknown_accounts
from aioidentd.errors import ConfigError, ReplyFileRefused
from aioidentd.policy import describe, load_config
from aioidentd.policy.oidentd_conf import parse_user_file
from aioidentd.policy.userfiles import MAX_OIDENTD_FILE

if TYPE_CHECKING:
    from aioidentd.cli._arguments import SubParsers


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a configuration file and print the effective policy",
        description="Validate an aioidentd TOML configuration file and print the effective "
        "policy: what serve would refuse to start with is refused here too, and tables "
        "naming a user or group this host does not have are warned about. Exit status 0 "
        "when it is valid, 2 when it is not, 1 when a --user-file cannot be read.",
    )
    parser.add_argument(
        "config", type=config_file, metavar="FILE", help="the configuration file (TOML)"
    )
    parser.add_argument(
        "--user-file",
        metavar="PATH",
        action="append",
        default=[],
        help="also explain a user's oidentd file (~/.config/oidentd.conf, ~/.oidentd.conf): "
        "the blocks used, and what is not understood",
    )
    parser.set_defaults(func=run)


def _say(text: str, file: TextIO | None = None) -> None:
    """Print ``text`` escaped: the files shown (a user's above all) may hold terminal
    escapes, and root reads this output."""
    print(printable_lines(text), file=file)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        check_startable(config)
    except ConfigError as exc:
        _say(f"aioidentd: {exc}", sys.stderr)
        return 2
    for warning in unknown_accounts(config):
        _say(f"aioidentd: warning: {warning}", sys.stderr)
    _say(describe(config))
    status = 0
    for path in args.user_file:
        try:
            with open(path, "rb") as file:
                text = file.read(MAX_OIDENTD_FILE + 1).decode("utf-8")
            if len(text.encode()) > MAX_OIDENTD_FILE:
                raise ReplyFileRefused(f"larger than {MAX_OIDENTD_FILE} octets")
            parsed = parse_user_file(text)
        except (OSError, UnicodeDecodeError, ReplyFileRefused) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc
            _say(f"aioidentd: {path}: {reason}", sys.stderr)
            status = 1
            continue
        _say(f"\n{path}:")
        for entry in parsed.entries:
            _say(f"  line {entry.line}: {entry}")
        if not parsed.entries:
            _say("  (no block this daemon uses)")
        for problem in parsed.problems:
            _say(f"  not understood: {problem}")
    return status
