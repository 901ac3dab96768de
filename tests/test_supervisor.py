"""``aioidentd serve --workers N`` under faults: workers killed after a reload, SIGHUP
bursts while a worker starts, a worker that dies as soon as it starts (a crash loop).

Real processes and signals; every wait is for a condition (a log line, a process, an
answer). Root: the daemon drops privileges and a user other than root owns the
connection asked about (see test_daemon).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from support import ServeProcess, ask, serve_process, wait_until, world_readable_dir
from test_daemon import as_nobody, connect_from_nobody, listener, need_root

__all__ = ["listener"]  # the fixture, shared with test_daemon

QUERIES = 40  # over two workers: the chance that the kernel gives all to one is 2**-39


@pytest.fixture
def config() -> Iterator[Path]:
    # Readable by the daemon's user: the supervisor and the workers re-read it on SIGHUP.
    with world_readable_dir("aioidentd-test-") as path:
        yield path / "aioidentd.toml"


def _fixed(reply: str) -> str:
    return (
        f'[server]\nlisten = "127.0.0.1"\nport = 0\nworkers = 2\n\n'
        f'[default]\nanswer = "fixed"\nreply = "{reply}"\n'
    )


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _workers(d: ServeProcess) -> list[int]:
    match = d.wait_for(r"started 2 workers: (\d+), (\d+)")
    return [int(match.group(1)), int(match.group(2))]


def _answers(port: int, query: bytes) -> list[bytes]:
    return [ask(port, query).rsplit(b":", 1)[-1] for _ in range(QUERIES)]


@contextmanager
def _two_workers(
    listener: socket.socket, config: Path, reply: str
) -> Iterator[tuple[ServeProcess, bytes]]:
    """The daemon with two workers answering ``reply`` (from ``config``), and the query
    about a connection of nobody's to ``listener``."""
    need_root()
    config.write_text(_fixed(reply))
    lport = listener.getsockname()[1]
    with (
        serve_process("--config", str(config)) as d,
        as_nobody(connect_from_nobody("127.0.0.1", lport)) as child,
    ):
        yield d, b"%d,%d\r\n" % (child["port"], lport)


def test_a_replaced_worker_runs_what_the_last_reload_loaded(
    listener: socket.socket, config: Path
) -> None:
    """Reload a policy, kill a worker: its replacement answers with the reloaded policy,
    not with the one the daemon started with (a reload that hides a user must not be
    undone for a share of the queries)."""
    with _two_workers(listener, config, "before") as (d, query):
        port = d.port
        first, _second = _workers(d)
        assert set(_answers(port, query)) == {b"before\r\n"}
        config.write_text(_fixed("after"))
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: d.count("configuration reloaded") == 2, what="both workers reloaded")
        assert set(_answers(port, query)) == {b"after\r\n"}
        os.kill(first, signal.SIGKILL)
        d.wait_for(rf"worker 0 \(pid {first}\) exited")
        wait_until(lambda: d.count("serving ident on") == 3, what="the replacement serving")
        answers = _answers(port, query)
        assert answers.count(b"after\r\n") == QUERIES, answers
        assert d.stop() == 0


def test_a_sighup_burst_while_a_worker_starts_does_not_kill_it(
    listener: socket.socket, config: Path
) -> None:
    """SIGHUPs to the supervisor from before a worker dies until its replacement serves:
    the replacement lives through every relayed one (none finds it before its handler
    is installed with the default action, terminate), and reloads."""
    with _two_workers(listener, config, "burst") as (d, query):
        port = d.port
        first, second = _workers(d)
        wait_until(lambda: d.count("serving ident on") == 2, what="both workers serving")
        os.kill(first, signal.SIGKILL)
        sent = 0
        deadline = time.monotonic() + 10
        while d.count("serving ident on") < 3 and time.monotonic() < deadline:
            d.proc.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.001)  # a 1 kHz burst: not a wait for a result
        assert d.count("serving ident on") == 3, d.log[-3000:]
        # Killed once (by the test), never by a SIGHUP.
        assert d.count(r"worker \d \(pid \d+\) exited") == 1, d.log[-3000:]
        replacement = [pid for pid in _children(d.proc.pid) if pid not in (first, second)]
        assert len(replacement) == 1 and sent >= 1
        assert set(_answers(port, query)) == {b"burst\r\n"}
        assert d.stop() == 0


def _listening(port: int) -> int:
    """Sockets listening on 127.0.0.1:``port`` (from /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1] == local and line.split()[3] == "0A")


def test_a_crash_loop_backs_off_and_other_workers_take_its_connections(
    config: Path,
) -> None:
    """Worker 0 dies at every start (killed as soon as it exists). Its restarts back off
    (each wait longer than the one before, from 0 s up), the log says so a few times, not
    at every death; and while it waits, its socket does not listen: every connection goes
    to worker 1 and is answered before worker 0 is back."""
    need_root()
    config.write_text(_fixed("x"))
    kills = 5
    with serve_process("--config", str(config)) as d:
        port = d.port
        first, second = _workers(d)
        wait_until(lambda: d.count("serving ident on") == 2, what="both workers serving")
        assert _listening(port) == 2
        victim = first
        delays = []
        for n in range(kills):
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            if n == kills - 1:
                break
            new: list[int] = []

            def replaced(gone: int = victim, found: list[int] = new) -> bool:
                found[:] = [p for p in _children(d.proc.pid) if p not in (gone, second)]
                return bool(found)

            wait_until(replaced, within=60, what="a replacement for worker 0")
            delays.append(time.monotonic() - killed)
            victim = new[0]
        # Worker 0 is down, waiting for its next start: only worker 1 listens, and it
        # answers every query while worker 0 is still down.
        wait_until(lambda: _listening(port) == 1, what="worker 0's socket not listening")
        for n in range(1, 21):
            assert ask(port, b"%d,1\r\n" % n) == b"%d,1:ERROR:NO-USER\r\n" % n
        assert [p for p in _children(d.proc.pid) if p != second] == []
        # Back-off: each delay at least the one designed (0, 0.5, 1, 2 s).
        assert all(delay >= low for delay, low in zip(delays, (0, 0.5, 1, 2), strict=True)), delays
        # Three deaths in full, then one line for the loop; not one line per death.
        assert d.count(r"worker 0 \(pid \d+\) exited") == 3, d.log
        assert d.count(r"worker 0 keeps failing") == 1, d.log
        wait_until(lambda: _listening(port) == 2, within=30, what="worker 0 back")
        assert d.stop() == 0


def test_workers_stop_when_their_supervisor_is_killed(config: Path) -> None:
    """SIGKILL to the supervisor (an OOM kill, a careless kill -9): its workers stop too,
    instead of serving on with nobody to replace them or to pass on a SIGHUP."""
    need_root()
    config.write_text(_fixed("x"))
    with serve_process("--config", str(config)) as d:
        workers = _workers(d)
        wait_until(lambda: d.count("serving ident on") == 2, what="both workers serving")
        d.proc.kill()
        d.proc.wait(10)
        try:
            wait_until(
                lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
                within=15,
                what="the workers gone",
            )
        finally:
            for pid in workers:  # when they stayed: not left serving after the test
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
