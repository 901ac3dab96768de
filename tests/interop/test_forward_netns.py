"""The host daemon forwards to an application's own identd, proven with real parts: the
kernel's socket table, ``aioidentd serve`` on port 113 (privileges dropped), an
application run by an unprivileged user embedding ``IdentServer`` on a loopback port,
and ngircd asking about every connection (``netns_forward.py`` in a fresh namespace).

ngircd's ``001`` welcome mask shows the id it accepted: the application's claimed id for
each of its connections (carried through a PROXY v2 header, since ngircd asks from
another address than the daemon's forward comes from), the user's own answer where the
application does not know the connection, and the real user for other users, whose
connections never reach the application's identd.
"""

from __future__ import annotations

from typing import Any

import pytest
from interop_peers import require_program, run_driver

from support import needs_root

DRIVER_TIMEOUT = 120

pytestmark = needs_root


@pytest.fixture(scope="module")
def forward() -> dict[str, Any]:
    require_program("ngircd")
    return run_driver("netns_forward.py", timeout=DRIVER_TIMEOUT)


def shown(data: dict[str, Any], case: str) -> str | None:
    result = data["app"][case]
    assert result["error"] is None, (case, result, data["daemon_log"], data["log"])
    user: str | None = result["user"]
    return user


def test_each_application_connection_shows_its_claimed_id(forward: dict[str, Any]) -> None:
    assert shown(forward, "appone") == "appone", forward["daemon_log"]
    assert shown(forward, "apptwo") == "apptwo", forward["daemon_log"]
    assert (
        "replied as 'appone' (forward, forward to 127.0.0.1:10113 (PROXY v2)"
        in (forward["daemon_log"])
    )


def test_a_connection_the_application_does_not_know_gets_the_users_own_answer(
    forward: dict[str, Any],
) -> None:
    assert shown(forward, "unclaimed") == "games"
    port = forward["ports"]["unclaimed"]
    # The application was asked, as the real querier (ngircd's address), and said NO-USER.
    assert forward["app_asked"] == [[port, 16667, "127.0.0.2"]]
    assert "it answered ERROR : NO-USER" in forward["daemon_log"]


def test_other_users_connections_never_reach_the_application(forward: dict[str, Any]) -> None:
    others = forward["others"]
    assert others["man"]["user"] == "man", others
    # lp's forward points at games' identd: the kernel says games runs it, so it is not
    # asked and lp gets its own answer.
    assert others["lp"]["user"] == "lp", others
    assert "it is run by uid 5, not by the user (uid 7)" in forward["daemon_log"]
    asked_ports = {port for port, _, _ in forward["app_asked"]}
    assert others["man"]["port"] not in asked_ports
    assert others["lp"]["port"] not in asked_ports


def test_another_users_deferred_accept_listener_is_not_believed(forward: dict[str, Any]) -> None:
    """uucp's identd is down and proxy listens on its forward port with TCP_DEFER_ACCEPT:
    the daemon (privileges dropped, real kernel lookups) takes the listener's owner for the
    target's, so proxy is never asked, and ngircd sees uucp's own answer."""
    assert forward["others"]["uucp"]["user"] == "uucp", forward["daemon_log"]
    assert "it is run by uid 13, not by the user (uid 10)" in forward["daemon_log"]
    assert forward["impostor_asked"] == [], forward["daemon_log"]


def test_claims_over_the_local_socket_show_in_ngircd(forward: dict[str, Any]) -> None:
    """news runs no identd: it claims its connections on the daemon's claims socket."""
    claims = forward["claims"]
    assert "error" not in claims, claims
    assert claims["open_connection"]["user"] == "hostclaimed", (claims, forward["daemon_log"])
    assert claims["claim_after_connect"]["user"] == "claimedlate", claims
    assert claims["steal"] == "the host identd refused: that connection is not yours"
    assert "news (uid 9) replied as 'hostclaimed' (claim, claims socket)" in forward["daemon_log"]
