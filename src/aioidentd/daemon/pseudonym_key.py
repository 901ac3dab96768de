"""The pseudonym key on disk: made on first start, read with the checks a secret needs.

The key is what makes ``answer = "pseudonym"`` ids traceable by the administrator and by
nobody else, so the file is refused when anyone but its owner may read it (as ssh
refuses a private key), when it is not a regular file, or when it belongs to anyone but
root or the daemon's own user. A new key is written to a temporary file and linked into
place, so that two daemons starting at once (``--inetd``, workers) end with the same
key. It is 32 random bytes from :func:`secrets.token_bytes`, stored as 64 hex digits and
a newline (easy to back up, and to restore on a rebuilt host so that ids survive it).
The key itself is never logged or shown.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import stat

from aioidentd.errors import DaemonError

__all__ = ["KEY_BYTES", "load_or_create_key", "read_daemon_key", "read_key"]

#: Bytes of a new key.
KEY_BYTES = 32


def read_key(path: str, owners: tuple[int, ...] = (0,)) -> bytes:
    """The key in ``path``; :class:`DaemonError` says why not. ``owners`` are the uids
    that may own the file (root and the daemon's user); root may read any file, so the
    check is about who else could have written it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise DaemonError(f"cannot read the pseudonym key {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DaemonError(f"the pseudonym key {path} is not a regular file")
        if info.st_mode & 0o077:
            raise DaemonError(
                f"the pseudonym key {path} may be read by others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}): chmod 400 {path}"
            )
        if info.st_uid not in owners:
            raise DaemonError(
                f"the pseudonym key {path} belongs to uid {info.st_uid}, not to root or the "
                f"daemon's user"
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    text = data.decode("ascii", "replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if not 16 <= len(key) <= 64:
        raise DaemonError(
            f"the pseudonym key {path} is not 32-128 hex digits (make a new one by moving "
            f"it away; every pseudonym changes then)"
        )
    return key


def load_or_create_key(path: str, owner: tuple[int, int] | None = None) -> tuple[bytes, bool]:
    """``(key, created)``: the key in ``path``, made first when there is none. ``owner``
    (uid, gid) is the daemon's user when it starts as root: the file (and a directory
    made for it) is given to that user, mode 0400 (0700), so that a reload after the
    privilege drop can read it again."""
    owners = (0, os.geteuid()) if owner is None else (0, owner[0])
    try:
        return read_key(path, owners), False
    except DaemonError:
        if os.path.lexists(path):
            raise
    directory = os.path.dirname(path) or "."
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
            if owner is not None:
                os.chown(directory, *owner)
        temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.write(fd, secrets.token_bytes(KEY_BYTES).hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
            created = True
        except FileExistsError:
            created = False  # another process made it first: use theirs
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    except OSError as exc:
        raise DaemonError(
            f"cannot create the pseudonym key {path}: {exc.strerror or exc} ([pseudonym] "
            f"key_file; under systemd, StateDirectory=aioidentd makes /var/lib/aioidentd)"
        ) from None
    return read_key(path, owners), created


def read_daemon_key(path: str, user: str) -> bytes:
    """The key as a command other than the daemon reads it (``explain``, ``resolve``):
    owned by root, by ``user`` (the daemon's ``[server] user``) or by the caller."""
    owners = [0, os.geteuid()]
    with contextlib.suppress(KeyError):
        owners.append(pwd.getpwnam(user).pw_uid)
    try:
        return read_key(path, tuple(owners))
    except DaemonError as exc:
        hint = "" if os.geteuid() == 0 else " (run as root)"
        raise DaemonError(f"{exc}{hint}") from None
