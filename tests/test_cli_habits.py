"""What a newcomer brings from elsewhere (issue 20): oidentd's flags, a file saved by a
Windows editor, an IPv6 address in brackets, a host name, port 113 without root. Each is
run as the real command in a child process."""

from __future__ import annotations

import pytest

from support import run_aioidentd

# -- an option the command does not know: the command's error, with a hint -------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # oidentd's -p is its port; argparse left it to the top-level parser, which
        # pointed at 'aioidentd --help' and the list of commands.
        (
            ["serve", "-p", "1113"],
            "aioidentd serve: error: unrecognized arguments: -p 1113; did you mean --port? "
            "(-p is oidentd's) (see 'aioidentd serve --help')",
        ),
        (
            ["serve", "--no-config", "-u", "ident"],
            "aioidentd serve: error: unrecognized arguments: -u ident; did you mean --user? "
            "(-u is oidentd's) (see 'aioidentd serve --help')",
        ),
        (
            ["serve", "--prot", "1113"],
            "aioidentd serve: error: unrecognized arguments: --prot 1113; did you mean --port? "
            "(see 'aioidentd serve --help')",
        ),
        (
            ["query", "127.0.0.1", "6193", "23", "--timout=2"],
            "aioidentd query: error: unrecognized arguments: --timout=2; did you mean "
            "--timeout? (see 'aioidentd query --help')",
        ),
        (
            ["query", "127.0.0.1", "6193", "23", "24"],
            "aioidentd query: error: unrecognized arguments: 24 (see 'aioidentd query --help')",
        ),
        # Before the command, it is the top-level parser's own.
        (
            ["-x", "serve", "--no-config"],
            "aioidentd: error: unrecognized arguments: -x (see 'aioidentd --help')",
        ),
    ],
    ids=lambda case: " ".join(case) if isinstance(case, list) else "",
)
def test_an_unknown_option_is_the_commands_error_with_a_hint(
    args: list[str], expected: str
) -> None:
    done = run_aioidentd(*args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", expected + "\n")
