"""Every rule by which the daemon refuses a configuration that loads, in one place.

The loader (:mod:`aioidentd.policy`) checks what a file says. Whether the daemon can
start with it depends also on how it is started (``--inetd``, static answers), as whom
(as root it becomes ``[server] user``) and on this host (uvloop installed). ``serve`` (at
start, and at each SIGHUP, so that a reload never accepts what the next restart would
refuse) and ``check-config`` (the units' ``ExecStartPre=`` and ``ExecReload=``) must
agree, so both ask :func:`check_startable`. :func:`unknown_accounts` is what is accepted
but likely a typo: tables naming a user or group this host does not have.

Nothing here builds a :class:`~aioidentd.policy.Policy`: that needs the pseudonym key,
which only the daemon reads (and makes on first start).
"""

from __future__ import annotations

import grp
import importlib.util
import os
import pwd
from collections.abc import Collection
from typing import Any

from aioidentd.daemon.privileges import (
    CREATE_SERVICE_USER,
    Identity,
    resolve_identity,
)
from aioidentd.errors import ConfigError, DaemonError, PrivilegeError
from aioidentd.policy import Config
from aioidentd.policy.settings import SERVICE_USER

__all__ = ["StartRefused", "check_startable", "service_identity", "unknown_accounts"]


class StartRefused(ConfigError, DaemonError):
    """A configuration the daemon will not start with: ``file:line: message`` when the
    file says it, the bare message when only the command line or the defaults do."""

    def __init__(self, config: Config, line: int | None, message: str) -> None:
        super().__init__(config.filename, line, message)
        if not _has_file(config):
            self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


def _has_file(config: Config) -> bool:
    return config.filename != Config().filename


class _Where:
    """How a ``[server]`` key reads in a message: the flag when the command line gave
    it, else the file's spelling, with the line of the first key the file holds."""

    def __init__(self, config: Config, flags: Collection[str]) -> None:
        self.config = config
        self.flags = flags

    def key(self, name: str, value: Any) -> str:
        if name in self.flags:
            shown = "" if value is True else f" {value}"
            return f"--{name.replace('_', '-')}{shown}"
        return f"{name} = {_toml(value)}"

    def line(self, *paths: tuple[str, ...]) -> int | None:
        for path in paths:
            if path[0] == "server" and path[-1] in self.flags:
                continue
            line = self.config.line_of(*path)
            if line is not None:
                return line
        return None

    def refuse(self, message: str, *paths: tuple[str, ...]) -> StartRefused:
        return StartRefused(self.config, self.line(*paths), message)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def check_startable(
    config: Config,
    *,
    inetd: bool = False,
    static: bool = False,
    as_root: bool | None = None,
    flags: Collection[str] = (),
) -> None:
    """Raise :class:`StartRefused` for the first rule ``config`` breaks.

    ``inetd``: one connection per process (``--inetd``, systemd ``Accept=yes``);
    ``static``: ``--default``/``--random``, no lookups; ``as_root``: whether the daemon
    starts as root and so switches to ``[server] user`` (default: whether this process
    is root); ``flags``: the ``[server]`` keys the command line set, named as flags.
    """
    daemon = config.daemon
    where = _Where(config, flags)
    workers = where.key("workers", daemon.workers)
    if daemon.claims_socket is not None and not static and not inetd and daemon.workers > 1:
        raise where.refuse(
            f"claims_socket needs workers = 1 (every query must see every claim), not {workers}",
            ("server", "claims_socket"),
            ("server", "workers"),
        )
    metrics = config.metrics
    if metrics.listen is not None or metrics.textfile is not None:
        if inetd:
            raise where.refuse(
                "[metrics] does not work with --inetd or Accept=yes (a process per connection)",
                ("metrics",),
            )
        if daemon.workers > 1:
            raise where.refuse(
                f"[metrics] needs workers = 1 (each worker process counts its own "
                f"queries), not {workers}",
                ("metrics",),
                ("server", "workers"),
            )
    if daemon.uvloop and importlib.util.find_spec("uvloop") is None:
        raise where.refuse(
            f"{where.key('uvloop', True)}, but uvloop is not installed (pip install "
            f"'aioidentd[uvloop]')",
            ("server", "uvloop"),
        )
    service_identity(config, as_root=as_root, flags=flags)


def service_identity(
    config: Config, *, as_root: bool | None = None, flags: Collection[str] = ()
) -> Identity | None:
    """Whom the daemon becomes after binding: ``[server] user`` and ``group`` when it
    starts as root, None otherwise (it keeps its own identity). Raises
    :class:`StartRefused` for a user or group this host does not have, and for root
    itself unless ``allow_root``."""
    if as_root is None:
        as_root = os.geteuid() == 0
    if not as_root:
        return None
    daemon = config.daemon
    where = _Where(config, flags)
    try:
        identity = resolve_identity(daemon.user, daemon.group)
    except PrivilegeError as exc:
        if daemon.user == SERVICE_USER and str(exc).startswith("no such user"):
            # Not a fallback to nobody: that is the shared account this default exists
            # to avoid, and a warning in a log is easy to miss.
            raise where.refuse(
                f"{exc}: the daemon runs as this system user of its own by default; "
                f"create it ({CREATE_SERVICE_USER}), or choose another user with "
                f"--user or [server] user",
                ("server", "user"),
            ) from None
        key = "user" if str(exc).startswith("no such user") else "group"
        raise where.refuse(str(exc), ("server", key)) from None
    if identity.uid == 0 and not daemon.allow_root:
        raise where.refuse(
            "refusing to run as root: set [server] user to an unprivileged user "
            f"(default {SERVICE_USER}), or allow_root = true / --allow-root",
            ("server", "user"),
        )
    return identity


def unknown_accounts(config: Config) -> list[str]:
    """One line per ``[user.NAME]`` and ``[group.NAME]`` table whose name this host's
    passwd or group database does not know, with its file and line: accepted (the
    account may be made later, and then the table applies), but most often a typo that
    would otherwise do nothing without a word. A ``[user.UID]`` table is not checked:
    a uid owns sockets whether or not it has a passwd entry."""
    found: list[str] = []
    for name, table in config.users.items():
        if isinstance(name, int) or _exists(pwd.getpwnam, name):
            continue
        found.append(
            f"{_place(config, table.line)}{table.source} names no user of this host (not in "
            f"the passwd database): it does nothing until such a user exists"
        )
    for name, table in config.groups.items():
        if _exists(grp.getgrnam, name):
            continue
        found.append(
            f"{_place(config, table.line)}{table.source} names no group of this host (not "
            f"in the group database): it does nothing until such a group exists"
        )
    return found


def _exists(lookup: Any, name: str) -> bool:
    try:
        lookup(name)
    except (KeyError, ValueError, OverflowError):
        return False
    return True


def _place(config: Config, line: int | None) -> str:
    if not _has_file(config):
        return ""
    return f"{config.filename}:{line}: " if line is not None else f"{config.filename}: "
