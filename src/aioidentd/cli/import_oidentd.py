"""``aioidentd import-oidentd``: an oidentd host's configuration as one aioidentd.toml.

The TOML goes to standard output, each part commented with the oidentd line it came
from; what could not be converted goes to standard error, one line each with its file
and line. Exit status: 0 all converted, 1 something could not be (the output still
loads, without it), 2 input that cannot be read or that oidentd itself would refuse.
"""

from __future__ import annotations

import argparse
import codecs
import os
import sys
from typing import TYPE_CHECKING

from aioidentd.oidentd.convert import (
    DEFAULT_MASQ,
    OidentdInputError,
    convert,
    system_path,
)

if TYPE_CHECKING:
    from aioidentd.cli._arguments import SubParsers

#: Larger than any real oidentd file; a bound so that a wrong path (a device, a log)
#: is an error, not a long read.
MAX_INPUT = 1 << 20


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "import-oidentd",
        help="convert oidentd's configuration to an aioidentd.toml",
        description=(
            "Read oidentd's system configuration, its NAT file and its command-line flags "
            "and write an aioidentd.toml that gives the same answers to standard output, "
            "each part commented with the oidentd line it came from. What cannot be "
            "converted is named on standard error. Exit status 0: all converted; 1: "
            "something could not be; 2: unreadable or invalid input."
        ),
    )
    parser.add_argument(
        "--config",
        metavar="OIDENTD_CONF",
        help="oidentd's system file (default: the flags' -C FILE, else /etc/oidentd.conf "
        "when it exists)",
    )
    parser.add_argument(
        "--masq",
        metavar="MASQ_CONF",
        help=f"oidentd's NAT file (default: {DEFAULT_MASQ} when it exists and the flags "
        "enable NAT with -m, -f or -M)",
    )
    parser.add_argument(
        "--flags",
        metavar="FLAGS",
        help="oidentd's command-line options as one string, e.g. --flags='-mf -l 10' "
        "(written with '=', since a lone '-m' would read as an option of this command); "
        'a line OIDENT_OPTIONS="..." from /etc/default/oidentd is read as well',
    )
    parser.set_defaults(func=run)


def _read(path: str) -> str:
    with open(path, "rb") as file:
        data = file.read(MAX_INPUT + 1)
    if len(data) > MAX_INPUT:
        raise OidentdInputError(f"{path}: larger than {MAX_INPUT} octets")
    data = data.removeprefix(codecs.BOM_UTF8)  # a Windows editor's, not oidentd's syntax
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def run(args: argparse.Namespace) -> int:
    try:
        config_path = args.config or system_path(args.flags)
        system = None
        if args.config is not None or os.path.exists(config_path):
            system = _read(config_path)
        masq_path = args.masq or DEFAULT_MASQ
        masq = None
        if args.masq is not None or os.path.exists(masq_path):
            masq = _read(masq_path)
        conversion = convert(
            system,
            system_name=config_path,
            masq=masq,
            masq_name=masq_path,
            flags=args.flags,
        )
    except OSError as exc:
        print(f"aioidentd: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except OidentdInputError as exc:
        print(f"aioidentd: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a converter defect: said in one line, not a traceback
        print(f"aioidentd: import-oidentd: {exc} (please report this)", file=sys.stderr)
        return 1
    sys.stdout.write(conversion.toml)
    for problem in conversion.problems:
        print(f"aioidentd: {problem}", file=sys.stderr)
    return conversion.status
