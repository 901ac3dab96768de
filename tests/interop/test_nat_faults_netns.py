"""The NAT gateway's conntrack helper and workers under faults (``netns_nat_faults.py``):
real translated connections from two inner hosts, the helper stopped and killed, a worker
killed; every answer checked against the inner host it belongs to."""

from __future__ import annotations

from typing import Any

import pytest
from interop_peers import require_program, run_driver

from support import needs_root

pytestmark = needs_root

DRIVER_TIMEOUT = 150
#: What the helper may hold: CAP_NET_ADMIN (bit 12) alone, in every set.
NET_ADMIN_ONLY = "0000000000001000"


@pytest.fixture(scope="module")
def faults() -> dict[str, Any]:
    for program in ("nft", "nsenter", "unshare"):
        require_program(program)
    return run_driver("netns_nat_faults.py", timeout=DRIVER_TIMEOUT)


def test_a_stopped_helper_never_shifts_answers_onto_the_next_query(
    faults: dict[str, Any],
) -> None:
    """Stopped past the daemon's wait, the helper answers late: that query gets
    UNKNOWN-ERROR (nobody knows whose connection it is), and every later query gets its
    own answer, none the previous one's."""
    case = faults["cases"]["stop"]
    assert case["before"] == ["two", "three"]
    assert case["during"] == "UNKNOWN-ERROR", faults["logs"]
    expected = [[host, {"10.0.0.2": "two", "10.0.0.3": "three"}[host]] for host, _ in case["after"]]
    assert case["after"] == expected, faults["logs"]
    # And a daemon told to stop while its helper is stopped exits by itself (no hang).
    assert case["exit_status"] == 0 and case["exit_seconds"] < 10, case


def test_a_killed_helper_is_replaced_and_reaped(faults: dict[str, Any]) -> None:
    case = faults["cases"]["kill"]
    assert case["before"] == "two"
    assert case["last"] == "two" and case["recovered_after"] is not None, case
    # Until then: nothing but UNKNOWN-ERROR (never NO-USER, never another host's user).
    assert set(case["answers"]) <= {"two", "UNKNOWN-ERROR"}, case
    assert case["old_reaped"], "the dead helper is left a zombie"
    log = faults["logs"]["gateway-kill"]
    assert "the conntrack helper (pid" in log and "Traceback" not in log


def test_a_replaced_worker_still_finds_translations(faults: dict[str, Any]) -> None:
    answers = faults["cases"]["workers"]["answers"]
    expected = [[host, {"10.0.0.2": "two", "10.0.0.3": "three"}[host]] for host, _ in answers]
    assert len(answers) == 24 and answers == expected, faults["logs"]["gateway-workers"]


@pytest.mark.parametrize("where", ["stop", "kill"])
def test_the_helper_keeps_cap_net_admin_alone(faults: dict[str, Any], where: str) -> None:
    """The helper (the first one, and the one started after it was killed): the daemon's
    user, CAP_NET_ADMIN alone in its permitted, effective and bounding sets, no_new_privs."""
    held = (
        faults["cases"]["stop"]["helper"]
        if where == "stop"
        else faults["cases"]["kill"]["new_helper"]
    )
    assert held is not None
    assert "0" not in held["Uid"].split(), held
    assert (held["CapPrm"], held["CapEff"], held["CapBnd"]) == (NET_ADMIN_ONLY,) * 3, held
    assert held["NoNewPrivs"] == "1", held
