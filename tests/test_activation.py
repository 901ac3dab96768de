"""What the daemon takes from a service manager's hand-over (systemd, inetd), without
root and without a service manager: real sockets, handed over as the daemon receives them."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from aioidentd.daemon import activation
from aioidentd.daemon.sockets import take_inherited
from aioidentd.errors import ActivationError
from support import ENV


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def test_accept_yes_serves_the_connection_and_closes_the_listener(
    listener: socket.socket,
) -> None:
    """systemd ``Accept=yes`` with a listener passed first: the connection is served (open),
    the listener is closed, not leaked (it used to be the other way round)."""
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    with client, accepted:
        listeners, connected = take_inherited([listener, accepted])
        assert listeners == []
        assert connected is accepted
        assert accepted.fileno() != -1  # still open: it is the one to serve
        assert listener.fileno() == -1  # closed: nothing serves it
        client.sendall(b"x")
        assert accepted.recv(1) == b"x"


def test_accept_yes_closes_every_other_descriptor(listener: socket.socket) -> None:
    clients = [socket.create_connection(listener.getsockname()) for _ in range(2)]
    accepted = [listener.accept()[0] for _ in clients]
    try:
        listeners, connected = take_inherited([*accepted, listener])
        assert (listeners, connected) == ([], accepted[0])
        assert accepted[0].fileno() != -1
        assert accepted[1].fileno() == -1 and listener.fileno() == -1
    finally:
        for sock in (*clients, *accepted):
            sock.close()


def test_listeners_alone_are_all_served(listener: socket.socket) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        listeners, connected = take_inherited([listener, other])
        assert listeners == [listener, other] and connected is None
        assert listener.fileno() != -1 and other.fileno() != -1


# -- systemd's LISTEN_FDS -------------------------------------------------------------------


@pytest.fixture
def passed_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., int]]:
    """Put descriptors where systemd would (consecutive numbers from LISTEN_FDS_START): each
    given file is duplicated onto a free block of high descriptors, the start of which
    becomes the module's LISTEN_FDS_START."""
    placed: list[int] = []

    def place(*files: socket.socket | int) -> int:
        start = 800
        while any(_is_open(fd) for fd in range(start, start + len(files))):
            start += 16
        for offset, item in enumerate(files):
            fd = item if isinstance(item, int) else item.fileno()
            os.dup2(fd, start + offset, inheritable=False)
            placed.append(start + offset)
        monkeypatch.setattr(activation, "LISTEN_FDS_START", start)
        return start

    yield place
    for fd in placed:
        with contextlib.suppress(OSError):
            os.close(fd)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _environ(count: int, pid: int | None = None) -> dict[str, str]:
    return {
        "LISTEN_PID": str(os.getpid() if pid is None else pid),
        "LISTEN_FDS": str(count),
        "LISTEN_FDNAMES": "ident",
        "OTHER": "kept",
    }


def test_systemd_listeners_are_taken_and_the_variables_removed(
    listener: socket.socket, passed_at: Callable[..., int]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        start = passed_at(listener, other)
        environ = _environ(2)
        socks = activation.inherited_sockets(environ)
        names = [listener.getsockname(), other.getsockname()]
    assert [sock.fileno() for sock in socks] == [start, start + 1]
    assert [sock.getsockname() for sock in socks] == names
    assert all(activation.is_listening(sock) for sock in socks)
    assert environ == {"OTHER": "kept"}  # children must not take the sockets for theirs
    for sock in socks:
        sock.detach()  # the fixture closes the descriptors


def test_no_hand_over_or_one_meant_for_another_process_is_nothing() -> None:
    assert activation.inherited_sockets({}) == []
    environ = _environ(1, pid=os.getpid() + 1)
    assert activation.inherited_sockets(environ) == []
    assert "LISTEN_FDS" not in environ


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, "bad LISTEN_PID/LISTEN_FDS: 'x'/'1'"),
        (_environ(0), "LISTEN_FDS=0: no socket was passed"),
    ],
)
def test_a_broken_hand_over_is_a_clear_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ActivationError, match=re.escape(message)):
        activation.inherited_sockets(environ)


def test_a_descriptor_that_is_not_a_tcp_socket_is_refused(
    passed_at: Callable[..., int],
) -> None:
    read_end, write_end = os.pipe()
    try:
        start = passed_at(read_end)
        with pytest.raises(ActivationError, match=f"descriptor {start} .* is not a socket"):
            activation.inherited_sockets(_environ(1))
    finally:
        os.close(read_end)
        os.close(write_end)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        start = passed_at(udp)
        with pytest.raises(ActivationError, match=f"descriptor {start} is not a TCP socket"):
            activation.inherited_sockets(_environ(1))


# -- inetd's standard input ------------------------------------------------------------------

STDIN_SOCKET = (
    "from aioidentd.daemon.activation import stdin_socket\n"
    "from aioidentd.errors import ActivationError\n"
    "try:\n"
    "    sock = stdin_socket()\n"
    "except ActivationError as exc:\n"
    "    print('refused:', exc)\n"
    "else:\n"
    "    print('peer:', sock.getpeername()[1])\n"
)


def _stdin_socket(stdin: socket.socket | int) -> str:
    """What ``stdin_socket()`` makes of ``stdin`` in a child process (fd 0 is the point)."""
    done = subprocess.run(
        [sys.executable, "-c", STDIN_SOCKET],
        env=ENV,
        stdin=stdin if isinstance(stdin, int) else stdin.fileno(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    output: str = done.stdout.strip()
    return output


def test_inetd_connection_on_standard_input(listener: socket.socket) -> None:
    with socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            assert _stdin_socket(accepted) == f"peer: {client.getsockname()[1]}"


def test_inetd_mode_refuses_anything_but_a_connection(listener: socket.socket) -> None:
    assert _stdin_socket(subprocess.DEVNULL) == (
        "refused: inetd mode needs a TCP connection as standard input"
    )
    assert _stdin_socket(listener) == (
        "refused: standard input is a listening socket, not a connection"
    )
