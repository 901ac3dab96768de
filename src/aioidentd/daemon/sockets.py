"""Where the daemon's sockets come from: its own bind, a service manager's hand-over
(systemd socket activation, ``Accept=yes``), or inetd's standard input.

Done first and as root (port 113 needs it), before anything else of the daemon runs; the
rest of the daemon only ever sees ready sockets.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import MutableMapping

from aioidentd.daemon.activation import inherited_sockets, is_listening, stdin_socket
from aioidentd.listener import bind_sockets
from aioidentd.policy import DaemonSettings

__all__ = ["acquire_sockets", "take_inherited"]

logger = logging.getLogger(__name__)

#: The listen backlog of the daemon's own sockets: a burst of IRC connects (a netsplit
#: rejoining) asks many queries at once.
BACKLOG = 1024


def acquire_sockets(
    settings: DaemonSettings,
    *,
    inetd: bool = False,
    environ: MutableMapping[str, str] | None = None,
) -> tuple[list[socket.socket], socket.socket | None]:
    """Listening sockets, or the one connection to serve (inetd, systemd ``Accept=yes``).

    With ``workers > 1`` each worker gets its own ``SO_REUSEPORT`` copy of every listening
    socket, in order (worker 0's, then worker 1's, ...), so the kernel spreads connections
    over the processes. Raises :class:`OSError` (bind) or
    :class:`~aioidentd.errors.ActivationError` (a hand-over that cannot be used).
    """
    if inetd:
        return [], stdin_socket()
    inherited = inherited_sockets(environ)
    if inherited:
        return take_inherited(inherited)
    copies = max(settings.workers, 1)
    socks: list[socket.socket] = []
    port = settings.port
    chooser: list[socket.socket] = []
    try:
        if copies > 1 and port == 0:
            # Every copy is bound to the port by its number: a socket bound to port 0
            # gives its port back when it stops listening, which the supervisor does to
            # the sockets of a worker that waits for its restart (see supervisor.py).
            chooser = bind_sockets(settings.listen, 0, backlog=1, reuse_port=True)
            port = chooser[0].getsockname()[1]
        for _ in range(copies):
            socks.extend(
                bind_sockets(settings.listen, port, backlog=BACKLOG, reuse_port=copies > 1)
            )
            port = socks[0].getsockname()[1]
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    finally:
        for sock in chooser:
            sock.close()
    return socks, None


def take_inherited(
    inherited: list[socket.socket],
) -> tuple[list[socket.socket], socket.socket | None]:
    """What to serve of the sockets systemd passed: all of them when they are listeners;
    with ``Accept=yes``, the first connected one alone (one connection per instance, like
    inetd), every other descriptor closed."""
    connected = next((sock for sock in inherited if not is_listening(sock)), None)
    if connected is not None:
        for sock in inherited:
            if sock is not connected:
                sock.close()
        return [], connected
    logger.info(
        "serving %d socket(s) passed by systemd; 'listen' and 'port' are not used",
        len(inherited),
    )
    return inherited, None
