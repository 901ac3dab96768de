"""Reading the files users control (``~/.aioidentd-reply``) as a program must that reads
other people's files: no symbolic links, no FIFOs, the right owner, not writable by
others, bounded in size, and never as root.

Kept apart from the policy, which decides whether a user's file may be used at all, so
that every user file (ours, and oidentd's ``~/.config/oidentd.conf`` and
``~/.oidentd.conf`` that users' tools write) has the same reader and the same paranoia.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from typing import Final

from aioidentd.errors import ReplyFileRefused
from aioidentd.protocol import MAX_USER_ID

__all__ = [
    "MAX_OIDENTD_FILE",
    "MAX_REPLY_FILE",
    "OIDENTD_FILES",
    "REPLY_FILE",
    "read_oidentd_file",
    "read_reply_file",
    "read_user_file",
]

#: The user's own reply, relative to their home directory. Not under ``~/.config``: that
#: directory is often created mode 0700, and every directory on the way must be
#: searchable by the unprivileged daemon; one file in the home is one thing to get right.
REPLY_FILE: Final = ".aioidentd-reply"
#: The largest reply file read: a maximal user id plus CR LF.
MAX_REPLY_FILE: Final = MAX_USER_ID + 2
#: oidentd's user files, relative to the home directory, the preferred one first. The
#: Lounge writes one line per open connection into them, hence the larger bound.
OIDENTD_FILES: Final = (".config/oidentd.conf", ".oidentd.conf")
MAX_OIDENTD_FILE: Final = 64 * 1024
_OPEN_FLAGS: Final = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def read_reply_file(home: str, uid: int) -> str | None:
    """The first line of ``home/.aioidentd-reply``, or None when there is no such file.

    Raises :class:`ReplyFileRefused` with the reason when the file is there but unsafe or
    unreadable (see :func:`read_user_file`).
    """
    data = read_user_file(home, uid, REPLY_FILE, MAX_REPLY_FILE)
    if data is None:
        return None
    # A Windows editor's byte order mark is not part of the id.
    line = data.removeprefix(codecs.BOM_UTF8).split(b"\n", 1)[0].rstrip(b"\r").strip(b" \t")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise ReplyFileRefused(f"{os.path.join(home, REPLY_FILE)} is not UTF-8 text") from None


def read_oidentd_file(home: str, uid: int) -> tuple[str, str] | None:
    """``(path, text)`` of the user's oidentd file, or None when there is none.

    ``~/.config/oidentd.conf`` is preferred, as oidentd prefers it; when it does not exist
    (or ``~/.config`` cannot be searched by others, so that an unprivileged reader would
    not find it either), ``~/.oidentd.conf``. Raises :class:`ReplyFileRefused` for a file
    that is there but unsafe, unreadable or not UTF-8.
    """
    for name in OIDENTD_FILES:
        try:
            data = read_user_file(home, uid, name, MAX_OIDENTD_FILE)
        except _NotReachable:
            continue
        if data is None:
            continue
        path = os.path.join(home, name)
        try:
            return path, data.decode("utf-8")
        except UnicodeDecodeError:
            raise ReplyFileRefused(f"{path} is not UTF-8 text") from None
    return None


class _NotReachable(ReplyFileRefused):
    """A directory on the way to the file cannot be searched by others."""


def read_user_file(home: str, uid: int, name: str, limit: int) -> bytes | None:
    """The content of ``home/name``, or None when there is no such file.

    Raises :class:`ReplyFileRefused` with the reason when the file is there but unsafe or
    unreadable. The checks mirror what reading it *as the user* would guarantee, since
    the daemon reads it as an unprivileged user instead: the home (and any directory
    under it on the way) must be searchable and the file readable by others, owned by
    ``uid`` (a hard link to someone else's file keeps its owner), writable by nobody
    else, a regular file (``O_NONBLOCK`` so a FIFO cannot hang the open), never a
    symbolic link (``O_NOFOLLOW``), and at most ``limit`` octets.
    """
    path = os.path.join(home, name)
    directories = [home]
    parent = os.path.dirname(name)
    if parent:
        directories.append(os.path.join(home, parent))
    modes: list[tuple[str, int]] = []
    for directory in directories:
        try:
            modes.append((directory, os.stat(directory).st_mode))
        except OSError as exc:
            if directory != home:
                if isinstance(exc, FileNotFoundError):
                    return None
                raise _NotReachable(f"cannot look at {directory}: {exc.strerror}") from None
            raise ReplyFileRefused(
                f"cannot look at the home directory {home}: {exc.strerror}"
            ) from None
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise ReplyFileRefused(f"{path} is a symbolic link") from None
        raise ReplyFileRefused(f"cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReplyFileRefused(f"{path} is not a regular file")
        if info.st_uid != uid:
            raise ReplyFileRefused(f"{path} is owned by uid {info.st_uid}, not by the user")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ReplyFileRefused(f"{path} is writable by group or others (chmod 644)")
        if not info.st_mode & stat.S_IROTH:
            raise ReplyFileRefused(
                f"{path} is not readable by others; the daemon reads it without privileges "
                f"(chmod 644)"
            )
        for directory, mode in modes:
            if not mode & stat.S_IXOTH:
                what = "the home directory" if directory == home else "the directory"
                error = ReplyFileRefused if directory == home else _NotReachable
                raise error(
                    f"{what} {directory} is not searchable by others; the daemon reads "
                    f"the file without privileges (chmod o+x {directory})"
                )
        if info.st_size > limit:
            raise ReplyFileRefused(f"{path} is larger than {limit} octets")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ReplyFileRefused(f"{path} is larger than {limit} octets")
    except OSError as exc:
        raise ReplyFileRefused(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)
