"""Worker processes: N forked copies of the daemon on one port, kept running.

The kernel spreads connections over ``SO_REUSEPORT`` sockets, so N processes use N cores
with no shared state. The parent forwards signals (SIGTERM/SIGINT stop every worker,
SIGHUP makes each re-read its file, SIGUSR1 makes each log its own counters) and replaces
a worker that dies. Three rules make that safe under faults (see docs/process-model.md):

* **A replacement runs what the last reload loaded.** On SIGHUP the parent re-reads the
  file itself (``reload``) before passing the signal on; a worker forked later inherits
  that configuration, not the one the daemon started with.
* **A relayed signal never kills a worker.** The forwarded signals are blocked across
  ``fork()`` and stay blocked in the new worker until its event loop handles them
  (:func:`unblock_forwarded`); one sent meanwhile waits, it does not terminate.
* **A crash loop backs off.** A worker that dies after running a while is replaced at
  once; one that keeps dying within :data:`STABLE` of its start is replaced after 0.5, 1,
  2 ... up to :data:`MAX_BACKOFF` seconds, logged in full a few times and then once per
  :data:`QUIET_INTERVAL`. While it waits and another worker serves, its sockets stop
  listening (a listening socket nobody accepts on would hold its share of new
  connections): the kernel gives them to the other workers, and the replacement listens
  again. When no worker serves, every socket listens: connections wait for the next
  start rather than being refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence

from aioidentd._ratelimit import RateLimitedLog
from aioidentd.daemon.sockets import BACKLOG
from aioidentd.errors import DaemonError

__all__ = ["FORWARDED", "supervise", "unblock_forwarded"]

logger = logging.getLogger(__name__)

#: Signals the parent passes on to every worker.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
#: A worker that ran this long before it died was not failing at its start: replaced at
#: once (a worker killed now and then, or one a query made crash, never waits).
STABLE = 1.0
#: The first delay of a crash loop, doubled at each further failure, up to MAX_BACKOFF.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: Failures in a row logged in full; after them, one line per QUIET_INTERVAL.
LOUD_FAILURES = 3
QUIET_INTERVAL = 600.0


def unblock_forwarded() -> None:
    """In a worker whose loop now handles the forwarded signals: let them in (any that
    came while it started are delivered now)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)


def backoff(streak: int) -> float:
    """The delay before restarting a worker that failed ``streak`` times in a row soon
    after starting (0: the first failure, or one after a healthy run)."""
    if streak <= 0:
        return 0.0
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** (streak - 1))


class _Slot:
    """One worker index: its process, and how its recent starts went."""

    __slots__ = ("due", "pid", "started", "streak")

    def __init__(self) -> None:
        self.pid = 0
        self.started = 0.0
        self.streak = 0  # deaths in a row, each soon after its start
        self.due: float | None = None  # when to start it again


def supervise(
    groups: Sequence[Sequence[socket.socket]],
    work: Callable[[int, Sequence[socket.socket]], int],
    drop_privileges: Callable[[], None],
    reload: Callable[[], bool] = lambda: True,
) -> int:
    """Fork one worker per socket group, each running ``work(index, its sockets)`` (whose
    return value is its exit status), and supervise them until they stop; returns the
    status to exit with. ``drop_privileges`` runs in the parent once every worker is
    forked: the supervisor needs no root either. ``reload`` runs in the parent on SIGHUP
    (it re-reads the configuration that later workers will be forked with); the signal
    is passed on to the workers only when it succeeded (when it did not, they would find
    the same bad file)."""
    slots = [_Slot() for _ in groups]
    by_pid: dict[int, int] = {}
    stopping = False
    quiet = RateLimitedLog(logger, interval=QUIET_INTERVAL)

    def start(index: int, loud: bool) -> None:
        slot = slots[index]
        slot.due = None
        _listen(groups[index], True)  # again, if it stopped while the worker was down
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            logger.error("cannot fork worker %d: %s", index, exc.strerror or exc)
            died(index, 1, 0.0)
            return
        if pid == 0:  # the worker; the forwarded signals stay blocked (unblock_forwarded)
            status = 1
            try:
                for signum in (*FORWARDED, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                # Until the worker's loop handles it, SIGUSR1 must not kill it.
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
                for fd in wakeup:
                    os.close(fd)
                for other, group in enumerate(groups):
                    if other != index:
                        for sock in group:
                            sock.close()
                status = work(index, groups[index])
            except DaemonError as exc:
                if loud:
                    print(f"aioidentd: worker {index}: {exc}", file=sys.stderr)
            except BaseException:
                if loud:
                    logger.exception("worker %d failed", index)
            finally:
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        slot.pid, slot.started = pid, time.monotonic()
        by_pid[pid] = index

    def died(index: int, code: int, lived: float) -> None:
        slot = slots[index]
        if lived >= STABLE:
            slot.streak = 0
        delay = backoff(slot.streak)
        slot.streak += 1
        slot.due = time.monotonic() + delay
        if slot.streak <= LOUD_FAILURES:
            logger.warning(
                "worker %d (pid %d) exited with status %d; restarting%s",
                index,
                slot.pid,
                code,
                f" in {delay:g} s" if delay else "",
            )
        else:
            quiet.log(
                ("failing", index),
                logging.WARNING,
                f"failures of worker {index}",
                "worker %d keeps failing soon after its start (%d times in a row, "
                "status %d); restarting it every %g s at most, logged once per %g s",
                index,
                slot.streak,
                code,
                delay,
                QUIET_INTERVAL,
            )
        running = any(other.due is None for other in slots)
        if delay and running:
            # Another worker serves meanwhile: stop listening here (Linux keeps the
            # bound port; listen() again at the start), so that the kernel gives it
            # the new connections; those already queued here are reset, not left
            # waiting for the restart.
            _listen(groups[index], False)
        elif not running:
            # Nobody serves: every socket listens, so that connections wait for the
            # next start in the kernel's queue instead of being refused.
            for group in groups:
                _listen(group, True)

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        elif signum == signal.SIGHUP and not reload():
            return
        for pid in list(by_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    # Signals (SIGCHLD among them) wake the wait below through this pipe.
    wakeup = os.pipe()
    for fd in wakeup:
        os.set_blocking(fd, False)
    for index in range(len(groups)):
        start(index, loud=True)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wakeup[1], warn_on_full_buffer=False)
    for signum in FORWARDED:
        signal.signal(signum, forward)
    drop_privileges()
    logger.info("started %d workers: %s", len(groups), ", ".join(map(str, by_pid)))
    status = 0
    try:
        while by_pid or (not stopping and any(s.due is not None for s in slots)):
            for pid, raw in _reaped(by_pid):
                index = by_pid.pop(pid)
                code = os.waitstatus_to_exitcode(raw)
                if stopping:
                    status = status or (code if code > 0 else 0)
                    continue
                died(index, code, time.monotonic() - slots[index].started)
            now = time.monotonic()
            if not stopping:
                for index, slot in enumerate(slots):
                    if slot.due is not None and slot.due <= now:
                        start(index, loud=slot.streak <= LOUD_FAILURES)
            dues = [s.due for s in slots if s.due is not None and not stopping]
            if not by_pid and not dues:
                break
            timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
            with contextlib.suppress(InterruptedError):
                select.select([wakeup[0]], [], [], timeout)
            with contextlib.suppress(BlockingIOError):
                while os.read(wakeup[0], 512):
                    pass
    finally:
        signal.set_wakeup_fd(-1)
        for fd in wakeup:
            os.close(fd)
        quiet.close()
    for group in groups:
        for sock in group:
            sock.close()
    return status


def _listen(group: Sequence[socket.socket], on: bool) -> None:
    """Make ``group``'s sockets listen again (with the daemon's backlog), or stop
    listening (they stay bound: every copy of a port is bound by number, see
    sockets.acquire_sockets). A socket already in the state asked for is left alone (a
    listen() again would change its backlog, say systemd's)."""
    for sock in group:
        with contextlib.suppress(OSError):
            listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
            if on and not listening:
                sock.listen(BACKLOG)
            elif not on and listening:
                sock.shutdown(socket.SHUT_RD)


def _reaped(by_pid: dict[int, int]) -> list[tuple[int, int]]:
    """The workers that have exited, with their wait statuses (never blocks)."""
    done = []
    for pid in list(by_pid):
        try:
            got, raw = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            got, raw = pid, 0
        if got:
            done.append((pid, raw))
    return done
