"""NAT, proven with three network namespaces (``netns_nat.py``): an inner host, a
gateway that masquerades, and ngircd outside. ngircd's ``001`` mask shows the inner user,
found by the gateway's daemon in connection tracking and answered by the inner host's
identd (ours with a PROXY header, and Debian's oidentd in its forwarding-proxy mode), or
by a static ``[[nat]]`` entry."""

from __future__ import annotations

from typing import Any

import pytest
from interop_peers import require_program, run_driver

from support import needs_root

pytestmark = needs_root

DRIVER_TIMEOUT = 150


@pytest.fixture(scope="module")
def nat() -> dict[str, Any]:
    for program in ("ngircd", "oidentd", "nft", "nsenter"):
        require_program(program)
    return run_driver("netns_nat.py", timeout=DRIVER_TIMEOUT)


def users(data: dict[str, Any], case: str) -> dict[str, str | None]:
    return {family: result["user"] for family, result in data["cases"][case].items()}


def test_the_inner_identd_ours_answers_through_the_gateway(nat: dict[str, Any]) -> None:
    assert users(nat, "ours") == {"v4": "games", "v6": "games"}, nat["logs"]
    gateway = nat["logs"]["gateway"]
    assert "inner host 10.0.0.2:" in gateway and "replied as 'games' (nat-forward" in gateway
    assert "inner host [fd00:10::2]:" in gateway
    # The inner daemon saw the real querier (ngircd's address), from the PROXY header.
    assert "203.0.113.1:" in nat["logs"]["inner"]


def test_the_inner_identd_oidentd_answers_through_the_gateway(nat: dict[str, Any]) -> None:
    assert users(nat, "oidentd") == {"v4": "games"}, nat["logs"]
    assert "[10.0.0.1] Successful lookup:" in nat["logs"]["inner"]


def test_a_static_map_answers_without_an_inner_identd(nat: dict[str, Any]) -> None:
    assert users(nat, "static") == {"v4": "innerstatic", "v6": "innerstatic"}, nat["logs"]


def test_worker_processes_each_find_translations(nat: dict[str, Any]) -> None:
    """Every query through a gateway of two worker processes (each with its own conntrack
    helper) gets the inner user, whichever worker the kernel gave it to."""
    found = users(nat, "workers")
    assert len(found) == 6 and set(found.values()) == {"games"}, nat["logs"]
