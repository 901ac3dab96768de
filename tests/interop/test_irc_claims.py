"""Real IRC servers (ngircd, InspIRCd) ask about connections our application claimed.

Each server runs with our IdentServer in a fresh network namespace (``netns_claims.py``),
with no handler and the fallback ``anon``, for ROUNDS rounds of simultaneous connections
(see the driver): several ``IdentServer.open_connection`` connections under different ids,
over IPv4 and IPv6; one claimed only after connecting, its query held by the bounded wait;
one never claimed. Both servers ask the moment they accept, so each round is a race
between their query and our claim; a claim that lost it would show as ``anon`` (or
``~fallback``) in the ``001`` welcome mask instead of the claimed id.

Seen: ngircd 26.1 and InspIRCd 3.15.0 both do their ident lookup over IPv6 too. The driver
also checks claims on a link-local connection (no IRC server involved: the asker is ours).
"""

from __future__ import annotations

from typing import Any

import pytest
from interop_peers import require_program, run_driver

from peers import unavailable

SERVERS = ("ngircd", "inspircd")
#: Rounds per server: 8 simultaneous connections each, fresh source addresses every round.
#: InspIRCd takes about 1 s per round (its own registration pace), ngircd much less.
ROUNDS = 10
DRIVER_TIMEOUT = 120


@pytest.fixture(scope="module", params=SERVERS)
def claim_results(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    server: str = request.param
    require_program(server)
    data = run_driver("netns_claims.py", server, str(ROUNDS), timeout=DRIVER_TIMEOUT)
    return server, data


def test_every_connection_shows_its_claimed_id(claim_results: tuple[str, dict[str, Any]]) -> None:
    server, data = claim_results
    assert len(data["rounds"]) == ROUNDS
    wrong = [
        (number, case, result)
        for number, cases in enumerate(data["rounds"])
        for case, result in cases.items()
        if result["error"] is not None or result["user"] != result["expected"]
    ]
    assert not wrong, f"{server}: {wrong}\n--- {server} log ---\n{data['log']}"


def test_ipv6_connections_were_part_of_it(claim_results: tuple[str, dict[str, Any]]) -> None:
    server, data = claim_results
    if not data["ipv6"]:
        unavailable("no IPv6 in the network namespace (kernel without IPv6?)")
    for cases in data["rounds"]:
        assert {"v6-0", "v6-1"} <= set(cases), server


def test_claim_after_connect_was_held_and_answered(
    claim_results: tuple[str, dict[str, Any]],
) -> None:
    server, data = claim_results
    for cases in data["rounds"]:
        assert cases["late"]["held"] is True, (server, cases["late"])
        assert cases["late"]["user"] == cases["late"]["expected"], (server, cases["late"])


def test_unclaimed_connection_gets_the_fallback(claim_results: tuple[str, dict[str, Any]]) -> None:
    server, data = claim_results
    for cases in data["rounds"]:
        assert cases["unclaimed"]["user"] == "anon", (server, cases["unclaimed"])


def test_no_claim_outlives_its_connection(claim_results: tuple[str, dict[str, Any]]) -> None:
    _server, data = claim_results
    assert data["live_claims"] == 0


def test_link_local_claims_carry_the_interface(claim_results: tuple[str, dict[str, Any]]) -> None:
    """fe80::b%ll0 -> fe80::a%ll0: matched with the interface's scope, whether the claim
    came from the socket, names the interface, or has no scope at all."""
    _server, data = claim_results
    if not data["ipv6"]:
        unavailable("no IPv6 in the network namespace (kernel without IPv6?)")
    assert data["linklocal"] == {
        "open_connection": "USERID UNIX linklocal",
        "explicit_named_scope": "USERID UNIX named",
        "explicit_no_scope": "USERID UNIX unscoped",
        "unclaimed": "USERID UNIX anon",
    }


def test_claims_behind_the_readme_port_113_redirect(
    claim_results: tuple[str, dict[str, Any]],
) -> None:
    """nftables ``tcp dport 113 redirect to :1113``: the query reaches our server on 1113
    at the loopback address, and the claim still matches (by the address the query was
    sent to, read back with SO_ORIGINAL_DST)."""
    server, data = claim_results
    redirect = data["redirect"]
    if "error" in redirect:
        unavailable(redirect["error"])
    users = {case: (result["user"], result["error"]) for case, result in redirect.items()}
    expected = {"v4": ("redir4", None), "unclaimed": ("anon", None)}
    if data["ipv6"]:
        expected["v6"] = ("redir6", None)
    assert users == expected, (server, redirect)
