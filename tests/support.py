"""What many test modules need, defined once: how to run ``aioidentd`` in a child process,
a blocking ident exchange, the host's IPv6 and root, and waiting for a condition.

Anything a test needs from outside the test (root, IPv6, a peer program, uvloop) goes
through :func:`peers.unavailable`: a failure under CI, a skip elsewhere, never a silent
pass.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

import aioidentd
from aioidentd import IdentServer
from aioidentd.protocol import Reply
from peers import NOBODY, require, require_root, unavailable

__all__ = [
    "ENV",
    "FAST",
    "SRC",
    "Client",
    "FakeUserDB",
    "ServeProcess",
    "aioidentd_argv",
    "ask",
    "ask_line",
    "both_loops",
    "connection_as_nobody",
    "deferred_listener",
    "enter_own_network_namespace",
    "exchange",
    "ipv6_loopback",
    "needs_ipv6",
    "needs_root",
    "query_server",
    "read_line",
    "require_ipv6",
    "require_root",
    "run_aioidentd",
    "serve_process",
    "serving",
    "wait_until",
    "wait_until_async",
]

#: The package's source, for child processes: they run the tree under test, not whatever
#: is installed.
SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def aioidentd_argv(*args: str) -> list[str]:
    """The command line of ``aioidentd ARGS`` from the tree under test (use with ``ENV``)."""
    return [sys.executable, "-m", "aioidentd", *args]


class ServeProcess:
    """``aioidentd serve ARGS`` in a child process, and what it logs, read as it comes (a
    thread drains stderr, so the child never blocks on a full pipe)."""

    def __init__(self, args: Sequence[str], **popen: Any) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            aioidentd_argv("serve", *args), env=ENV, stderr=subprocess.PIPE, text=True, **popen
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first log line matching ``pattern``, waiting for it to be written."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found.extend(m for m in map(re.compile(pattern).search, list(self.lines)) if m)
            return bool(found) or (self.proc.poll() is not None and not self._reader.is_alive())

        wait_until(seen, within=timeout, what=f"a log line matching {pattern!r}")
        if not found:
            raise AssertionError(f"exited without a log line matching {pattern!r}:\n{self.log}")
        return found[0]

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def port(self) -> int:
        """The port it serves on, from its start-up line."""
        return int(self.wait_for(r"serving ident on \S+:(\d+)").group(1))

    def count(self, pattern: str) -> int:
        """How many log lines so far match ``pattern``."""
        return sum(1 for line in list(self.lines) if re.search(pattern, line))

    def rss(self) -> int:
        """Resident set size in octets."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal it (SIGTERM: answer what is waiting, then exit) and return its status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(2)


@contextmanager
def serve_process(*args: str, **popen: Any) -> Iterator[ServeProcess]:
    """:class:`ServeProcess` that is killed on the way out if it is still running."""
    running = ServeProcess(args, **popen)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
        running.proc.wait()


def run_aioidentd(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """``aioidentd ARGS`` run to its end (30 s at most), output captured as text."""
    return subprocess.run(
        aioidentd_argv(*args), env=ENV, capture_output=True, text=True, timeout=30, **options
    )


def read_line(sock: socket.socket) -> bytes:
    """Everything up to and including the first LF, or what came before EOF."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def ask(port: int, line: bytes, host: str = "127.0.0.1", source: str | None = None) -> bytes:
    """Send one query line on a new connection and return the answer line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        if source is not None:
            sock.bind((source, 0))
        sock.connect((host, port))
        sock.sendall(line)
        return read_line(sock)


@contextmanager
def connection_as_nobody(host: str = "127.0.0.1") -> Iterator[tuple[socket.socket, int]]:
    """A connection from a process running as nobody to a listener here: the accepted
    socket, and the child's port (its end is ``(host, port)``, owned by uid 65534).

    The child is bash with /dev/tcp rather than Python: the interpreter running the tests
    may live where nobody cannot execute it (e.g. under /root/.pyenv).
    """
    require_root("to run a child as nobody")
    bash = require("bash", "bash")
    with socket.create_server((host, 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        child = subprocess.Popen(
            [bash, "-c", f"exec 3<>/dev/tcp/{host}/{port} && read -r _"],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            cwd="/",
            stdin=subprocess.PIPE,
        )
        try:
            accepted, (_, child_port) = listener.accept()
            with accepted:
                yield accepted, child_port
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(10)


@contextmanager
def deferred_listener(uid: int, answer: bytes = b":ERROR:NO-USER\r\n") -> Iterator[int]:
    """A real process running as ``uid`` that listens on 127.0.0.1 (its port is yielded) with
    ``TCP_DEFER_ACCEPT`` (the kernel holds each connection, showing it with no owner,
    until data arrives) and answers every query with ``answer`` after its port pair.
    Forked (an interpreter under /root cannot be executed by another user)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(ready_r)
            if uid != os.getuid():
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            listener = socket.socket()
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 10)
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            os.write(ready_w, b"%d\n" % listener.getsockname()[1])
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    line = conn.recv(1000).split(b"\n")[0].strip()
                    conn.sendall(line + answer)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        with os.fdopen(ready_r, "rb") as ready:
            yield int(ready.readline())
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@functools.cache
def ipv6_loopback() -> bool:
    """Whether this host really has IPv6 on loopback: a listener on ``::1`` that accepts
    a connection. (``socket.has_ipv6`` only says how Python was built.)"""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as server:
            server.bind(("::1", 0))
            server.listen(1)
            with socket.create_connection(server.getsockname()[:2], timeout=2):
                accepted, _ = server.accept()
                accepted.close()
    except OSError:
        return False
    return True


def require_ipv6() -> None:
    """Fail under CI, skip elsewhere, unless IPv6 loopback works."""
    if not ipv6_loopback():
        unavailable("no IPv6 on loopback (::1) on this host")


#: Marks for tests (or ``pytest.param`` cases) that need IPv6 loopback or root: conftest
#: checks them before the test runs, through :func:`peers.unavailable`'s rule (a plain
#: ``skipif`` would skip silently in CI too).
needs_ipv6 = pytest.mark.needs_ipv6
needs_root = pytest.mark.needs_root
#: Runs an async test once on asyncio's loop and once on uvloop's (conftest's
#: ``loop_kind`` fixture).
both_loops = pytest.mark.usefixtures("loop_kind")


def enter_own_network_namespace() -> None:
    """Move this process (a forked child, as root) into a new network namespace with its
    loopback up: the kernel's per-namespace settings (which ports need privilege) are the
    defaults there, whatever the host's are, and no traffic leaves it."""
    import ctypes
    import fcntl
    import struct

    clone_newnet = 0x40000000
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(clone_newnet) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def closed_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on (bound, then released), for a
    connect that must be refused."""
    with socket.socket() as free:
        free.bind((host, 0))
        port: int = free.getsockname()[1]
    return port


@contextmanager
def world_readable_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory that other users (the daemon after dropping root, nobody) can
    read; pytest's tmp_path is private to root. Removed afterwards with its files."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def wait_until(condition: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds. The way to wait for
    something another process or thread does, instead of sleeping and hoping."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s: {what or condition}")
        time.sleep(0.005)


async def wait_until_async(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 5.0, what: str = ""
) -> None:
    """:func:`wait_until` on the event loop: the loop keeps running while it waits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not true within {within} s: {what or condition}")
        await asyncio.sleep(0.002)


class FakeUserDB:
    """Users by uid: (name, home, groups); no dependency on the machine's passwd."""

    def __init__(self, users: dict[int, tuple[str, str | None, Sequence[str]]]) -> None:
        self.users = users
        self.group_calls = 0

    def name_of(self, uid: int) -> str | None:
        return self.users[uid][0] if uid in self.users else None

    def uid_of(self, name: str) -> int | None:
        for uid, (user, _home, _groups) in self.users.items():
            if user == name:
                return uid
        return None

    def home_of(self, uid: int) -> str | None:
        return self.users[uid][1] if uid in self.users else None

    def groups_of(self, uid: int) -> Sequence[str]:
        self.group_calls += 1
        return self.users[uid][2] if uid in self.users else ()


# -- an ident server in the test's own loop, and its clients -------------------------------------

#: Small timeouts keep the suite fast; the defaults (60 s idle, 1 s response) are tested
#: as values, not waited for.
FAST: dict[str, Any] = {"idle_timeout": 2.0, "response_timeout": 0.3}


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[IdentServer]:
    """A started :class:`IdentServer` on 127.0.0.1, a free port and :data:`FAST`
    timeouts (``options`` override them), closed on the way out."""
    server = IdentServer(**{"host": "127.0.0.1", "port": 0, **FAST, **options})
    async with server:
        yield server


class Client:
    """A raw ident client on asyncio streams: bytes exactly as a test writes them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: IdentServer, host: str | None = None) -> Client:
        addr_host, port = server.addresses[0]
        reader, writer = await asyncio.open_connection(host or addr_host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self, timeout: float = 3.0) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def rest(self, timeout: float = 3.0) -> bytes:
        """Everything until the server closes (raises on RST)."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    def half_close(self) -> None:
        self.writer.write_eof()

    async def close(self) -> None:
        self.writer.close()
        with suppress(OSError):
            await self.writer.wait_closed()


async def ask_line(server: IdentServer, query: bytes = b"12345, 123\r\n") -> bytes:
    """One query on a new connection: the answer line."""
    client = await Client.connect(server)
    try:
        await client.send(query)
        return await client.line()
    finally:
        await client.close()


async def exchange(
    server: IdentServer | int,
    data: bytes,
    *,
    half_close: bool = False,
    source: str | None = None,
    timeout: float = 5.0,
) -> bytes:
    """Send ``data`` on a new connection (then half-close, if asked) and return everything
    the server sends until it closes."""
    port = server if isinstance(server, int) else server.addresses[0][1]
    local = (source, 0) if source is not None else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def query_server(
    server: IdentServer,
    server_port: int,
    client_port: int,
    source: str | None = None,
    *,
    timeout: float = 5.0,
) -> Reply:
    """``aioidentd.query`` to ``server`` (from ``source``, when given): the parsed reply."""
    host, port = server.addresses[0]
    local = (source, 0) if source is not None else None
    return await aioidentd.query(
        host, server_port, client_port, port=port, local_addr=local, timeout=timeout
    )
