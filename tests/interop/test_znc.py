"""ZNC itself (Debian's 1.8) writes the oidentd file with its identfile module, and
ngircd, asking ``aioidentd serve``, shows the ident ZNC chose for its user
(``netns_znc.py``, in a fresh network and mount namespace)."""

from __future__ import annotations

from interop_peers import require_program, run_driver

from support import needs_root

DRIVER_TIMEOUT = 120


@needs_root
def test_znc_identfile_answers_through_our_daemon() -> None:
    require_program("znc")
    require_program("ngircd")
    data = run_driver("netns_znc.py", timeout=DRIVER_TIMEOUT)
    assert data["whois_user"] == "zncident", data
    assert (
        "games (uid 5) replied as 'zncident' (user-reply, /usr/games/.oidentd.conf line 1)"
        in data["daemon_log"]
    ), data["daemon_log"]
