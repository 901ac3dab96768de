"""The daemon's log lines as log shippers and the journal read them: ``--log-format
json`` (one object per line, a query's fields), and plain lines without a timestamp of
their own when stderr is the journal (``JOURNAL_STREAM`` names stderr's device and
inode), with one when it is not."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from support import ENV, aioidentd_argv, ask, serve_process, wait_until


def test_json_lines_carry_the_query_and_its_reason() -> None:
    with serve_process("--port", "0", "--log-format", "json", "--log-queries") as daemon:
        port = daemon.port
        assert ask(port, b"40001, 6667\r\n").endswith(b":ERROR:NO-USER\r\n")
        daemon.wait_for(r'"event": "query"')
        assert daemon.stop() == 0
    documents = [json.loads(line) for line in daemon.lines]  # every line is one object
    assert all(
        {"time", "level", "logger", "event", "message", "pid"} <= d.keys() for d in documents
    )
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d["time"]) for d in documents
    )
    (query,) = [d for d in documents if d["event"] == "query"]
    assert query["level"] == "info"
    assert query["peer"].startswith("127.0.0.1:")
    assert query["ports"] == [40001, 6667]
    assert query["uid"] is None
    assert query["answer"] == "ERROR NO-USER"
    assert query["reason"] == "no-socket, lookup found no connection"
    assert query["message"].endswith(
        "asked 40001,6667: no socket NO-USER (no-socket, lookup found no connection)"
    )


@contextmanager
def serve_into_pipe(journal: bool) -> Iterator[list[str]]:
    """``aioidentd serve`` with stderr on a pipe, and the lines it writes there; with
    ``journal``, JOURNAL_STREAM names that pipe, as systemd names the journal's socket
    (without, another inode: a variable inherited from a parent)."""
    read_end, write_end = os.pipe()
    info = os.fstat(write_end)
    env = dict(ENV)
    env["JOURNAL_STREAM"] = (
        f"{info.st_dev}:{info.st_ino}" if journal else f"{info.st_dev}:{info.st_ino + 1}"
    )
    proc = subprocess.Popen(aioidentd_argv("serve", "--port", "0"), env=env, stderr=write_end)
    os.close(write_end)
    lines: list[str] = []

    def read() -> None:
        with os.fdopen(read_end, "r") as stream:
            lines.extend(stream)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        reader.join(5)


def test_journal_lines_have_a_priority_and_no_timestamp_of_their_own() -> None:
    with serve_into_pipe(journal=True) as lines:
        wait_until(lambda: any("serving ident on" in line for line in lines), within=15)
    assert lines[0].startswith("<6>INFO aioidentd.")
    assert not re.search(r"\d{4}-\d\d-\d\d", "".join(lines)), lines


def test_plain_lines_keep_their_timestamp_when_stderr_is_not_the_journal() -> None:
    with serve_into_pipe(journal=False) as lines:
        wait_until(lambda: any("serving ident on" in line for line in lines), within=15)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \[\d+\] aioidentd\.", lines[0])


def test_a_traceback_stays_inside_its_json_object_and_its_journal_priority() -> None:
    from aioidentd.daemon.logs import JsonFormatter, _JournalFormatter

    try:
        raise RuntimeError("a handler bug")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "aioidentd.server", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    document = json.loads(line)
    assert document["level"] == "error" and document["event"] == "message"
    assert "RuntimeError: a handler bug" in document["exception"]
    journal = _JournalFormatter("<%(priority)d>%(levelname)s %(name)s: %(message)s").format(record)
    assert all(part.startswith("<3>") for part in journal.splitlines())
    assert journal.splitlines()[0] == "<3>ERROR aioidentd.server: failed"
