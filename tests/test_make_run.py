"""The README's first command, ``make run``, as a newcomer runs it: it must serve."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

from support import ask, wait_until

ROOT = Path(__file__).resolve().parents[1]


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
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        reader.join(5)
    assert "Traceback" not in "".join(lines)
