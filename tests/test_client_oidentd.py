"""The client against Debian's real oidentd: a static reply, real kernel lookups of
connections this test owns, and query_connection the way an IRC server uses it."""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import aioidentd
import support
from aioidentd import ErrorReply, UserIdReply
from peers import NOBODY, OIDENTD, Peer, oidentd_argv, oidentd_version, require, running

# oidentd forks a child per query and only answers about connections to the querier's
# address, so everything happens on 127.0.0.1.
HOST = "127.0.0.1"


@pytest.fixture(scope="module", autouse=True)
def _oidentd_installed() -> None:
    require(OIDENTD, "oidentd")


@pytest.fixture
def config() -> Iterator[Path]:
    """A private oidentd.conf: the machine's /etc/oidentd.conf may hide root or spoof, and
    these tests should mean the same everywhere. Root's connections are hidden here on
    purpose, to see a real HIDDEN-USER (the other tests use a child running as nobody)."""
    # oidentd reads it after dropping to nobody, so pytest's private tmp_path will not do.
    with tempfile.TemporaryDirectory(prefix="oidentd-") as directory:
        os.chmod(directory, 0o755)
        path = Path(directory) / "oidentd.conf"
        path.write_text(
            "default {\n\tdefault {\n\t\tdeny spoof\n\t\tdeny hide\n\t}\n}\n"
            "user root {\n\tdefault {\n\t\tforce hide\n\t}\n}\n"
        )
        path.chmod(0o644)
        yield path


@pytest.fixture
def oidentd(config: Path) -> Iterator[Peer]:
    with running(lambda port: oidentd_argv(port, config=config, host=HOST)) as peer:
        yield peer


@pytest.fixture
def static_oidentd() -> Iterator[Peer]:
    with running(lambda port: oidentd_argv(port, "-R", "alice", host=HOST)) as peer:
        yield peer


def test_oidentd_version() -> None:
    assert oidentd_version().startswith("oidentd ")


async def test_static_reply(static_oidentd: Peer) -> None:
    answer = await aioidentd.query(HOST, 6191, 23, port=static_oidentd.port)
    assert answer == UserIdReply(6191, 23, "UNIX", b"alice")
    assert str(answer) == "USERID UNIX alice"


async def test_unknown_connection_is_no_user(oidentd: Peer) -> None:
    with socket.socket() as unused:
        unused.bind((HOST, 0))  # bound, not connected: no connection owns this port
        port = unused.getsockname()[1]
        answer = await aioidentd.query(HOST, port, 1, port=oidentd.port)
    assert answer == ErrorReply(port, 1, "NO-USER")


async def test_own_connection(oidentd: Peer) -> None:
    """A connection owned by this process: its user name, or HIDDEN-USER for root (the
    private config hides root, as Debian's sample config recommends)."""
    with (
        socket.create_server((HOST, 0)) as listener,
        socket.create_connection(listener.getsockname()) as ours,
    ):
        accepted, _ = listener.accept()
        with accepted:
            # On the ident host (here), our side of it is `ours`: that is the server port;
            # the other end's port is the client port.
            server_port = ours.getsockname()[1]
            client_port = listener.getsockname()[1]
            answer = await aioidentd.query(HOST, server_port, client_port, port=oidentd.port)
    if os.geteuid() == 0:
        assert answer == ErrorReply(server_port, client_port, "HIDDEN-USER"), oidentd.log()
    else:
        name = pwd.getpwuid(os.geteuid()).pw_name
        assert answer == UserIdReply(server_port, client_port, "UNIX", name.encode())


@pytest.fixture
def connection_as_nobody() -> Iterator[tuple[socket.socket, int]]:
    """:func:`support.connection_as_nobody` as a fixture."""
    with support.connection_as_nobody(HOST) as connection:
        yield connection


async def test_connection_of_another_user(
    oidentd: Peer, connection_as_nobody: tuple[socket.socket, int]
) -> None:
    accepted, child_port = connection_as_nobody
    our_port = accepted.getsockname()[1]
    answer = await aioidentd.query(HOST, child_port, our_port, port=oidentd.port)
    name = pwd.getpwuid(NOBODY).pw_name
    assert answer == UserIdReply(child_port, our_port, "UNIX", name.encode()), oidentd.log()


async def test_query_connection_like_an_irc_server(
    oidentd: Peer, connection_as_nobody: tuple[socket.socket, int]
) -> None:
    """The IRC use: the server accepts a user's connection and asks the user's identd."""
    accepted, child_port = connection_as_nobody
    answer = await aioidentd.query_connection(accepted, port=oidentd.port)
    assert isinstance(answer, UserIdReply), oidentd.log()
    assert (answer.server_port, answer.client_port) == (child_port, accepted.getsockname()[1])
    assert answer.user_id == pwd.getpwuid(NOBODY).pw_name


async def test_many_concurrent_queries(static_oidentd: Peer) -> None:
    answers = await asyncio.gather(
        *(aioidentd.query(HOST, 1000 + i, 2000 + i, port=static_oidentd.port) for i in range(50))
    )
    assert answers == [UserIdReply(1000 + i, 2000 + i, "UNIX", b"alice") for i in range(50)]
