"""Real IRC servers doing their ident lookup against our IdentServer.

Peers run (``dpkg-query -W``), Debian 12:

* ngircd 26.1-1+deb12u1 (libident; ident only with ``DNS = yes``; 10 s timeout; accepts
  only ``[A-Za-z0-9]`` ids);
* inspircd 3.15.0-1 (``m_ident``, ``<ident timeout="5">``; truncates ids to
  ``<limits maxuser="10">``).

Both always ask port 113 on the connecting address, so each server runs with our server in
one fresh network namespace (``netns_irc.py`` under ``unshare -n``, ``unshare -rn`` when not
root), every case at once from its own source address 127.0.0.<n>. A case passes when the
user part of the ``001`` welcome mask is the expected one (``~fallback``: the lookup failed
and the server fell back to the USER name) and our server saw exactly one lookup for it.

What the peers showed (and these tests pin):

* both take USERID in either reply style, and fall back to ``~user`` on any ERROR
  (NO-USER, HIDDEN-USER, an X token) and on our fallback answer sent after 2 s;
* an answer delayed by 1 s is used by both;
* ``al_ice``: ngircd rejects it ("Got invalid ident response"), InspIRCd keeps it;
* 15 characters: ngircd keeps all, InspIRCd truncates to maxuser (10);
* ``jürgen`` with charset UTF-8: ngircd rejects it, InspIRCd keeps ``j`` (it stops at the
  first non-ASCII octet). Handlers serving IRC servers should answer ASCII alphanumerics.
"""

from __future__ import annotations

from typing import Any

import pytest
from identcases import DELAY
from interop_peers import require_program, run_driver

#: case[:style] -> the user part of the 001 mask, per IRC server.
EXPECTED: dict[str, dict[str, str]] = {
    "userid": {"ngircd": "alice", "inspircd": "alice"},
    "userid:spaced": {"ngircd": "alice", "inspircd": "alice"},
    "no-user": {"ngircd": "~fallback", "inspircd": "~fallback"},
    "hidden-user:spaced": {"ngircd": "~fallback", "inspircd": "~fallback"},
    "x-token": {"ngircd": "~fallback", "inspircd": "~fallback"},
    "delayed": {"ngircd": "alice", "inspircd": "alice"},
    "fallback": {"ngircd": "~fallback", "inspircd": "~fallback"},
    "userid-underscore": {"ngircd": "~fallback", "inspircd": "al_ice"},
    "userid-long": {"ngircd": "alice0123456789", "inspircd": "alice01234"},
    "userid-charset": {"ngircd": "~fallback", "inspircd": "j"},
}
SERVERS = ("ngircd", "inspircd")
#: Longest case: ngircd's 10 s ident timeout if our answer never arrived, plus start-up.
DRIVER_TIMEOUT = 40


@pytest.fixture(scope="module", params=SERVERS)
def irc_results(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    server: str = request.param
    require_program(server)
    data = run_driver("netns_irc.py", server, *EXPECTED, timeout=DRIVER_TIMEOUT)
    return server, data


@pytest.mark.parametrize("case", list(EXPECTED))
def test_irc_server_ident(irc_results: tuple[str, dict[str, Any]], case: str) -> None:
    server, data = irc_results
    result = data["cases"][case]
    context = f"{server} {case}: {result}\n--- {server} log ---\n{data['log']}"
    assert result["error"] is None, context
    assert len(result["lookups"]) == 1, context
    assert result["user"] == EXPECTED[case][server], context
    if case == "delayed":
        assert result["seconds"] >= DELAY, context
