"""Dropping root after binding port 113.

The order matters and is the classic one: supplementary groups, then the group, then the
user (once the uid is gone, the process may no longer change its groups). Names are
resolved before anything changes, so a typo fails loudly while still root instead of
leaving a half-dropped process.

Two more doors are closed on the way (Linux, :func:`prctl` through :mod:`ctypes`, since
the standard library has no binding): the capability bounding set is emptied while the
process still holds ``CAP_SETPCAP`` (before the uid changes), so that nothing it could
ever execute regains a capability, and ``PR_SET_NO_NEW_PRIVS`` is set, so that no
set-uid program or file capability can raise its privileges again. Both are inherited
by every child and cannot be undone.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import grp
import logging
import os
import pwd
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aioidentd.errors import PrivilegeError
from aioidentd.policy.settings import SERVICE_USER

__all__ = [
    "CREATE_SERVICE_USER",
    "Identity",
    "PrivilegeError",
    "drop_privileges",
    "resolve_identity",
]

logger = logging.getLogger(__name__)

#: How to create the default user (:data:`~aioidentd.policy.settings.SERVICE_USER`):
#: Debian and most distributions; no home, no login.
CREATE_SERVICE_USER: Final = (
    "useradd --system --user-group --no-create-home --home-dir /nonexistent "
    f"--shell /usr/sbin/nologin {SERVICE_USER}"
)

# <linux/prctl.h>
_PR_CAPBSET_DROP: Final = 24
_PR_SET_KEEPCAPS: Final = 8
_PR_SET_PDEATHSIG: Final = 1
_PR_SET_DUMPABLE: Final = 4
#: <linux/capability.h>
CAP_NET_ADMIN: Final = 12
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_GET_NO_NEW_PRIVS: Final = 39


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    uid: int
    group: str
    gid: int


def _is_number(text: str) -> bool:
    """Digits 0-9 only: ``str.isdigit()`` alone also takes ``²``, which ``int()`` refuses."""
    return text.isascii() and text.isdigit()


def resolve_identity(user: str, group: str | None = None) -> Identity:
    """Look up ``user`` (and ``group``, default: the user's primary group) by name or
    number."""
    try:
        entry = pwd.getpwuid(int(user)) if _is_number(user) else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise PrivilegeError(f"no such user: {user!r}") from None
    if group is None:
        gid = entry.pw_gid
        try:
            group_name = grp.getgrgid(gid).gr_name
        except KeyError:
            group_name = str(gid)
    else:
        try:
            gentry = grp.getgrgid(int(group)) if _is_number(group) else grp.getgrnam(group)
        except (KeyError, ValueError):
            raise PrivilegeError(f"no such group: {group!r}") from None
        gid, group_name = gentry.gr_gid, gentry.gr_name
    return Identity(entry.pw_name, entry.pw_uid, group_name, gid)


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    # prctl(option, arg2, arg3, arg4, arg5): the unused ones must be 0 (EINVAL otherwise).
    function.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    function.restype = ctypes.c_int
    prctl: Callable[..., int] = function
    return prctl


def _call(prctl: Callable[..., int], option: int, value: int) -> int:
    result: int = prctl(option, value, 0, 0, 0)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _last_capability() -> int:
    """The highest capability number this kernel knows (40 on Linux 5.9+)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as file:
            return int(file.read())
    except (OSError, ValueError):
        return 63  # the bounding set's width; numbers the kernel lacks answer EINVAL


def empty_bounding_set(keep: int | None = None) -> str | None:
    """Drop every capability (but ``keep``) from the bounding set; None when done, else
    why not (no ``CAP_SETPCAP``, as in some containers, or no prctl)."""
    prctl = _prctl()
    if prctl is None:
        return "prctl is not available on this system"
    for capability in range(_last_capability() + 1):
        if capability == keep:
            continue
        try:
            _call(prctl, _PR_CAPBSET_DROP, capability)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # beyond what this kernel knows: done
                break
            return f"cannot drop capability {capability} from the bounding set: {exc.strerror}"
    return None


def set_no_new_privs() -> str | None:
    """Set ``PR_SET_NO_NEW_PRIVS``; None when done (or already set), else why not."""
    prctl = _prctl()
    if prctl is None:
        return "prctl is not available on this system"
    try:
        _call(prctl, _PR_SET_NO_NEW_PRIVS, 1)
        if _call(prctl, _PR_GET_NO_NEW_PRIVS, 0) != 1:
            return "PR_SET_NO_NEW_PRIVS did not stick"
    except OSError as exc:
        return f"cannot set PR_SET_NO_NEW_PRIVS: {exc.strerror}"
    return None


def keep_only_capability(capability: int, uid: int, gid: int) -> str | None:
    """From root: become ``uid``/``gid`` keeping ``capability`` alone (the NAT helper's
    ``CAP_NET_ADMIN``). The bounding set loses every other capability, the permitted and
    effective sets hold only it, ``no_new_privs`` is set and the process is not dumpable
    (the daemon's user can neither ptrace it nor read its memory). The uid change is
    checked (raises :class:`PrivilegeError`); returns None when everything else was done
    too, else what was not."""
    prctl = _prctl()
    problem = empty_bounding_set(keep=capability)
    if prctl is not None:
        _call(prctl, _PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise PrivilegeError("privileges could not be changed")
    if prctl is None:
        return problem or "prctl is not available on this system"
    problem = problem or _capset(1 << capability)
    _call(prctl, _PR_SET_KEEPCAPS, 0)
    _call(prctl, _PR_SET_DUMPABLE, 0)
    return problem or set_no_new_privs()


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capset(mask: int) -> str | None:
    """This process's permitted and effective capabilities: ``mask`` exactly (capset(2),
    version 3: two 32-bit words); None when done."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in range(2):
        bits = (mask >> (32 * word)) & 0xFFFFFFFF
        data[word].effective = data[word].permitted = bits
    try:
        capset = ctypes.CDLL(None, use_errno=True).capset
    except (OSError, AttributeError):
        return "capset is not available on this system"
    if capset(ctypes.byref(header), data) != 0:
        return f"capset: {os.strerror(ctypes.get_errno())}"
    return None


def stop_with_parent(parent: int) -> bool:
    """SIGTERM this process when ``parent`` dies (a worker whose supervisor was killed
    must not serve on unsupervised); False when ``parent`` is already gone. Set after
    any change of credentials, which clears it."""
    prctl = _prctl()
    if prctl is not None:
        try:
            _call(prctl, _PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError as exc:
            logger.warning("cannot ask to stop with the supervisor: %s", exc.strerror)
    return os.getppid() == parent


def drop_privileges(identity: Identity, *, allow_root: bool = False) -> bool:
    """Become ``identity`` if running as root; returns whether anything changed.

    Running as root afterwards (the target is root, or the change did not stick) raises
    :class:`PrivilegeError` unless ``allow_root`` says that is wanted. Not being root to
    begin with is fine: there is nothing to drop. Unless root is kept, the process ends
    with ``PR_SET_NO_NEW_PRIVS`` set and, when it started as root, an empty capability
    bounding set; where the kernel refuses either, a warning says so and the daemon
    runs on (the uid change is what matters most, and it is checked).
    """
    if os.geteuid() != 0:
        if identity.uid != os.geteuid():
            logger.info(
                "not root: keeping uid %d (cannot switch to %s)", os.geteuid(), identity.user
            )
        _warn(set_no_new_privs())
        return False
    if identity.uid == 0:
        if not allow_root:
            raise PrivilegeError(
                "refusing to run as root; choose another user, or allow root explicitly"
            )
        logger.warning("running as root, as configured")
        return False
    os.setgroups([])
    os.setgid(identity.gid)
    # While still root: emptying the bounding set needs CAP_SETPCAP, gone with the uid.
    bounding = empty_bounding_set()
    os.setuid(identity.uid)
    if os.getuid() == 0 or os.geteuid() == 0 or os.getegid() != identity.gid:
        raise PrivilegeError("privileges could not be dropped")
    _warn(bounding)
    _warn(set_no_new_privs())
    logger.info("dropped privileges to %s:%s", identity.user, identity.group)
    return True


def _warn(problem: str | None) -> None:
    if problem is not None:
        logger.warning("%s; running on without it", problem)
