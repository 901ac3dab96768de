"""Dropping root after binding: names resolved before anything changes, the classic order
(groups, group, user), and root kept only when asked. The changes run in a forked child,
so the test process keeps its identity."""

from __future__ import annotations

import grp
import json
import os
import pwd
from collections.abc import Callable
from typing import Any

import pytest

from aioidentd.daemon.privileges import Identity, drop_privileges, resolve_identity
from aioidentd.errors import PrivilegeError
from support import require_root

NOBODY = pwd.getpwnam("nobody")


def test_names_and_numbers_resolve_to_the_same_identity() -> None:
    by_name = resolve_identity("nobody")
    assert by_name == resolve_identity(str(NOBODY.pw_uid))
    assert (by_name.user, by_name.uid, by_name.gid) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert by_name.group == grp.getgrgid(NOBODY.pw_gid).gr_name
    root_group = grp.getgrgid(0).gr_name
    assert resolve_identity("nobody", root_group) == resolve_identity("nobody", "0")
    assert resolve_identity("nobody", "0").gid == 0


@pytest.mark.parametrize(
    ("user", "group", "message"),
    [
        ("no-such-user-here", None, "no such user: 'no-such-user-here'"),
        ("\u00b2", None, "no such user: '\u00b2'"),  # isdigit(), but not a number
        ("nobody", "no-such-group-here", "no such group: 'no-such-group-here'"),
        ("nobody", "\u0663", "no such group: '\u0663'"),
    ],
)
def test_unknown_names_fail_before_anything_changes(
    user: str, group: str | None, message: str
) -> None:
    with pytest.raises(PrivilegeError) as info:
        resolve_identity(user, group)
    assert str(info.value) == message


def in_child(action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``action`` in a forked child and return what it reports (or its exception)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            try:
                result = action()
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    assert text, "the child reported nothing"
    reported: dict[str, Any] = json.loads(text)
    return reported


def _ids() -> dict[str, Any]:
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
    }


def _status() -> dict[str, str]:
    """NoNewPrivs and the capability sets of this process, as the kernel reports them."""
    with open("/proc/self/status") as file:
        fields = dict(line.split(":", 1) for line in file if ":" in line)
    return {name: fields[name].strip() for name in ("NoNewPrivs", "CapBnd", "CapPrm", "CapEff")}


def test_not_root_has_nothing_to_drop() -> None:
    """Without root the process keeps its identity, whatever it was asked to become."""

    def action() -> dict[str, Any]:
        if os.geteuid() == 0:  # become an ordinary user first, as a non-root run is
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
        before = _ids()
        changed = drop_privileges(Identity("root", 0, "root", 0))
        return {"changed": changed, "same": _ids() == before, **_status()}

    # Nothing to drop, but no set-uid program it might run can raise its privileges.
    assert in_child(action) == {
        "changed": False,
        "same": True,
        "NoNewPrivs": "1",
        "CapBnd": in_child(_status)["CapBnd"],  # an unprivileged process cannot lower it
        "CapPrm": "0000000000000000",
        "CapEff": "0000000000000000",
    }


def test_root_becomes_the_user_with_no_supplementary_groups() -> None:
    require_root("to change the process's identity")
    nobody = resolve_identity("nobody")

    def action() -> dict[str, Any]:
        os.setgroups([0, 1])
        return {"changed": drop_privileges(nobody), **_ids(), **_status()}

    assert in_child(action) == {
        "changed": True,
        "uid": nobody.uid,
        "euid": nobody.uid,
        "gid": nobody.gid,
        "groups": [],
        "NoNewPrivs": "1",
        "CapBnd": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapEff": "0000000000000000",
    }


def test_root_stays_root_only_when_allowed() -> None:
    require_root("to be root in the first place")
    root = resolve_identity("root")
    assert in_child(lambda: {"changed": drop_privileges(root)}) == {
        "error": "PrivilegeError: refusing to run as root; choose another user, or allow "
        "root explicitly"
    }
    kept = in_child(lambda: {"changed": drop_privileges(root, allow_root=True), **_ids()})
    assert (kept["changed"], kept["euid"]) == (False, 0)
