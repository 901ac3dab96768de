"""A blocking ident exchange for tests that drive a server in another process."""

from __future__ import annotations

import socket


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
