"""The server in a thread (aioidentd.Controller), driven from plain blocking code."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

import aioidentd
from aioidentd import Controller, IdentRequest, IdentServer
from peers import unavailable
from scripted import open_fds
from support import ask, wait_until


def controller_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("aioidentd-controller")]


@pytest.fixture
def identd() -> Iterator[Controller]:
    """The README's fixture: a server on a free port for one test."""
    with aioidentd.serving("127.0.0.1", multiple=True, default="nobody") as controller:
        yield controller


@pytest.fixture
def irc() -> Iterator[socket.socket]:
    """A listening socket standing in for an IRC server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(10)
        yield listener


def ask_about(accepted: socket.socket, ident_port: int) -> bytes:
    """What an IRC server does on accept: ask the peer's identd about this connection."""
    peer_port = accepted.getpeername()[1]
    our_port = accepted.getsockname()[1]
    return ask(ident_port, b"%d, %d\r\n" % (peer_port, our_port))


def test_claims_from_the_main_thread(identd: Controller, irc: socket.socket) -> None:
    irc_port = irc.getsockname()[1]
    sock = identd.create_connection(("127.0.0.1", irc_port), user_id="carol")
    accepted, _ = irc.accept()
    with accepted, sock:
        assert ask_about(accepted, identd.port) == b"%d,%d:USERID:UNIX:carol\r\n" % (
            sock.getsockname()[1],
            irc_port,
        )
        # A plain connection claimed after connecting, from this thread.
        other = socket.create_connection(("127.0.0.1", irc_port))
        second, _ = irc.accept()
        with other, second:
            with identd.claim(other, "dave"):
                assert ask_about(second, identd.port).endswith(b":USERID:UNIX:dave\r\n")
            assert ask_about(second, identd.port).endswith(b":USERID:UNIX:nobody\r\n")


def test_claims_and_handlers_from_other_threads(identd: Controller, irc: socket.socket) -> None:
    irc_port = irc.getsockname()[1]
    socks: list[socket.socket] = []
    seen: list[str] = []

    def handler(request: IdentRequest) -> None:
        seen.append(threading.current_thread().name)
        request.reply("UNIX", "handled")

    def worker(name: str) -> None:
        socks.append(identd.create_connection(("127.0.0.1", irc_port), user_id=name))

    threads = [threading.Thread(target=worker, args=(f"user{i}",)) for i in range(4)]
    registrar = threading.Thread(target=identd.register, args=(handler,))
    for thread in [*threads, registrar]:
        thread.start()
    for thread in [*threads, registrar]:
        thread.join(10)
    answers = {}
    for _ in socks:
        accepted, _ = irc.accept()
        with accepted:
            answers[accepted.getpeername()[1]] = ask_about(accepted, identd.port)
    for sock in socks:
        (name,) = [c.user_id for c in identd.server.claims if c.local == sock.getsockname()]
        assert isinstance(name, str)
        assert answers[sock.getsockname()[1]].endswith(b":USERID:UNIX:%s\r\n" % name.encode())
        sock.close()
    assert [c.user_id for c in identd.server.claims] == []
    # Unclaimed: the handler answers, on the controller's thread.
    assert ask(identd.port, b"40000, 6667\r\n") == b"40000,6667:USERID:UNIX:handled\r\n"
    assert seen and all(name.startswith("aioidentd-controller") for name in seen)
    identd.unregister(handler)
    assert ask(identd.port, b"40000, 6667\r\n") == b"40000,6667:USERID:UNIX:nobody\r\n"


def test_bounded_wait_from_a_blocking_program(irc: socket.socket) -> None:
    with aioidentd.serving(claim_wait=5.0, response_timeout=8.0) as identd:
        irc_port = irc.getsockname()[1]
        with identd.connecting("127.0.0.1"):
            sock = socket.create_connection(("127.0.0.1", irc_port))
            accepted, _ = irc.accept()
            result: list[bytes] = []
            asker = threading.Thread(target=lambda: result.append(ask_about(accepted, identd.port)))
            asker.start()
            # Claim only once the query is held, to prove the wait.
            identd.call(lambda: None)
            wait_until(
                lambda: identd.call(lambda: identd.server._claims.held > 0), what="a held query"
            )
            identd.claim(sock, "late")
        asker.join(10)
        assert result and result[0].endswith(b":USERID:UNIX:late\r\n")
        sock.close()
        accepted.close()


def test_stop_leaves_no_thread_or_socket() -> None:
    before = open_fds()
    controller = Controller(IdentServer("127.0.0.1", 0, multiple=True))
    controller.start()
    assert controller.running and len(controller_threads()) == 1
    # A connection left open by a client does not keep the server alive.
    client = socket.create_connection(("127.0.0.1", controller.port))
    client.sendall(b"1, 2\r\n")
    assert client.recv(100).endswith(b"ERROR:HIDDEN-USER\r\n")
    controller.stop()
    controller.stop()  # twice: nothing
    assert not controller.running
    assert controller_threads() == []
    assert controller.server.sockets == ()
    assert client.recv(100) == b""  # the server closed its end
    client.close()
    assert open_fds() == before


def test_start_failure_is_raised_with_no_thread_left() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        controller = Controller(IdentServer("127.0.0.1", taken.getsockname()[1]))
        with pytest.raises(OSError, match="cannot bind"):
            controller.start()
    assert controller_threads() == []
    assert not controller.running


def test_start_twice_and_stop_from_its_own_thread_are_refused(identd: Controller) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        identd.start()
    with pytest.raises(RuntimeError, match="own thread"):
        identd.call(identd.stop)


def test_run_a_coroutine_on_the_loop(identd: Controller, irc: socket.socket) -> None:
    """open_connection on the controller's loop, the peer's query from this thread."""
    irc_port = irc.getsockname()[1]
    writers = []

    async def connect() -> int:
        _, writer = await identd.server.open_connection("127.0.0.1", irc_port, user_id="eve")
        writers.append(writer)
        return int(writer.get_extra_info("sockname")[1])

    port = identd.run(connect())
    accepted, _ = irc.accept()
    with accepted:
        assert ask_about(accepted, identd.port) == b"%d,%d:USERID:UNIX:eve\r\n" % (
            port,
            irc_port,
        )
    identd.call(writers[0].close)


def test_controller_on_uvloop(irc: socket.socket) -> None:
    try:
        import uvloop
    except ImportError:
        unavailable("uvloop is not installed (pip install -e '.[test]')")
    server = IdentServer("127.0.0.1", 0, multiple=True)
    with Controller(server, loop_factory=uvloop.new_event_loop) as identd:
        assert type(identd.loop).__module__.startswith("uvloop")
        irc_port = irc.getsockname()[1]
        with identd.create_connection(("127.0.0.1", irc_port), user_id="uvuser"):
            accepted, _ = irc.accept()
            with accepted:
                assert ask_about(accepted, identd.port).endswith(b":USERID:UNIX:uvuser\r\n")
    assert controller_threads() == []
