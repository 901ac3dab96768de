"""The ``aioidentd`` command line: one sub-module per sub-command.

Each sub-module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (taking the parsed namespace, returning the exit status), so a command's options
and its behaviour live side by side and no module grows a switch over command names.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

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


class _CommandParser(_Parser):
    """A command's parser: an argument it does not know is its error, not the top-level
    parser's, so that the message names the command's ``--help`` (argparse leaves what a
    sub-command did not use to ``aioidentd``, which then points at the list of commands).

    ``oidentd_flags`` maps oidentd's options (``-p``, its port) to the command's, for
    hands used to oidentd; a mistyped long option is matched against the command's own."""

    def __init__(self, *args: Any, oidentd_flags: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.oidentd_flags: Mapping[str, str] = oidentd_flags or {}

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._hint(extras)}")
        return parsed, extras

    def _hint(self, extras: Sequence[str]) -> str:
        for word in extras:
            if not word.startswith("-") or word == "-":
                continue
            name = word.partition("=")[0]
            if name in self.oidentd_flags:
                return f"; did you mean {self.oidentd_flags[name]}? ({name} is oidentd's)"
            if name.startswith("--"):
                ours = [option for option in self._option_string_actions if option.startswith("--")]
                close = difflib.get_close_matches(name, ours, n=1)
                if close:
                    return f"; did you mean {close[0]}?"
        return ""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aioidentd",
        description="RFC 1413 ident server, client and daemon.",
    )
    version = f"aioidentd {__version__}"
    parser.add_argument("--version", action="version", version=version, help=_VERSION_HELP)
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_CommandParser
    )
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
