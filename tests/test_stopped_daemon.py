"""A daemon stopped across its connections' deadlines (a debugger, the cgroup freezer, a
suspended VM: SIGSTOP, then SIGCONT) must answer the queries that arrived meanwhile.

On resume the overdue deadlines are seen before the sockets that became readable
(asyncio's first, timed-out wait after the stop returns no event; libuv runs its timers
before it polls), so a deadline has to look for unread data before it closes: closing
over it resets the connection and destroys the query.

Black-box on purpose: a real ``aioidentd serve`` process, real signals, real sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from peers import unavailable
from support import ServeProcess, read_line, serve_process, wait_until

GROUP = 10
#: Long beside the set-up (a few milliseconds), so that the stop surely begins before
#: the first deadline, on a loaded machine too (checked, not hoped).
DEADLINE = 3.0


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _asleep_in_epoll(pid: int) -> bool:
    """Waiting for an event or its next timer: the state in which a stop is seen on
    resume as an interrupted, timed-out wait (the daemon is single-threaded here)."""
    return Path(f"/proc/{pid}/wchan").read_text() in ("do_epoll_wait", "ep_poll")


@contextmanager
def _stopped(proc: ServeProcess, before: float, until: float) -> Iterator[None]:
    """The daemon stopped (state T) for the block and then until ``until`` (monotonic),
    whatever the block took; continued on the way out in any case. The stop must begin
    before ``before`` (the first deadline), or the test would prove nothing."""
    pid = proc.proc.pid
    wait_until(lambda: _asleep_in_epoll(pid), what="the daemon waiting for events")
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _state(pid) == "T", what="the daemon stopped")
        assert time.monotonic() < before, "stopped after the first deadline: too slow a set-up"
        yield
        wait_until(lambda: time.monotonic() >= until, within=30, what="the deadlines passed")
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("engine", ["asyncio", "uvloop"])
def test_queries_sent_while_stopped_across_deadlines_are_answered(engine: str) -> None:
    """Two groups: connections kept open after an answer (their idle deadline passes
    while stopped), and connections accepted before the stop that had sent nothing yet
    (their first-query deadline passes). Each sends its query while the daemon is
    stopped; after SIGCONT every one of them gets its answer, none is reset."""
    loop = []
    if engine == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            unavailable("uvloop is not installed (the [uvloop] extra)")
        loop = ["--uvloop"]
    args = [
        "--port", "0", "--default", "x", "--multiple", "--no-defer-accept",
        "--first-query-timeout", str(DEADLINE), "--idle-timeout", str(DEADLINE), *loop,
    ]  # fmt: skip
    with serve_process(*args) as daemon:
        port = daemon.port
        pid = daemon.proc.pid
        first = time.monotonic()  # no deadline of these connections comes earlier
        kept = []
        for n in range(GROUP):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"%d,1\r\n" % (n + 1))
            assert read_line(sock) == b"%d,1:USERID:UNIX:x\r\n" % (n + 1)
            kept.append(sock)
        before = _open_descriptors(pid)
        silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(GROUP)]
        # Accepted by the daemon (it holds a descriptor for each), not still queued.
        wait_until(
            lambda: _open_descriptors(pid) >= before + GROUP, what="the connections accepted"
        )
        last = time.monotonic()  # no deadline of these connections comes later
        with _stopped(daemon, before=first + DEADLINE, until=last + DEADLINE + 1.0):
            for n, sock in enumerate(silent + kept):
                sock.sendall(b"%d,2\r\n" % (n + 100))
        answers = []
        for sock in silent + kept:
            try:
                answers.append(read_line(sock))
            except ConnectionResetError:
                answers.append(b"reset")
            sock.close()
        expected = [b"%d,2:USERID:UNIX:x\r\n" % (n + 100) for n in range(2 * GROUP)]
        wrong = [a != e for a, e in zip(answers, expected, strict=True)]
        # (first queries lost, next queries lost), with what came instead.
        assert (sum(wrong[:GROUP]), sum(wrong[GROUP:])) == (0, 0), answers
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.log
