"""Reading the files users control (``~/.aioidentd-reply``) as a program must that reads
other people's files: no symbolic links, no FIFOs, the right owner, not writable by
others, bounded in size, and never as root.

Kept apart from the policy, which decides whether a user's file may be used at all, so
that the next user file (oidentd's ``~/.oidentd.conf``) has the same reader and the same
paranoia.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

from aioidentd.errors import ReplyFileRefused
from aioidentd.protocol import MAX_USER_ID

__all__ = ["MAX_REPLY_FILE", "REPLY_FILE", "read_reply_file"]

#: The user's own reply, relative to their home directory. Not under ``~/.config``: that
#: directory is often created mode 0700, and every directory on the way must be
#: searchable by the unprivileged daemon; one file in the home is one thing to get right.
REPLY_FILE: Final = ".aioidentd-reply"
#: The largest reply file read: a maximal user id plus CR LF.
MAX_REPLY_FILE: Final = MAX_USER_ID + 2
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
    unreadable. The checks mirror what reading it *as the user* would guarantee, since
    the daemon reads it as an unprivileged user instead: the home must be searchable
    and the file readable by others, owned by ``uid`` (a hard link to someone else's
    file keeps its owner), writable by nobody else, a regular file (``O_NONBLOCK`` so a
    FIFO cannot hang the open), never a symbolic link (``O_NOFOLLOW``), and small.
    """
    path = os.path.join(home, REPLY_FILE)
    try:
        home_mode = os.stat(home).st_mode
    except OSError as exc:
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
        if not home_mode & stat.S_IXOTH:
            raise ReplyFileRefused(
                f"the home directory {home} is not searchable by others; the daemon reads "
                f"the file without privileges (chmod o+x {home})"
            )
        if info.st_size > MAX_REPLY_FILE:
            raise ReplyFileRefused(f"{path} is larger than {MAX_REPLY_FILE} octets")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_REPLY_FILE:
            chunk = os.read(fd, MAX_REPLY_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_REPLY_FILE:
            raise ReplyFileRefused(f"{path} is larger than {MAX_REPLY_FILE} octets")
    except OSError as exc:
        raise ReplyFileRefused(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    line = data.split(b"\n", 1)[0].rstrip(b"\r").strip(b" \t")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise ReplyFileRefused(f"{path} is not UTF-8 text") from None
