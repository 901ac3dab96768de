"""The ``aioidentd`` command line: one sub-module per sub-command.

Minimal stand-in on the client branch so ``aioidentd query`` can be tested; the main
branch's version (which also registers ``serve``) supersedes it on merge.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aioidentd.cli import query

_COMMANDS = (query,)


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
    """Entry point of ``aioidentd``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        parser.exit(2, f"{parser.prog}: error: a command is required\n")
    status: int = args.func(args)
    return status
