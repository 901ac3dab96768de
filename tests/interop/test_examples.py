"""The programs in ``examples/`` run against a real IRC server (ngircd, in a network
namespace so that its ident queries reach port 113 of ours): each connection shows the
identity the program claimed for it in the server's ``001`` welcome mask (``nick!user@host``;
``~bot`` or ``~fallback`` would mean the ident answer was missing or wrong)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from interop_peers import require_program, run_driver

DRIVER_TIMEOUT = 150


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    require_program("ngircd")
    data = run_driver("netns_examples.py", timeout=DRIVER_TIMEOUT)
    return data


def masks(stdout: str) -> dict[str, str]:
    """``name -> user`` from the examples' ``name: <001 line>`` output."""
    found = {}
    for line in stdout.splitlines():
        match = re.match(r"(\w+): .* (\S+)!(\S+)@\S+$", line)
        if match:
            found[match.group(1)] = match.group(3)
    return found


def test_asyncio_bot_two_connections_two_identities(results: dict[str, Any]) -> None:
    bot = results["irc_bot"]
    assert bot["rc"] == 0, bot
    assert masks(bot["stdout"]) == {"alice": "alice", "bob": "bob"}, bot


def test_synchronous_program_with_the_controller(results: dict[str, Any]) -> None:
    sync = results["sync_bot"]
    assert sync["rc"] == 0, sync
    assert masks(sync["stdout"]) == {"carol": "carol"}, sync


def test_bouncer_claims_for_each_user(results: dict[str, Any]) -> None:
    bouncer = results["bouncer"]
    clients = bouncer["clients"]
    assert [(c["name"], c["user"], c["error"]) for c in clients] == [
        ("dave", "dave", None),
        ("dave", "dave", None),
        ("erin", "erin", None),
    ], bouncer
    assert "ERROR :send PASS <user> first" in bouncer["refused"], bouncer
    assert "Traceback" not in bouncer["stderr"], bouncer
