"""The programs in ``examples/`` run against a real IRC server (ngircd, in a network
namespace so that its ident queries reach port 113 of ours): each connection shows the
identity the program claimed for it in the server's ``001`` welcome mask (``nick!user@host``;
``~bot`` or ``~fallback`` would mean the ident answer was missing or wrong)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from interop_peers import require_program, require_python_package, run_driver

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


# Libraries that open their own connections: the ``irc`` package through its
# connect_factory (claimed before connecting), pydle through connecting() and a claim on
# the writer it exposes. The welcome mask shows the ident ngircd got: ``~bot`` had it not.


def test_irc_package_asyncio_reactor_connect_factory(results: dict[str, Any]) -> None:
    require_python_package("irc")
    run = results["irc_jaraco_aio"]
    assert run["rc"] == 0, run
    assert masks(run["stdout"]) == {"frank": "frank", "grace": "grace"}, run


def test_irc_package_blocking_reactor_connect_factory(results: dict[str, Any]) -> None:
    require_python_package("irc")
    run = results["irc_jaraco_blocking"]
    assert run["rc"] == 0, run
    assert masks(run["stdout"]) == {"heidi": "heidi", "ivan": "ivan"}, run


def test_pydle_claimed_after_it_connects(results: dict[str, Any]) -> None:
    require_python_package("pydle")
    run = results["irc_pydle"]
    assert run["rc"] == 0, run
    assert masks(run["stdout"]) == {"judy": "judy", "mallory": "mallory"}, run
