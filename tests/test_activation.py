"""What the daemon takes from a service manager's hand-over (systemd, inetd), without
root and without a service manager: real sockets, handed over as the daemon receives them."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from aioidentd.daemon.sockets import take_inherited


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
