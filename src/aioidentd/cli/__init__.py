"""The ``aioidentd`` command line: one sub-module per sub-command.

Each sub-module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (taking the parsed namespace, returning the exit status), so a command's options
and its behaviour live side by side and no module grows a switch over command names.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from aioidentd import __version__
from aioidentd.cli import check_config as check_config
from aioidentd.cli import explain as explain
from aioidentd.cli import import_oidentd as import_oidentd
from aioidentd.cli import query as query
from aioidentd.cli import resolve as resolve
from aioidentd.cli import serve as serve

_COMMANDS = (serve, query, check_config, explain, resolve, import_oidentd)
_VERSION_HELP = "print the version and exit"

#: The status when the reader of our output went away (``check-config FILE | head -1``):
#: that of a program killed by SIGPIPE, as the shell reports it, so that ``set -o
#: pipefail`` sees what it sees for any other such program.
EXIT_BROKEN_PIPE = 128 + 13


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (and status 2), not the usage
    block: the line says what is wrong and where ``--help`` is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aioidentd",
        description="RFC 1413 ident server, client and daemon.",
    )
    version = f"aioidentd {__version__}"
    parser.add_argument("--version", action="version", version=version, help=_VERSION_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in _COMMANDS:
        command.register(subparsers)
    # Every command answers --version too: packagers' scripts and bug reports ask
    # 'aioidentd serve --version' as often as 'aioidentd --version'.
    for sub in subparsers.choices.values():
        sub.add_argument("--version", action="version", version=version, help=_VERSION_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``aioidentd`` and ``python -m aioidentd``; returns the exit status.

    Bad arguments exit with status 2 and a one-line message. When standard output is
    a pipe whose reader has gone (``| head -0``, ``| true``), the command stops quietly
    with :data:`EXIT_BROKEN_PIPE`: no traceback, nothing more written.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("a command is required")
    try:
        status: int = args.func(args)
        sys.stdout.flush()  # here, not at exit, where a broken pipe cannot be caught
    except BrokenPipeError:
        _silence_output()
        return EXIT_BROKEN_PIPE
    return status


def _silence_output() -> None:
    """Point standard output (and error, if it is the same broken pipe) at /dev/null, so
    that the interpreter's own flush at exit finds nothing to fail on."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                with contextlib.suppress(OSError, ValueError):
                    os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)
