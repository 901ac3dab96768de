"""Who the users are: names, homes and groups by uid, and the log lines about them.

Behind one small interface (:class:`UserDB`) so that the policy is testable with a fake
user database; :class:`SystemUserDB` is the machine's, cached, because every answered
query needs the owner's name.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from aioidentd._ratelimit import RateLimitedLog

__all__ = ["FILE_LOG_INTERVAL", "MAX_UID", "SystemUserDB", "UserDB", "UserLog"]

#: Seconds between two log lines about the same user's name or files (see UserLog).
FILE_LOG_INTERVAL = 600.0
#: The largest uid there can be (uid_t is 32 bits; (uid_t)-1 means "no uid"); a bigger
#: number cannot name a user, and the passwd lookup would overflow on it.
MAX_UID = 2**32 - 2


class UserDB(Protocol):
    """Where names, homes and groups come from; injectable so tests need no real users."""

    def name_of(self, uid: int) -> str | None: ...

    def uid_of(self, name: str) -> int | None: ...

    def home_of(self, uid: int) -> str | None: ...

    def groups_of(self, uid: int) -> Sequence[str]: ...


class SystemUserDB:
    """The machine's passwd and group databases (:mod:`pwd`, :mod:`grp`), with answers
    kept for :attr:`ttl` seconds.

    Why a cache: every answered query needs the owner's name (and, with group tables, its
    groups), and each ``getpwuid`` goes through NSS, re-reading ``/etc/passwd`` (or asking
    a directory service): a third of the daemon's CPU per query before the cache. Users
    rarely change; a new or renamed user is seen within ``ttl`` seconds, or at once after
    a reload (SIGHUP builds a new policy, and so a new cache).
    """

    def __init__(self, ttl: float = 30.0, size: int = 4096) -> None:
        self.ttl = ttl
        self._size = size
        self._users: dict[int, tuple[float, pwd.struct_passwd | None]] = {}
        self._groups: dict[int, tuple[float, tuple[str, ...]]] = {}

    def _user(self, uid: int) -> pwd.struct_passwd | None:
        now = time.monotonic()
        cached = self._users.get(uid)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            entry: pwd.struct_passwd | None = pwd.getpwuid(uid)
        except KeyError:
            entry = None
        if len(self._users) >= self._size:
            self._users.clear()
        self._users[uid] = (now + self.ttl, entry)
        return entry

    def name_of(self, uid: int) -> str | None:
        entry = self._user(uid)
        return entry.pw_name if entry is not None else None

    def uid_of(self, name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            return None

    def home_of(self, uid: int) -> str | None:
        entry = self._user(uid)
        return (entry.pw_dir or None) if entry is not None else None

    def groups_of(self, uid: int) -> Sequence[str]:
        """Primary group first, then supplementary ones; a gid without a name as digits."""
        now = time.monotonic()
        cached = self._groups.get(uid)
        if cached is not None and cached[0] > now:
            return cached[1]
        entry = self._user(uid)
        if entry is None:
            return ()
        try:
            gids = os.getgrouplist(entry.pw_name, entry.pw_gid)
        except OSError:
            gids = [entry.pw_gid]
        names: list[str] = []
        for gid in dict.fromkeys(gids):
            try:
                names.append(grp.getgrgid(gid).gr_name)
            except KeyError:
                names.append(str(gid))
        if len(self._groups) >= self._size:
            self._groups.clear()
        self._groups[uid] = (now + self.ttl, tuple(names))
        return tuple(names)


class UserLog:
    """Lines about one user's name or files, at most one per user, message and
    :data:`FILE_LOG_INTERVAL`, then counted: every query about that user's connections
    (which the other end may send at will) would repeat them, and the user can write a
    new version of a file before every query. Under a lock: the policy may run in
    several threads at once. (Refused reply and oidentd files are not logged here but by
    the responder, per user whatever the reason: the reason can carry the file's
    content.)"""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = RateLimitedLog(logger, interval=FILE_LOG_INTERVAL)
        self._lock = threading.Lock()
        #: (path, hash of the text) of user files whose problems were logged.
        self._reported: set[tuple[str, int]] = set()

    def name(self, level: int, uid: int, msg: str, *args: object) -> None:
        """A line about a user's name (one that cannot go on the wire)."""
        key = (uid, msg, str(args[-1]) if args else "")
        with self._lock:
            self._log.log(key, level, f"lines like: {msg % args}", msg, *args)

    def file_problems(
        self, uid: int, who: str, path: str, text: str, problems: Sequence[str]
    ) -> None:
        """What a user file says that is not understood, once per version of the file."""
        if not problems:
            return
        key = (path, hash(text))
        if key in self._reported:
            return
        if len(self._reported) >= 1024:
            self._reported.clear()
        self._reported.add(key)
        with self._lock:
            self._log.log(
                ("not understood", uid),
                logging.WARNING,
                f"versions of {who}'s files with parts not understood",
                "%s: parts of %s are not understood: %s",
                who,
                path,
                "; ".join(problems),
            )
