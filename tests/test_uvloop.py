"""The server on uvloop (the optional ``uvloop`` extra): its transports are not
``asyncio.Transport`` subclasses and it has no ``_make_socket_transport``, so the accept
path and the connection code take other branches there."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import test_server
from peers import unavailable

try:
    import uvloop
except ImportError:  # pragma: no cover - the test extra installs it
    uvloop = None

Case = Callable[[], Coroutine[Any, Any, None]]

CASES: list[Case] = [
    test_server.test_t01_userid_from_a_synchronous_handler,
    test_server.test_t02_hidden_user_when_no_handler_answers,
    test_server.test_t03_garbage_gets_invalid_port_and_no_handler_call,
    test_server.test_async_handler_answers_later,
    test_server.test_multiple_answers_pipelined_queries_in_order,
    test_server.test_single_mode_answers_once_and_closes_gracefully,
    functools.partial(test_server.test_half_close_still_gets_the_answer, True),
    functools.partial(test_server.test_half_close_still_gets_the_answer, False),
    test_server.test_idle_connection_is_closed_silently,
    test_server.test_connection_limit_evicts_the_connection_silent_longest,
    test_server.test_pending_limit_applies_backpressure_without_losing_queries,
    test_server.test_close_answers_waiting_queries_and_releases_everything,
    test_server.test_a_client_that_never_reads_is_no_longer_read_and_loses_nothing,
    test_server.test_a_silent_connection_gets_the_first_query_deadline,
    test_server.test_close_reads_and_answers_queries_sent_but_not_yet_read,
    test_server.test_close_answers_what_handlers_do_not_answer_at_once_with_the_fallback,
    test_server.test_connection_limit_refuses_when_every_connection_waits_for_an_answer,
]


def _name(case: Case) -> str:
    if isinstance(case, functools.partial):
        return f"{case.func.__name__}{case.args}"
    return case.__name__


@pytest.mark.parametrize("case", CASES, ids=_name)
def test_server_on_uvloop(case: Case) -> None:
    if uvloop is None:
        unavailable("uvloop is not installed (pip install -e '.[test]')")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        runner.run(asyncio.wait_for(case(), 60))


def test_client_on_uvloop() -> None:
    if uvloop is None:
        unavailable("uvloop is not installed (pip install -e '.[test]')")

    async def scenario() -> None:
        import aioidentd

        server = aioidentd.IdentServer("127.0.0.1", 0, default="alice")
        async with server:
            answer = await aioidentd.query("127.0.0.1", 6193, 23, port=server.addresses[0][1])
        assert str(answer) == "USERID UNIX alice"

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))
