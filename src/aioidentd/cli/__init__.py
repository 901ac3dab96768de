"""The ``aioidentd`` command line: one sub-module per sub-command.

Each sub-module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (taking the parsed namespace, returning the exit status). Keeping commands
apart keeps the daemon's imports out of ``aioidentd query`` and vice versa.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aioidentd.cli import check_config as check_config
from aioidentd.cli import query as query
from aioidentd.cli import serve as serve

_COMMANDS = (serve, query, check_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aioidentd",
        description="RFC 1413 ident server, client and daemon.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``aioidentd`` and ``python -m aioidentd``; returns the exit status.

    Bad arguments exit with status 2 and a one-line message (argparse's convention).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        parser.exit(2, f"{parser.prog}: error: a command is required\n")
    status: int = args.func(args)
    return status
