"""Our client against our server, for every answer form the server can send."""

from __future__ import annotations

import pytest

import aioidentd
from aioidentd import ErrorReply, IdentRequest, IdentServer, UserIdReply
from support import both_loops


async def exchange(answer: object, style: str = "compact") -> aioidentd.Reply:
    def handler(request: IdentRequest) -> None:
        if isinstance(answer, tuple):
            request.reply(*answer)
        else:
            request.error(str(answer))

    server = IdentServer("127.0.0.1", 0, handlers=[handler], reply_style=style)  # type: ignore[arg-type]
    async with server:
        return await aioidentd.query("127.0.0.1", 6193, 23, port=server.addresses[0][1], timeout=5)


@pytest.mark.parametrize("style", ["compact", "spaced"])
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (("UNIX", "alice"), UserIdReply(6193, 23, "UNIX", b"alice")),
        (("OTHER", "alice smith"), UserIdReply(6193, 23, "OTHER", b"alice smith")),
        (("OTHER", " leading space"), UserIdReply(6193, 23, "OTHER", b" leading space")),
        (("UNIX", "a:b:c"), UserIdReply(6193, 23, "UNIX", b"a:b:c")),
        (("UNIX", "x" * 512), UserIdReply(6193, 23, "UNIX", b"x" * 512)),
        (("UNIX", "jürgen", "UTF-8"), UserIdReply(6193, 23, "UNIX", "jürgen".encode(), "UTF-8")),
        ("NO-USER", ErrorReply(6193, 23, "NO-USER")),
        ("HIDDEN-USER", ErrorReply(6193, 23, "HIDDEN-USER")),
        ("INVALID-PORT", ErrorReply(6193, 23, "INVALID-PORT")),
        ("UNKNOWN-ERROR", ErrorReply(6193, 23, "UNKNOWN-ERROR")),
        ("X-NOT-TODAY", ErrorReply(6193, 23, "X-NOT-TODAY")),
    ],
)
async def test_every_answer_survives_the_round_trip(
    answer: object, expected: aioidentd.Reply, style: str
) -> None:
    assert await exchange(answer, style) == expected


async def test_fallbacks_reach_the_client() -> None:
    server = IdentServer("127.0.0.1", 0, random=True)
    async with server:
        answer = await aioidentd.query("127.0.0.1", 1, 2, port=server.addresses[0][1])
    assert isinstance(answer, UserIdReply)
    assert answer.opsys == "UNIX" and len(answer.raw) == 8 and answer.raw.isalnum()


@both_loops
async def test_client_reads_our_server_on_either_loop() -> None:
    """uvloop's transports are not asyncio.Transport subclasses: the client's protocol
    must not care."""
    server = aioidentd.IdentServer("127.0.0.1", 0, default="alice")
    async with server:
        answer = await aioidentd.query("127.0.0.1", 6193, 23, port=server.addresses[0][1])
    assert str(answer) == "USERID UNIX alice"
