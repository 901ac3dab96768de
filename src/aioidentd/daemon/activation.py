"""Sockets handed to us by a service manager: systemd socket activation and inetd.

systemd passes listening sockets as descriptors 3, 4, ... and says so in ``LISTEN_PID``
and ``LISTEN_FDS`` (sd_listen_fds(3)); inetd (or systemd with ``Accept=yes``) runs us with
one connected socket as standard input. Either way the privileged bind happened
elsewhere, so the daemon never needs root.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import MutableMapping

from aioidentd.errors import ActivationError

__all__ = ["ActivationError", "inherited_sockets", "is_listening", "stdin_socket"]

LISTEN_FDS_START = 3


def inherited_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The sockets systemd passed to this process, or ``[]`` when none were.

    The variables are removed from ``environ`` (as sd_listen_fds does with ``unset``) so
    that child processes do not take the sockets for theirs.
    """
    env = os.environ if environ is None else environ
    pid_text, count_text = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if pid_text is None or count_text is None:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    try:
        pid, count = int(pid_text), int(count_text)
    except ValueError:
        raise ActivationError(f"bad LISTEN_PID/LISTEN_FDS: {pid_text!r}/{count_text!r}") from None
    if pid != os.getpid():
        return []  # meant for another process (we were started by the activated one)
    if count < 1:
        raise ActivationError(f"LISTEN_FDS={count}: no socket was passed")
    socks = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise ActivationError(f"descriptor {fd} from LISTEN_FDS: {exc.strerror}") from None
        if not stat.S_ISSOCK(mode):
            raise ActivationError(f"descriptor {fd} from LISTEN_FDS is not a socket")
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or sock.family not in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            raise ActivationError(f"descriptor {fd} is not a TCP socket")
        socks.append(sock)
    return socks


def is_listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def stdin_socket() -> socket.socket:
    """Standard input as the one connected TCP socket of inetd mode."""
    try:
        mode = os.fstat(0).st_mode
    except OSError as exc:
        raise ActivationError(f"standard input: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ActivationError("inetd mode needs a TCP connection as standard input")
    sock = socket.socket(fileno=os.dup(0))
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.close()
        raise ActivationError("inetd mode needs a TCP connection as standard input")
    if is_listening(sock):
        sock.close()
        raise ActivationError("standard input is a listening socket, not a connection")
    return sock
