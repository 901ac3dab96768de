"""Argument types shared by the commands, so that every command words a bad value the
same way (argparse turns these errors into one ``usage`` line and exit status 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from aioidentd.protocol import check_port, check_seconds

__all__ = ["SubParsers", "port", "seconds"]

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
