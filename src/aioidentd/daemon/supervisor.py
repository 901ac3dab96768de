"""Worker processes: N forked copies of the daemon on one port, kept running.

The kernel spreads connections over ``SO_REUSEPORT`` sockets, so N processes use N cores
with no shared state. The parent only forwards signals (SIGTERM/SIGINT stop every worker,
SIGHUP makes each re-read its file, SIGUSR1 makes each log its own counters) and replaces
a worker that dies, no faster than once a second so that a worker failing at start cannot
make it spin.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence

from aioidentd.errors import DaemonError

__all__ = ["supervise"]

logger = logging.getLogger(__name__)

#: The least time between two restarts of workers.
RESTART_INTERVAL = 1.0
#: Signals the parent passes on to every worker.
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def supervise(
    groups: Sequence[Sequence[socket.socket]],
    work: Callable[[int, Sequence[socket.socket]], int],
    drop_privileges: Callable[[], None],
) -> int:
    """Fork one worker per socket group, each running ``work(index, its sockets)`` (whose
    return value is its exit status), and supervise them until they stop; returns the
    status to exit with. ``drop_privileges`` runs in the parent once every worker is
    forked: the supervisor needs no root either."""
    children: dict[int, int] = {}  # pid -> group index
    stopping = False

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                for signum in _FORWARDED:
                    signal.signal(signum, signal.SIG_DFL)
                # Until the worker's loop handles it, SIGUSR1 must not kill it.
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
                for other, group in enumerate(groups):
                    if other != index:
                        for sock in group:
                            sock.close()
                status = work(index, groups[index])
            except DaemonError as exc:
                print(f"aioidentd: worker {index}: {exc}", file=sys.stderr)
            except BaseException:
                logger.exception("worker %d failed", index)
            finally:
                os._exit(status)
        children[pid] = index

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for index in range(len(groups)):
        start(index)
    for signum in _FORWARDED:
        signal.signal(signum, forward)
    drop_privileges()
    logger.info("started %d workers: %s", len(groups), ", ".join(map(str, children)))
    status = 0
    last_restart = 0.0
    while children:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, -1)
        code = os.waitstatus_to_exitcode(raw)
        if stopping or index < 0:
            status = status or (code if code > 0 else 0)
            continue
        logger.warning("worker %d (pid %d) exited with status %d; restarting", index, pid, code)
        wait = RESTART_INTERVAL - (time.monotonic() - last_restart)
        if wait > 0:
            time.sleep(wait)
        last_restart = time.monotonic()
        if not stopping:
            start(index)
    for group in groups:
        for sock in group:
            sock.close()
    return status
