"""KernelResponder, the daemon's handler, without root: a real IdentServer on loopback, a
StaticLookup standing in for the kernel's socket table, the real policy over a fake user
database. What a querier sees on the wire, and what the log says."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import textwrap
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from aioidentd import ErrorReply, IdentServer, UserIdReply
from aioidentd.daemon import KernelResponder
from aioidentd.errors import SocketLookupError
from aioidentd.lookup import StaticLookup
from aioidentd.policy import REPLY_FILE, Policy, parse_config
from aioidentd.protocol import Address
from support import FakeUserDB
from support import query_server as ask

ALICE, BOB = 1000, 1001
DB = FakeUserDB(
    {0: ("root", "/root", ["root"]), ALICE: ("alice", None, ["alice"]), BOB: ("bob", None, [])}
)
#: The querier's side of every query: the ident client binds this source address.
QUERIER = "127.0.0.1"


@asynccontextmanager
async def identd(
    lookup: object, config: str = "", *, log_queries: bool = False
) -> AsyncIterator[tuple[IdentServer, KernelResponder]]:
    policy = Policy(parse_config(textwrap.dedent(config), "test.toml"), user_db=DB)
    responder = KernelResponder(lookup, policy, log_queries=log_queries)  # type: ignore[arg-type]
    async with IdentServer("127.0.0.1", 0, handlers=[responder], response_timeout=5) as server:
        yield server, responder


def connection(server_port: int, client_port: int) -> tuple[Address, Address]:
    """The 4-tuple the RFC's rule names for a query: our end is the address the query
    arrived on with the server port, the other is the querier's with the client port."""
    return ("127.0.0.1", server_port), (QUERIER, client_port)


async def test_the_owner_of_the_connection_is_answered_by_the_policy() -> None:
    lookup = StaticLookup({connection(6667, 40001): ALICE, connection(6667, 40002): 0})
    async with identd(lookup) as (server, _):
        assert await ask(server, 6667, 40001) == UserIdReply(6667, 40001, "UNIX", b"alice")
        # root is hidden by the built-in policy
        assert await ask(server, 6667, 40002) == ErrorReply(6667, 40002, "HIDDEN-USER")


async def test_a_connection_nobody_owns_is_no_user() -> None:
    async with identd(StaticLookup({connection(6667, 40001): ALICE})) as (server, _):
        assert await ask(server, 6667, 40009) == ErrorReply(6667, 40009, "NO-USER")
        # The same ports from another querier name another connection.
        assert await ask(server, 40001, 6667) == ErrorReply(40001, 6667, "NO-USER")


async def test_v4_mapped_spellings_are_one_connection() -> None:
    lookup = StaticLookup({(("::ffff:127.0.0.1", 6667), ("::ffff:127.0.0.1", 40001)): BOB})
    async with identd(lookup) as (server, _):
        assert await ask(server, 6667, 40001) == UserIdReply(6667, 40001, "UNIX", b"bob")


class FailingLookup:
    blocking = False

    def owner(self, local: Address, remote: Address) -> int | None:
        raise SocketLookupError("sock_diag went away")


async def test_a_failed_lookup_is_unknown_error_never_a_guess(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="aioidentd.daemon.responder"):
        async with identd(FailingLookup()) as (server, _):
            assert await ask(server, 6667, 40001) == ErrorReply(6667, 40001, "UNKNOWN-ERROR")
    assert "sock_diag went away" in caplog.text


class BlockingLookup(StaticLookup):
    """A lookup that says it may block (like a /proc scan): it must run off the loop."""

    blocking = True

    def __init__(self, table: dict[tuple[Address, Address], int]) -> None:
        super().__init__(table)
        self.threads: list[threading.Thread] = []

    def owner(self, local: Address, remote: Address) -> int | None:
        self.threads.append(threading.current_thread())
        return super().owner(local, remote)


async def test_a_blocking_lookup_runs_off_the_event_loop() -> None:
    lookup = BlockingLookup({connection(6667, 40001): ALICE})
    async with identd(lookup) as (server, _):
        assert await ask(server, 6667, 40001) == UserIdReply(6667, 40001, "UNIX", b"alice")
    assert lookup.threads and threading.main_thread() not in lookup.threads


async def test_queries_are_logged_when_asked_and_spoofed_answers_always(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = """
        [user.bob]
        answer = "fixed"
        reply = "robert"
    """
    lookup = StaticLookup({connection(6667, 40001): ALICE, connection(6667, 40002): BOB})
    with caplog.at_level(logging.INFO, logger="aioidentd.daemon.responder"):
        async with identd(lookup, config) as (server, _):
            await ask(server, 6667, 40001)  # plain: not logged
            assert await ask(server, 6667, 40002) == UserIdReply(6667, 40002, "UNIX", b"robert")
    (line,) = [record.getMessage() for record in caplog.records]  # only the spoofed one
    assert line.startswith(f"{QUERIER}:")
    assert line.endswith(
        f"asked 6667,40002: bob (uid {BOB}) replied as 'robert' (fixed, [user.bob])"
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="aioidentd.daemon.responder"):
        async with identd(lookup, config, log_queries=True) as (server, _):
            await ask(server, 6667, 40001)
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.endswith(
        f"asked 6667,40001: alice (uid {ALICE}) replied as 'alice' (username, built-in default)"
    )


async def test_a_reloaded_policy_applies_to_the_next_query() -> None:
    """SIGHUP swaps the responder's policy; the next query follows the new one."""
    lookup = StaticLookup({connection(6667, 40001): ALICE})
    async with identd(lookup) as (server, responder):
        assert await ask(server, 6667, 40001) == UserIdReply(6667, 40001, "UNIX", b"alice")
        responder.policy = Policy(parse_config('[default]\nanswer = "uid"\n'), user_db=DB)
        assert await ask(server, 6667, 40001) == UserIdReply(6667, 40001, "UNIX", b"1000")


async def test_the_query_log_says_which_rule_decided_and_why_a_lookup_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = """
        [[rule]]
        remote_port = "40000-40005"
        answer = "uid"
    """
    lookup = StaticLookup({connection(6667, 40001): ALICE})
    with caplog.at_level(logging.INFO, logger="aioidentd.daemon.responder"):
        async with identd(lookup, config, log_queries=True) as (server, _):
            assert await ask(server, 6667, 40001) == UserIdReply(6667, 40001, "UNIX", b"1000")
        async with identd(FailingLookup(), log_queries=True) as (server, _):
            assert await ask(server, 6667, 40001) == ErrorReply(6667, 40001, "UNKNOWN-ERROR")
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].endswith(
        f"asked 6667,40001: alice (uid {ALICE}) replied as '1000' "
        f"(uid, [[rule]] #1 matched: remote port 40000-40005)"
    )
    # The rate-limited warning, then the query's line.
    assert (
        lines[1] == "the lookup of 127.0.0.1:6667 <-> 127.0.0.1:40001 failed: sock_diag went away"
    )
    assert lines[2].endswith(
        "asked 6667,40001: lookup failed: UNKNOWN-ERROR (lookup-failed, sock_diag went away)"
    )


async def _flood(server: IdentServer, server_port: int, client_port: int, count: int) -> set[bytes]:
    """``count`` queries on one connection, as fast as the server reads them; the set of
    answer lines (without their port pairs)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0][1])
    writer.write(b"%d,%d\r\n" % (server_port, client_port) * count)
    answers = set()
    for _ in range(count):
        line = await asyncio.wait_for(reader.readline(), 10)
        answers.add(line.partition(b":")[2])
    writer.close()
    await writer.wait_closed()
    return answers


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the policy and the responder logged (not the server's own start and stop),
    the querier's port written as PORT."""
    return [
        re.sub(rf"^{QUERIER}:\d+ ", f"{QUERIER}:PORT ", record.getMessage())
        for record in caplog.records
        if record.name != "aioidentd.server"
    ]


async def test_a_local_user_cannot_flood_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A user who queries their own connection over and over, with a reply file that is
    refused and then with one that is used (a spoofed answer, logged with the real user
    even with log_queries off), gets the first line of each kind in full and then a
    count; another user's first line still comes through in full. Before the rate limit,
    600 queries wrote 600 lines."""
    alice = 1000 if os.geteuid() == 0 else os.getuid()
    bob = alice + 1
    home = tmp_path / "alice"
    home.mkdir()
    home.chmod(0o711)
    reply_file = home / REPLY_FILE

    def write_reply(text: str) -> None:
        reply_file.write_text(text)
        reply_file.chmod(0o644)
        if os.geteuid() == 0:
            os.chown(reply_file, alice, -1)

    write_reply("bad:id\n")
    db = FakeUserDB({alice: ("alice", str(home), ["alice"]), bob: ("bob", None, ["bob"])})
    config = parse_config("[default]\nallow_user_reply = true\n")
    policy = Policy(config, user_db=db, geteuid=lambda: 65534)
    lookup = StaticLookup({connection(6667, 40001): alice, connection(6667, 40002): bob})
    responder = KernelResponder(lookup, policy)
    floods = 300
    with caplog.at_level(logging.INFO):
        async with IdentServer(
            "127.0.0.1", 0, handlers=[responder], multiple=True, response_timeout=10
        ) as server:
            assert await _flood(server, 6667, 40001, floods) == {b"USERID:UNIX:alice\r\n"}
            # A new reason (the file's content is in it) is counted too, not a new line.
            write_reply("other:id\n")
            assert await _flood(server, 6667, 40001, 1) == {b"USERID:UNIX:alice\r\n"}
            assert await ask(server, 6667, 40002) == UserIdReply(6667, 40002, "UNIX", b"bob")
            write_reply("wonder\n")
            assert await _flood(server, 6667, 40001, floods) == {b"USERID:UNIX:wonder\r\n"}
        during = _lines(caplog)
        responder.close()
    after = _lines(caplog)[len(during) :]
    who = f"alice (uid {alice})"
    assert during == [
        f"not using the reply file of {who}: invalid reply: user id must not contain ':' "
        f"(clients count colons): 'bad:id'",
        f"not using the reply file of bob (uid {bob}): the user has no home directory",
        f"{QUERIER}:PORT asked 6667,40001: {who} replied as 'wonder' "
        f"(user-reply, ~/.aioidentd-reply allowed by built-in default)",
    ]
    # What was not written is counted, per user and kind, when the interval ends (here:
    # at close), so the administrator still learns how often.
    assert {re.sub(r"in the last \d+ s", "in the last N s", line) for line in after} == {
        f"{floods} more 'reply file not used' lines for {who} in the last N s (one line per 10 s)",
        f"{floods - 1} more spoofed-answer lines for {who} in the last N s (one line per 10 s)",
    }
    assert len(after) == 2
