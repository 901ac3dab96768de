"""Real third-party peers (oidentd, IRC servers, ...) as subprocesses for interop tests.

Interop tests prove more than scripted servers can (a real peer's framing, timing and
quirks), but only if they actually run: on CI a missing peer is a failure, not a silent
skip, so a broken image cannot turn the interop suite into a no-op.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

OIDENTD = "/usr/sbin/oidentd"
#: nobody/nogroup on Debian; numeric so no name lookup can fail.
NOBODY = 65534


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere: the one place where that rule is decided, for every
    test that needs something from outside (a peer program, root, uvloop)."""
    if in_ci():
        pytest.fail(
            f"unavailable under CI: {reason} (CI must provide it: 'make test' as root "
            f"installs every peer through scripts/install-system-deps.sh)",
            pytrace=False,
        )
    pytest.skip(reason)


def require(executable: str, what: str) -> str:
    """The path of ``executable``, or fail/skip saying what is missing."""
    path = executable if os.path.isabs(executable) else shutil.which(executable)
    if path and os.access(path, os.X_OK):
        return path
    unavailable(f"{what} is not installed ({executable} not found)")


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"needs root: {why}")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago.

    For programs that cannot be told to pick their own port and report it; there is a
    small race with other processes, which :func:`start` absorbs by retrying.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_listening(port: int) -> bool:
    """Whether some socket listens on TCP ``port``, read from /proc so that the check never
    opens a connection the peer would see (and log, or count against a limit)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


@dataclass
class Peer:
    """A running peer process: where it listens, and its combined output so far."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    argv: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class PeerFailedToStart(RuntimeError):
    pass


def start(
    argv: Sequence[str],
    host: str,
    port: int,
    *,
    within: float = 10.0,
    log_dir: Path | None = None,
) -> Peer:
    """Start ``argv`` (which must make the program listen on ``port``) and wait until it
    listens; raise :class:`PeerFailedToStart` with its output if it exits or never does."""
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (lives as long as the peer)
        prefix="peer-", suffix=".log", dir=log_dir, delete=False
    )
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log_file.close()
    peer = Peer(process, host, port, Path(log_file.name), list(argv))
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerFailedToStart(
                f"{argv[0]} exited with status {process.returncode} before listening on "
                f"port {port}:\n{peer.log()}"
            )
        if is_listening(port):
            return peer
        time.sleep(0.02)
    stop(peer)
    raise PeerFailedToStart(
        f"{argv[0]} did not listen on port {port} within {within} s:\n{peer.log()}"
    )


def stop(peer: Peer, within: float = 5.0) -> None:
    """SIGTERM the peer's whole process group (forked per-connection children included),
    then SIGKILL whatever is left."""
    process = peer.process
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(within)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(within)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # stray children that outlived the leader
    peer.log_path.unlink(missing_ok=True)


@contextmanager
def running(
    argv_for_port: Callable[[int], Sequence[str]], host: str = "127.0.0.1", attempts: int = 3
) -> Iterator[Peer]:
    """``with running(lambda port: [...argv...]) as peer``: start on a free port (retrying
    if another process grabbed it first), stop on exit."""
    last: PeerFailedToStart | None = None
    for _ in range(attempts):
        port = free_port(host)
        try:
            peer = start(argv_for_port(port), host, port)
        except PeerFailedToStart as exc:
            last = exc
            continue
        try:
            yield peer
        finally:
            stop(peer)
        return
    assert last is not None
    raise last


def oidentd_argv(
    port: int, *extra: str, config: Path | None = None, host: str = "127.0.0.1"
) -> list[str]:
    """oidentd in the foreground (-i), logging to stderr (-S), on ``host``:``port``.

    Root drops to nobody (-u/-g), as a packaged oidentd does; a private config (-C) keeps
    the answers independent of the machine's /etc/oidentd.conf.
    """
    argv = [require(OIDENTD, "oidentd"), "-i", "-S", "-a", host, "-p", str(port)]
    if config is not None:
        argv += ["-C", str(config)]
    if os.geteuid() == 0:
        argv += ["-u", str(NOBODY), "-g", str(NOBODY)]
    return [*argv, *extra]


def oidentd_version() -> str:
    done = subprocess.run(
        [require(OIDENTD, "oidentd"), "--version"], capture_output=True, text=True, timeout=10
    )
    return (done.stdout or done.stderr).splitlines()[0]
