"""answer = "pseudonym" proven with real parts (``netns_pseudonym.py`` in a fresh network
namespace): the kernel's socket table, ``aioidentd serve`` on port 113 (privileges
dropped), connections made by real users (games, man), and the IRC servers' own view.

- ngircd A and InspIRCd sit in two address ranges of one named network: both show the
  same ident for games, on every reconnect;
- ngircd B, in another range, shows an unrelated ident; man gets one of its own;
- a channel operator's ban on ``*!<games' ident>@*`` holds across games' reconnects and
  does not touch man;
- ``aioidentd resolve`` names games for the ident;
- the daemon restarted in the next month (``faketime``): games gets a new ident, and
  ``resolve --at`` still names games for each id in its own epoch, and no one outside it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from interop_peers import require_program, run_driver

from support import needs_root

DRIVER_TIMEOUT = 240

pytestmark = needs_root


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    for program in ("ngircd", "inspircd", "faketime"):
        require_program(program)
    return run_driver("netns_pseudonym.py", timeout=DRIVER_TIMEOUT)


def ident(run: dict[str, Any], case: str) -> str:
    result = run["welcome"][case]
    assert result["error"] is None, (case, result, run["daemon_log"], run["log"])
    user: str = result["user"]
    return user


def test_one_network_shows_one_ident_across_reconnects_and_ranges(run: dict[str, Any]) -> None:
    first = ident(run, "a0")
    assert re.fullmatch(r"[a-z][a-z0-9]{9}", first), first  # not ~fallback: accepted as is
    assert ident(run, "a1") == ident(run, "a2") == first
    assert ident(run, "inspircd") == first, "InspIRCd in the network's other range"
    assert f"games (uid 5) replied as '{first}' (pseudonym on network alpha" in run["daemon_log"]


def test_another_network_and_another_user_get_unrelated_idents(run: dict[str, Any]) -> None:
    first = ident(run, "a0")
    elsewhere = ident(run, "b")
    assert re.fullmatch(r"[a-z][a-z0-9]{9}", elsewhere) and elsewhere != first
    assert "(pseudonym on network 10.2.0.0/24" in run["daemon_log"]
    other = ident(run, "other")
    assert re.fullmatch(r"[a-z][a-z0-9]{9}", other) and other not in (first, elsewhere)


def test_an_operators_ban_on_the_ident_holds_across_reconnects(run: dict[str, Any]) -> None:
    first = ident(run, "a0")
    assert f"+b *!{first}@*" in run["ban"], run["ban"]
    joins = run["joins"]
    assert joins["user"] == {**joins["user"], "ident": first, "result": "banned"}, joins
    assert joins["user again"]["ident"] == first and joins["user again"]["result"] == "banned"
    assert joins["other"]["result"] == "joined", joins


def test_resolve_names_the_user(run: dict[str, Any]) -> None:
    found = run["resolve"]["now"]
    assert found["status"] == 0, found
    assert "  games (uid 5)" in found["stdout"] and "on network alpha" in found["stdout"]
    assert found["stdout"].count("(uid ") == 1
    assert run["resolve"]["cut"]["status"] == 0  # an id a server cut to 8 characters
    assert run["resolve"]["other network"]["status"] == 1


def test_after_rotation_the_ident_changes_and_resolve_at_still_names_the_user(
    run: dict[str, Any],
) -> None:
    old, new = ident(run, "a0"), ident(run, "next month")
    assert re.fullmatch(r"[a-z][a-z0-9]{9}", new) and new != old
    outcome = {case: result["status"] for case, result in run["resolve"].items()}
    assert outcome["old id, now"] == 0 and outcome["new id, later"] == 0, run["resolve"]
    assert "games (uid 5)" in run["resolve"]["new id, later"]["stdout"]
    assert outcome["new id, now"] == 1 and outcome["old id, later"] == 1, run["resolve"]


def test_the_key_was_made_private_to_the_daemons_user(run: dict[str, Any]) -> None:
    assert run["key"] == {"mode": "0o400", "uid": 65534}
    assert "created a new pseudonym key" in run["daemon_log"]
