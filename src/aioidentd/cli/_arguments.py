"""Argument types shared by the commands, so that every command words a bad value the
same way (argparse turns these errors into one ``usage`` line and exit status 2)."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from aioidentd.protocol import check_port, check_seconds

__all__ = [
    "DEFAULT_CONFIG",
    "SubParsers",
    "add_config_options",
    "config_file",
    "config_path",
    "host",
    "ip_address",
    "port",
    "seconds",
]

#: The configuration ``serve`` and ``explain`` read when no ``--config`` is given and this
#: file exists (where oidentd keeps oidentd.conf); without it, the built-in policy on a
#: loopback port, so that trying the daemon needs neither a file nor root.
DEFAULT_CONFIG = "/etc/aioidentd.toml"


if TYPE_CHECKING:  # argparse's class is generic only to type checkers
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def port(low: int = 1) -> Callable[[str], int]:
    """A TCP port number, ``low``..65535 (0 is allowed where it means "any free port")."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
        try:
            check_port("port", value, low)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


def host(text: str) -> str:
    """A host name or an IP address; an IPv6 address may be in brackets (``[::1]``), as
    URLs and most tools write it, which the resolver would take for a name."""
    if not text:
        raise argparse.ArgumentTypeError("empty address")
    if not (text.startswith("[") or text.endswith("]")):
        return text
    inner, closed, rest = text[1:].partition("]")
    if not text.startswith("[") or not closed:
        raise argparse.ArgumentTypeError(f"unbalanced brackets: {text!r}")
    try:
        ipaddress.IPv6Address(inner)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"only an IPv6 address goes in brackets, not {text!r}"
        ) from None
    if rest.startswith(":") and rest[1:].isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} has a port: give the address alone, and --port {rest[1:]}"
        )
    if rest:
        raise argparse.ArgumentTypeError(f"text after the address: {text!r}")
    return inner


def ip_address(text: str) -> str:
    """An IP address (IPv6 with or without brackets), in its normal spelling."""
    try:
        return str(ipaddress.ip_address(host(text)))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    try:
        check_seconds("the value", value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def config_file(text: str) -> str:
    """A configuration file's path: never empty, since ``--config "$CONF"`` with the
    variable unset must not quietly mean "no file" (and so every interface, port 113 and
    the default policy) nor read the current directory."""
    if not text:
        raise argparse.ArgumentTypeError(
            "an empty file name (an unset variable?): name the file, or give --no-config "
            "for the built-in policy"
        )
    return text


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--no-config``, the same for every command that reads the
    daemon's configuration."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--config",
        type=config_file,
        metavar="FILE",
        help=f"the TOML configuration, see aioidentd.toml(5) (default {DEFAULT_CONFIG} when "
        f"it exists, else the built-in policy)",
    )
    which.add_argument(
        "--no-config",
        action="store_true",
        help=f"do not read {DEFAULT_CONFIG}: the built-in policy",
    )


def config_path(args: argparse.Namespace) -> str | None:
    """The file named by ``--config``, else :data:`DEFAULT_CONFIG` when it exists."""
    if args.config is not None:
        return str(args.config)
    if args.no_config or not os.path.exists(DEFAULT_CONFIG):
        return None
    return DEFAULT_CONFIG
