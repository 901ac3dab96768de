"""Dropping root after binding port 113.

The order matters and is the classic one: supplementary groups, then the group, then the
user (once the uid is gone, the process may no longer change its groups). Names are
resolved before anything changes, so a typo fails loudly while still root instead of
leaving a half-dropped process.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass

from aioidentd.errors import PrivilegeError

__all__ = ["Identity", "PrivilegeError", "drop_privileges", "resolve_identity"]

logger = logging.getLogger(__name__)


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


def drop_privileges(identity: Identity, *, allow_root: bool = False) -> bool:
    """Become ``identity`` if running as root; returns whether anything changed.

    Running as root afterwards (the target is root, or the change did not stick) raises
    :class:`PrivilegeError` unless ``allow_root`` says that is wanted. Not being root to
    begin with is fine: there is nothing to drop.
    """
    if os.geteuid() != 0:
        if identity.uid != os.geteuid():
            logger.info(
                "not root: keeping uid %d (cannot switch to %s)", os.geteuid(), identity.user
            )
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
    os.setuid(identity.uid)
    if os.getuid() == 0 or os.geteuid() == 0 or os.getegid() != identity.gid:
        raise PrivilegeError("privileges could not be dropped")
    logger.info("dropped privileges to %s:%s", identity.user, identity.group)
    return True
