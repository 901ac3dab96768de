"""The answers our server gives in the interop cases, shared by the tests and the drivers
that run inside a network namespace (``netns_*.py``, started as plain scripts).

A case is picked per query by the queried port pair, so that one server and one peer run
can carry every case at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aioidentd.server import IdentRequest

#: How long the "delayed" case waits before answering: well under every peer's timeout
#: (ngircd 10 s, InspIRCd 5 s as configured, the Perl clients as asked).
DELAY = 1.0


async def _delayed(request: IdentRequest) -> None:
    await asyncio.sleep(DELAY)
    request.reply("UNIX", "alice")


#: case name -> what the handler does with the request (None: it never answers, so the
#: server's fallback goes out after ``response_timeout``).
ANSWERS: dict[str, Callable[[IdentRequest], Any] | None] = {
    "userid": lambda r: r.reply("UNIX", "alice"),
    "userid-other": lambda r: r.reply("OTHER", "alice smith"),
    "userid-charset": lambda r: r.reply("UNIX", "jürgen", charset="UTF-8"),
    "no-user": lambda r: r.error("NO-USER"),
    "hidden-user": lambda r: r.error("HIDDEN-USER"),
    "invalid-port": lambda r: r.error("INVALID-PORT"),
    "unknown-error": lambda r: r.error("UNKNOWN-ERROR"),
    "x-token": lambda r: r.error("X-NOT-TODAY"),
    "delayed": _delayed,
    # Valid RFC 1413 ids that IRC servers treat their own way: ngircd accepts only
    # [A-Za-z0-9]; InspIRCd truncates to <limits maxuser> (10 in our config).
    "userid-underscore": lambda r: r.reply("UNIX", "al_ice"),
    "userid-long": lambda r: r.reply("UNIX", "alice0123456789"),
    "fallback": None,
}


def make_handler(
    case_of: Callable[[IdentRequest], str | None],
    seen: list[dict[str, Any]] | None = None,
) -> Callable[[IdentRequest], Awaitable[None] | None]:
    """A handler that answers each request as its case says (unknown: ``NO-USER``) and
    records ``{"case", "server_port", "client_port", "peer"}`` in ``seen``."""

    def handler(request: IdentRequest) -> Awaitable[None] | None:
        case = case_of(request)
        if seen is not None:
            seen.append(
                {
                    "case": case,
                    "server_port": request.server_port,
                    "client_port": request.client_port,
                    "peer": list(request.peer),
                    "local": list(request.local),
                }
            )
        if case is None:
            request.error("NO-USER")
            return None
        action = ANSWERS[case]
        if action is None:
            return None
        result = action(request)
        return result if asyncio.iscoroutine(result) else None

    return handler


def by_server_port(ports: Mapping[int, str]) -> Callable[[IdentRequest], str | None]:
    return lambda request: ports.get(request.server_port)


def loopback_up() -> None:
    """Bring ``lo`` up, for running a namespace driver by hand (``interop_peers``
    ``require_netns()`` does it for the tests)."""
    subprocess.run(
        ["ip", "link", "set", "lo", "up"],
        check=False,
        timeout=10,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_port(
    host: str, port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15.0
) -> None:
    """Return once ``host:port`` accepts a connection; fail at once if ``proc`` (the
    program that should listen there) has exited, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """SIGTERM ``proc`` if it still runs; SIGKILL it after ``grace`` seconds."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def hold_in_child(prepare: Callable[[], object], timeout: float = 20.0) -> int:
    """Fork a child that runs ``prepare()`` (become a user, enter a namespace, open
    connections) and then keeps what it made until it is killed; return its pid once
    ``prepare`` has finished, or raise with the child's error."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(ready_r)
            held = prepare()
            os.write(ready_w, b"ok\n")
            while held is not None:
                signal.pause()
        except BaseException as exc:
            os.write(ready_w, f"error {exc!r}\n".encode())
        finally:
            os._exit(1)
    os.close(ready_w)
    ready, _, _ = select.select([ready_r], [], [], timeout)
    answer = os.read(ready_r, 4096) if ready else b"no answer"
    os.close(ready_r)
    if answer != b"ok\n":
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise RuntimeError(f"the child failed: {answer.decode(errors='replace').strip()}")
    return pid


def end_child(pid: int) -> None:
    """Kill a child of :func:`hold_in_child` and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
