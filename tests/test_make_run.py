"""The README's first command, ``make run``, as a newcomer runs it: it must serve, and
the README's first try against it must print what the README shows and return within a
second (issue 20; ``make run`` once passed ``--multiple``, and the raw query then hung
for the 60 s idle timeout after its answer)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from support import ask, wait_until

ROOT = Path(__file__).resolve().parents[1]
#: The answer itself, once the server is up (after it answered a probe) and not counting
#: the Python start-up of the ``aioidentd`` command, which a loaded machine stretches.
RETURNS_WITHIN = 1.0
#: Only a command that hangs takes this long: it is stopped and the test fails.
KILLED_AFTER = 30.0


def timed(command: str, port: int) -> tuple[subprocess.CompletedProcess[str], float]:
    """A first-try command run against ``port``, and how long it took, in seconds."""
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", command.replace("1113", str(port))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=KILLED_AFTER,
    )
    return done, time.monotonic() - started


def start_up(command: str) -> float:
    """How long the command's program takes to start and exit doing nothing (``aioidentd
    --version``: the same interpreter and imports), just now; 0 for bash alone."""
    program = command.split()[0]
    if not program.endswith("/aioidentd"):
        return 0.0
    return timed(f"{program} --version", 0)[1]


def first_try() -> list[tuple[str, str]]:
    """(command, expected output) of the README's first-try block."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"tests/test_make_run\.py.*?-->\n```sh\n(.*?)\n```", text, re.S)
    assert match, "README.md has no first-try block marked for tests/test_make_run.py"
    pairs: list[tuple[str, str]] = []
    for line in match.group(1).splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], ""))
        else:
            pairs[-1] = (pairs[-1][0], pairs[-1][1] + line + "\n")
    return pairs


def test_make_run_serves_the_readme_query() -> None:
    proc = subprocess.Popen(
        ["make", "-s", "run", "PORT=0"],  # a free port instead of 1113
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # make and the server it starts, stopped together
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        lines.extend(proc.stderr)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        found: list[re.Match[str]] = []

        def serving() -> bool:
            found.extend(
                m for m in map(re.compile(r"serving ident on \S+:(\d+)").search, lines) if m
            )
            return bool(found) or proc.poll() is not None

        wait_until(serving, within=60, what="make run to serve")
        assert found, "".join(lines)
        port = int(found[0].group(1))
        # The README's example: no connection between those ports, so NO-USER.
        assert ask(port, b"6193, 23\r\n") == b"6193,23:ERROR:NO-USER\r\n"
        tries = first_try()
        assert len(tries) == 2
        for command, expected in tries:
            assert "1113" in command
            before = start_up(command)
            done, took = timed(command, port)  # the answer, then the server closes
            assert (done.stdout.replace("\r\n", "\n"), done.stderr) == (expected, ""), command
            allowance = max(before, start_up(command))  # measured on each side of the try
            assert took - allowance < RETURNS_WITHIN, (
                f"{command!r} took {took:.2f} s, start-up {allowance:.2f} s of it"
            )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        reader.join(5)
    assert "Traceback" not in "".join(lines)
