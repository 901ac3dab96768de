"""Running out of file descriptors must not stop the server (the seed's listener died)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time

from support import ENV, read_line, wait_until

# The server runs in its own process with a tiny descriptor limit, so that accept() hits
# EMFILE while this process (the clients) has descriptors to spare.
SERVER = textwrap.dedent(
    """
    import asyncio, resource, sys
    from aioidentd import IdentServer

    async def main():
        server = IdentServer("127.0.0.1", 0, default="alice", multiple=True, idle_timeout=30)
        await server.start()
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))
        print(server.addresses[0][1], flush=True)
        await server.serve_forever()

    asyncio.run(main())
    """
)


def ask_on(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    return read_line(sock)


def test_server_recovers_after_emfile() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    held: list[socket.socket] = []
    errors: list[str] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        # Far more connections than the server has descriptors: the kernel queues them
        # in the backlog while accept() fails with EMFILE.
        assert proc.stderr is not None
        reader = threading.Thread(target=errors.extend, args=(proc.stderr,), daemon=True)
        reader.start()
        for _ in range(80):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        # The server says when accept() fails for lack of descriptors (and pauses it).
        wait_until(
            lambda: (
                any("Too many open files" in line for line in errors) or proc.poll() is not None
            ),
            within=10,
            what="the server hit EMFILE",
        )
        assert proc.poll() is None, "server died on EMFILE"
        # One of the accepted connections still works while the limit is hit.
        assert ask_on(held[0], b"1,2\r\n") == b"1,2:USERID:UNIX:alice\r\n"
        for sock in held:
            sock.close()
        held.clear()
        # Once descriptors are free again, new connections are served (asyncio retries
        # accept after a short pause).
        deadline = time.monotonic() + 10
        answer = b""
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.settimeout(3)
                try:
                    answer = ask_on(sock, b"3,4\r\n")
                except OSError:
                    answer = b""
            if answer:
                break
            time.sleep(0.2)
        assert answer == b"3,4:USERID:UNIX:alice\r\n"
        assert proc.poll() is None
    finally:
        for sock in held:
            sock.close()
        proc.kill()
        proc.wait(10)
    assert any("Too many open files" in line for line in errors)  # really hit, and logged
