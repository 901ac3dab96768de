"""``aioidentd check-config FILE``: validate a configuration and show what it means.

Meant to run before a reload (``check-config && systemctl reload``), so it prints the
effective policy on success and exactly one ``file:line: message`` line on failure,
never a traceback: the exit status is what scripts test.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from aioidentd.errors import ConfigError
from aioidentd.policy import describe, load_config

if TYPE_CHECKING:
    from aioidentd.cli._arguments import SubParsers


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a configuration file and print the effective policy",
        description="Validate an aioidentd TOML configuration file and print the effective "
        "policy. Exit status 0 when it is valid, 1 when it is not.",
    )
    parser.add_argument("config", metavar="FILE", help="the configuration file (TOML)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"aioidentd: {exc}", file=sys.stderr)
        return 1
    print(describe(config))
    return 0
