"""Deciding what a host identd answers for a connection, given the uid that owns it.

Pure logic over a :class:`~aioidentd.policy.settings.Config`: no sockets, no event loop,
so the whole policy (precedence, root hiding, spoofing limits, error masking) is testable
with a fake user database. The only I/O is a user's reply file, read by
:mod:`~aioidentd.policy.userfiles` and never as root.

The result is a :class:`Decision`, which carries both the reply and the truth behind it
(the real user), because an identd that lets users pick their answer must log who they
really were for abuse handling, as oidentd does.
"""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import pwd
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from aioidentd._ratelimit import RateLimitedLog
from aioidentd.errors import ReplyFileRefused
from aioidentd.policy.oidentd_conf import UserFile, parse_user_file
from aioidentd.policy.settings import (
    BUILTIN_DEFAULT,
    BUILTIN_ROOT,
    AnswerSettings,
    Config,
    ForwardTarget,
    NatRule,
    Network,
    Rule,
)
from aioidentd.policy.userfiles import REPLY_FILE, read_oidentd_file, read_reply_file
from aioidentd.protocol import (
    Address,
    ErrorReply,
    Reply,
    UserIdReply,
    ip_of,
    random_user_id,
    safe_user_id,
    show_address,
)

__all__ = [
    "Decision",
    "Policy",
    "SystemUserDB",
    "UserDB",
    "merge_settings",
]

logger = logging.getLogger(__name__)

#: Seconds between two log lines about the same user's name (see Policy._log).
FILE_LOG_INTERVAL = 600.0
#: How a decision's note starts when a claim made over the claims socket was refused.
_CLAIM_NOT_USED = "claim not used: "
#: ... and when a [[nat]] forward gave no usable answer.
NAT_FORWARD_NOT_USED = "nat forward not used: "
#: The largest uid there can be (uid_t is 32 bits; (uid_t)-1 means "no uid"); a bigger
#: number cannot name a user, and the passwd lookup would overflow on it.
_MAX_UID = 2**32 - 2


def merge_settings(first: AnswerSettings, *rest: AnswerSettings) -> AnswerSettings:
    """Fill ``first``'s unset fields from ``rest`` in order (answer and reply go together).

    ``answer = "forward"`` sets :attr:`AnswerSettings.forward` and leaves ``answer`` to
    the next layer that sets one: what the user gets when the forward fails.
    """
    values: dict[str, Any] = {}
    for settings in (first, *rest):
        if settings.answer == "forward":
            # The first forward wins; the answer used when it fails is the next layer's.
            if "answer" not in values and "forward" not in values:
                values["forward"] = settings.forward
        elif "answer" not in values and settings.answer is not None:
            values["answer"] = settings.answer
            values["reply"] = settings.reply
            values["source"] = settings.source
            values["line"] = settings.line
        for name in ("allow_user_reply", "allow_spoof_other", "allow_spoof_privport"):
            if name not in values and getattr(settings, name) is not None:
                values[name] = getattr(settings, name)
    return AnswerSettings(**values)


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


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one query, and who really owns the connection (for the log).

    Exactly one of ``user_id`` (then ``opsys`` and ``charset`` apply) and ``error`` is
    set. ``kind`` is what produced it: one of the config's answer kinds,
    ``"user-reply"`` (the user's own file) or ``"no-socket"`` (the lookup found nothing).
    ``unmasked_error`` keeps the real error when ``mask_errors`` replaced it; ``note``
    says why a user's reply file (or oidentd file, or forward) was not used, and
    ``note_level`` how loud that is (INFO for a privileged remote port, which is normal;
    WARNING otherwise). The policy does not log notes: a local user can make every
    query refuse their file, so the layer that serves queries logs them, rate-limited
    per user (:class:`~aioidentd.daemon.responder.KernelResponder`).

    ``reasons`` is every step that led here, in words and in order (when asked for:
    ``decide(..., explain=True)``), and ``why`` the decisive one in a few words
    (``random, [[rule]] #2 matched: remote port 6667``): built by the code that decides,
    as it decides, so that ``aioidentd explain`` and the query log can never tell a
    different story from the answer that went out.
    """

    kind: str
    source: str
    uid: int | None = None
    user_name: str | None = None
    user_id: bytes | None = None
    opsys: str = "UNIX"
    charset: str | None = None
    error: str | None = None
    unmasked_error: str | None = None
    note: str | None = None
    note_level: int = logging.WARNING
    #: Ask this identd first (``answer = "forward"``); this decision is what goes out
    #: when it gives no usable answer (:meth:`Policy.forwarded`).
    forward: ForwardTarget | None = None
    #: Whether a forwarded id may be another user's name (``allow_spoof_other``).
    spoof_other: bool = False
    reasons: tuple[str, ...] = ()
    why: str = ""

    @property
    def spoofed(self) -> bool:
        """The reply is not the user's real identity: worth logging with the real one."""
        return self.kind in ("fixed", "random", "user-reply", "forward", "claim", "nat-forward")

    def reply(self, server_port: int, client_port: int) -> Reply:
        """The protocol reply for the queried port pair."""
        if self.user_id is not None:
            return UserIdReply(server_port, client_port, self.opsys, self.user_id, self.charset)
        return ErrorReply(server_port, client_port, self.error or "UNKNOWN-ERROR")

    @property
    def refused_file(self) -> bool:
        """``note`` says why a user's reply or oidentd file was not used (not a claim, a
        forward or a NAT forward, whose notes are part of the query's line)."""
        return (
            self.note is not None
            and self.forward is None
            and not self.note.startswith((_CLAIM_NOT_USED, NAT_FORWARD_NOT_USED))
        )

    @property
    def who(self) -> str:
        """The real user, for the log: ``alice (uid 1000)``, ``uid 1003``, ``no socket``."""
        if self.uid is None:
            return self.user_name or "no socket"  # a NAT'd inner machine has a name only
        if self.user_name is None:
            return f"uid {self.uid}"
        return f"{self.user_name} (uid {self.uid})"

    def describe(self) -> str:
        """One log line: ``alice (uid 1000) replied as 'foo' (user-reply, ...)``."""
        who = "lookup failed:" if self.kind == "lookup-failed" else self.who
        if self.user_id is not None:
            try:
                shown = repr(self.user_id.decode(self.charset or "ascii"))
            except (UnicodeDecodeError, LookupError):
                shown = f"0x{self.user_id.hex()}"
            what = f"replied as {shown}"
        elif self.unmasked_error is not None:
            what = f"{self.unmasked_error} sent as {self.error}"
        else:
            what = str(self.error)
        text = f"{who} {what} ({self.why or f'{self.kind}, {self.source}'})"
        if self.note:
            if self.note.startswith((_CLAIM_NOT_USED, NAT_FORWARD_NOT_USED)):
                text += f"; {self.note}"
            else:
                label = "forward not used" if self.forward is not None else "reply file not used"
                text += f"; {label}: {self.note}"
        return text


def _inner(inner: Address) -> str:
    host = f"[{inner[0]}]" if ":" in inner[0] else inner[0]
    return f"inner host {host}:{inner[1]}"


def _privileged_port(remote: Address, settings: AnswerSettings) -> str | None:
    """Why a user may not choose the id for a connection to a privileged remote port
    (``allow_spoof_privport`` off), or None: one limit for reply files, oidentd files,
    claims and forwards, so that all of them say it alike."""
    if remote[1] < 1024 and not settings.allow_spoof_privport:
        return f"remote port {remote[1]} is privileged and allow_spoof_privport is off"
    return None


def _address_in(address: str, networks: Sequence[Network]) -> bool:
    """Whether an address is in any network, seeing ``::ffff:a.b.c.d`` and ``a.b.c.d``
    as the same host (a dual-stack socket reports IPv4 peers in the mapped form)."""
    try:
        ip = ip_of(address)
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv4Address):
        # A network written in the mapped form (::ffff:0:0/96) still matches.
        candidates.append(ipaddress.IPv6Address(f"::ffff:{ip}"))
    return any(candidate in network for candidate in candidates for network in networks)


class Policy:
    """Answers ``which reply for this connection`` from a configuration.

    ``user_db`` defaults to the system's passwd and group databases. ``geteuid`` is
    injectable only so that tests running as root can exercise reply files; the daemon
    must leave it alone.
    """

    def __init__(
        self,
        config: Config,
        *,
        user_db: UserDB | None = None,
        geteuid: Callable[[], int] = os.geteuid,
    ) -> None:
        self.config = config
        self.user_db: UserDB = user_db if user_db is not None else SystemUserDB()
        self._geteuid = geteuid
        #: (path, hash of the text) of user files whose problems were logged.
        self._reported: set[tuple[str, int]] = set()
        self._file_log = RateLimitedLog(logger, interval=FILE_LOG_INTERVAL)
        self._log_lock = threading.Lock()
        self._needs_groups = bool(config.groups) or any(rule.groups for rule in config.rules)
        # Per-query shortcuts, computed once: the configuration is frozen.
        tables = [
            config.default,
            *config.users.values(),
            *config.groups.values(),
            *(rule.settings for rule in config.rules),
        ]
        self._reads_files = any(table.allow_user_reply for table in tables)
        #: What settings_for() merges for a user with no table of its own when there are
        #: no rules and no group tables (the built-in policy): the same every time.
        self._plain: AnswerSettings | None = None
        if not config.rules and not config.groups:
            self._plain = merge_settings(config.default, BUILTIN_DEFAULT)
        #: What settings_for() gives root when no table of its own sets an answer.
        self._root = merge_settings(BUILTIN_ROOT, BUILTIN_DEFAULT)

    def _log(self, level: int, uid: int, msg: str, *args: object) -> None:
        """A line about a user's name (one that cannot go on the wire): written once per
        user and message per :data:`FILE_LOG_INTERVAL`, then counted, because every query
        about that user's connections (which the other end may send at will) would
        repeat it. Under a lock: the policy may run in several threads at once. (Refused
        reply and oidentd files are not logged here but by the responder, per user
        whatever the reason: the reason can carry the file's content.)"""
        key = (uid, msg, str(args[-1]) if args else "")
        with self._log_lock:
            self._file_log.log(key, level, f"lines like: {msg % args}", msg, *args)

    @property
    def reads_files(self) -> bool:
        """Whether :meth:`decide` may read a user's reply file (file I/O, which can block
        on a network home); when False it is pure computation and cheap enough to call
        on the event loop, otherwise a server should call it in a thread."""
        return self._reads_files

    def decide(
        self, uid: int | None, local: Address, remote: Address, *, explain: bool = False
    ) -> Decision:
        """The decision for the connection ``local`` (this host) <-> ``remote``.

        ``uid`` is the owner found by the lookup, None when no socket matched. With
        ``explain``, the decision's ``reasons`` list every step (``why``, its short form,
        is always there): the daemon leaves it off to keep queries cheap.
        """
        trail: list[str] | None = None
        if uid is None:
            if explain:
                trail = [
                    f"no live connection {show_address(local)} <-> {show_address(remote)} in "
                    f"the socket table (the lookup found none, or only a closed one that nobody "
                    f"owns)"
                ]
            return self._error(
                "no-socket", "lookup found no connection", None, None, "NO-USER", trail=trail
            )
        name = self.user_db.name_of(uid)
        if explain:
            trail = [f"owner: {_who(uid, name)}"]
        settings = self.settings_for(uid, name, local, remote, trail)
        target = settings.forward
        if target is not None and trail is not None:
            trail.append(
                f'answer = "forward": the daemon asks {target} first; '
                f"when that gives no usable answer, the answer that follows"
            )
        decision = self._decide(uid, name, settings, local, remote, trail)
        if target is None:
            return decision
        note = _privileged_port(remote, settings)
        if note is not None:
            # The forward target chooses the id: the same limit as a user's own reply.
            if trail is not None:
                decision = replace(decision, reasons=(*decision.reasons, f"no forward: {note}"))
            return replace(decision, note=note)
        return replace(decision, forward=target, spoof_other=bool(settings.allow_spoof_other))

    def _decide(
        self,
        uid: int,
        name: str | None,
        settings: AnswerSettings,
        local: Address,
        remote: Address,
        trail: list[str] | None = None,
    ) -> Decision:
        note: str | None = None
        if settings.allow_user_reply:
            chosen, note = self._user_reply(uid, name, settings, remote, trail)
            if chosen is not None:
                return self._user_id(
                    "user-reply",
                    settings.source,
                    uid,
                    name,
                    chosen,
                    note,
                    trail,
                    f"user-reply, ~/{REPLY_FILE} allowed by {settings.source}",
                )
            if note is None:
                # No ~/.aioidentd-reply: what the user's tools wrote for oidentd.
                decision, note = self._oidentd_choice(uid, name, settings, local, remote, trail)
                if decision is not None:
                    return decision
        decision = self._from_settings(uid, name, settings, note, trail)
        if note is not None and _privileged_port(remote, settings) is not None:
            # Normal (a user's IRC id is not for their mail): INFO, not WARNING.
            return replace(decision, note_level=logging.INFO)
        return decision

    def claimable(
        self, uid: int, local: Address, remote: Address, user_id: str | None
    ) -> str | None:
        """Why ``uid`` may not choose the answer for this connection of its own (a claim
        over the daemon's claims socket), or None when it may: the same permission and
        limits as a reply file (``allow_user_reply``, ``allow_spoof_privport``, the id
        rules and ``allow_spoof_other``)."""
        name = self.user_db.name_of(uid)
        settings = self.settings_for(uid, name, local, remote)
        who = f"{name} (uid {uid})" if name else f"uid {uid}"
        if not settings.allow_user_reply:
            return f"the policy does not let {who} choose answers (allow_user_reply)"
        privileged = _privileged_port(remote, settings)
        if privileged is not None:
            return privileged
        if user_id is not None:
            try:
                self._chosen_id(uid, user_id, settings)
            except ReplyFileRefused as exc:
                return str(exc)
        return None

    def claimed(
        self,
        uid: int,
        local: Address,
        remote: Address,
        user_id: bytes | None,
        opsys: str,
        charset: str | None,
        error: str | None,
    ) -> Decision:
        """The decision for a connection its owner claimed (see :meth:`claimable`, asked
        again here: the policy may have been reloaded since the claim was made)."""
        text = None if user_id is None else user_id.decode(charset or "ascii", "replace")
        reason = self.claimable(uid, local, remote, text)
        name = self.user_db.name_of(uid)
        if reason is not None:
            decision = self.decide(uid, local, remote)
            return replace(decision, note=f"{_CLAIM_NOT_USED}{reason}")
        if error is not None:
            return self._error("claim", "claims socket", uid, name, error)
        assert user_id is not None
        decision = self._user_id("claim", "claims socket", uid, name, user_id, None)
        return replace(decision, opsys=opsys, charset=charset)

    # -- NAT: connections of machines behind this host ---------------------------------

    def nat_decision(self, rule: NatRule, inner: Address) -> Decision:
        """A ``[[nat]]`` entry's static answer for the inner machine's connection."""
        source = f"[[nat]] #{rule.number}"
        if rule.answer in ("hidden", "no-user"):
            error = "HIDDEN-USER" if rule.answer == "hidden" else "NO-USER"
            return self.nat_error(inner, error, source)
        text = rule.reply if rule.answer == "fixed" and rule.reply else random_user_id()
        raw = safe_user_id(text, self.config.reply.charset)
        return self.nat_user(rule, inner, raw, self.config.reply.charset, kind=rule.answer)

    def nat_user(
        self,
        rule: NatRule,
        inner: Address,
        raw: bytes,
        charset: str | None,
        kind: str = "nat-forward",
    ) -> Decision:
        return Decision(
            kind=kind,
            source=f"[[nat]] #{rule.number}",
            user_name=_inner(inner),
            user_id=raw,
            opsys=self.config.reply.opsys,
            charset=charset,
        )

    def nat_error(self, inner: Address, error: str, source: str) -> Decision:
        decision = self._error("nat", source, None, None, error)
        return replace(decision, user_name=_inner(inner))

    def forwarded(self, own: Decision, reply: Reply | None, failure: str | None) -> Decision:
        """The decision once ``own.forward`` was asked: its answer relayed, or ``own``
        with the reason why not (``failure``, or an answer the policy refuses).

        Relayed: a user id that passes the same checks as a user's own reply (the wire
        rules, not another user's name unless ``allow_spoof_other``), sent with this
        daemon's opsys; ``HIDDEN-USER`` (the application chose to hide). Any other error
        means the target could not answer for the connection, so the user gets the
        policy's own answer.
        """
        target = own.forward
        if target is None:
            return own
        source = f"forward to {target}"
        if failure is None and isinstance(reply, ErrorReply):
            if reply.error == "HIDDEN-USER":
                error = self._error("forward", source, own.uid, own.user_name, "HIDDEN-USER")
                return replace(error, forward=target)
            failure = f"it answered ERROR : {reply.error}"
        elif failure is None and isinstance(reply, UserIdReply):
            failure, raw, charset = self._forwarded_id(own, reply)
            if failure is None and raw is not None:
                decision = self._user_id("forward", source, own.uid or 0, own.user_name, raw, None)
                return replace(decision, charset=charset, forward=target)
        elif failure is None:
            failure = "no answer"
        return replace(own, note=f"{target}: {failure}")

    def _forwarded_id(
        self, own: Decision, reply: UserIdReply
    ) -> tuple[str | None, bytes | None, str | None]:
        """(why refused, the id's octets, its charset)."""
        text = reply.user_id
        if not isinstance(text, str):
            return f"its id is not {reply.charset or 'US-ASCII'} text", None, None
        charset = self.config.reply.charset if text.isascii() else reply.charset
        try:
            raw = safe_user_id(text, charset)
        except ValueError as exc:
            return f"its id is refused: {exc}", None, None
        if not own.spoof_other:
            try:
                self._check_not_another_user(text, -1 if own.uid is None else own.uid)
            except ReplyFileRefused as exc:
                return str(exc), None, None
        return None, raw, charset

    def settings_for(
        self,
        uid: int,
        name: str | None,
        local: Address,
        remote: Address,
        trail: list[str] | None = None,
    ) -> AnswerSettings:
        """The effective settings: each one from the first layer that sets it.

        ``trail``, when given, receives each step in words: which tables applied, which
        rules did not match and why, and where each setting came from.
        """
        user_tables = [
            self.config.users[key]
            for key in (uid, name)
            if key is not None and key in self.config.users
        ]
        if uid == 0 and not any(table.answer is not None for table in user_tables):
            if trail is not None:
                trail.append(
                    "uid 0 is root and no [user.root] or [user.0] table sets an answer: "
                    "the built-in root rule hides it"
                )
            return self._root
        if self._plain is not None and not user_tables:
            if trail is not None:
                trail.append("no [user.X] table for this user; no [group.X] or [[rule]] tables")
                _origins((), self._plain, self.config.default, trail)
            return self._plain
        groups: Sequence[str] = self.user_db.groups_of(uid) if self._needs_groups else ()
        layers: list[AnswerSettings] = []
        for rule in self.config.rules:
            miss = self._mismatch(rule, uid, name, groups, local, remote)
            if miss is None:
                layers.append(rule.settings)
                if trail is not None:
                    trail.append(f"{_table(rule.settings)} matches ({rule.describe() or 'any'})")
                break
            if trail is not None:
                trail.append(f"{_table(rule.settings)} does not match: {miss}")
        layers.extend(user_tables)
        member = set(groups)
        group_tables = [table for key, table in self.config.groups.items() if key in member]
        layers.extend(group_tables)
        merged = merge_settings(*layers, self.config.default, BUILTIN_DEFAULT)
        if trail is not None:
            for table in user_tables:
                trail.append(f"{_table(table)} applies")
            for table in group_tables:
                trail.append(f"{_table(table)} applies (a group of the user)")
            _origins(layers, merged, self.config.default, trail)
        return merged

    @staticmethod
    def _mismatch(
        rule: Rule,
        uid: int,
        name: str | None,
        groups: Sequence[str],
        local: Address,
        remote: Address,
    ) -> str | None:
        """Why ``rule`` does not apply to this connection and user, or None when it does."""
        if rule.local_ports and not any(local[1] in ports for ports in rule.local_ports):
            return f"local port {local[1]} is not {_any_of(rule.local_ports)}"
        if rule.remote_ports and not any(remote[1] in ports for ports in rule.remote_ports):
            return f"remote port {remote[1]} is not {_any_of(rule.remote_ports)}"
        if rule.local_addresses and not _address_in(local[0], rule.local_addresses):
            return f"local address {local[0]} is not in {_any_of(rule.local_addresses)}"
        if rule.remote_addresses and not _address_in(remote[0], rule.remote_addresses):
            return f"remote address {remote[0]} is not in {_any_of(rule.remote_addresses)}"
        if rule.users and uid not in rule.users and (name is None or name not in rule.users):
            return f"the user is not {_any_of(rule.users)}"
        if rule.groups and not any(group in rule.groups for group in groups):
            return f"the user is in none of the groups {_any_of(rule.groups)}"
        return None

    def _user_reply(
        self,
        uid: int,
        name: str | None,
        settings: AnswerSettings,
        remote: Address,
        trail: list[str] | None = None,
    ) -> tuple[bytes | None, str | None]:
        """The user's own reply, or None and why not (in ``trail`` too; not logged here:
        see :class:`Decision`)."""
        where = f"~{name}/{REPLY_FILE}" if name else REPLY_FILE
        note = _privileged_port(remote, settings)
        if note is None and self._geteuid() == 0:
            note = "the daemon runs as root and never reads users' files as root"
        elif note is None and not self.user_db.home_of(uid):
            note = "the user has no home directory"
        if note is not None:
            if trail is not None:
                trail.append(f"reply file {where}: not read: {note}")
            return None, note
        home = self.user_db.home_of(uid) or ""
        try:
            text = read_reply_file(home, uid)
            if text is None:
                if trail is not None:
                    trail.append(f"reply file {where}: there is none")
                return None, None
            raw = self._chosen_id(uid, text, settings)
        except ReplyFileRefused as exc:
            if trail is not None:
                trail.append(f"reply file {where}: refused: {exc}")
            return None, str(exc)
        if trail is not None:
            trail.append(f"reply file {where}: used, it says {text!r}")
        return raw, None

    def _chosen_id(self, uid: int, text: str, settings: AnswerSettings) -> bytes:
        """The octets of an id a user chose, or ReplyFileRefused saying why not: the wire
        rules, and not another user's name or uid unless ``allow_spoof_other``."""
        try:
            raw = safe_user_id(text, self.config.reply.charset)
        except ValueError as exc:
            raise ReplyFileRefused(f"invalid reply: {exc}") from None
        if not settings.allow_spoof_other:
            self._check_not_another_user(text, uid)
        return raw

    def _oidentd_choice(
        self,
        uid: int,
        name: str | None,
        settings: AnswerSettings,
        local: Address,
        remote: Address,
        trail: list[str] | None = None,
    ) -> tuple[Decision | None, str | None]:
        """What the user's oidentd file says for this connection (see
        :mod:`.oidentd_conf`), or None and why not. Called only where
        the user may choose and has no ``~/.aioidentd-reply``; the same limits apply."""
        who = f"{name} (uid {uid})" if name else f"uid {uid}"
        home = self.user_db.home_of(uid)
        if not home:
            return None, None
        try:
            found = read_oidentd_file(home, uid)
            if found is None:
                if trail is not None:
                    trail.append("oidentd file of the user: there is none")
                return None, None
            path, text = found
            parsed = parse_user_file(text)
            self._report_problems(uid, who, path, text, parsed)
            entry = parsed.choose(local, remote)
            if entry is None:
                if trail is not None:
                    trail.append(f"oidentd file {path}: nothing in it applies to this connection")
                return None, None
            source = f"{path} line {entry.line}"
            chosen = entry.choice.user_id(uid)
            why = f"user-reply, {source}"
            if chosen is None:
                if trail is not None:
                    trail.append(f"oidentd file {source}: hides the user")
                decision = self._error(
                    "user-reply", source, uid, name, "HIDDEN-USER", None, trail, why
                )
                return decision, None
            raw = self._chosen_id(uid, chosen, settings)
        except ReplyFileRefused as exc:
            if trail is not None:
                trail.append(f"oidentd file of the user: refused: {exc}")
            return None, f"oidentd file: {exc}"
        if trail is not None:
            trail.append(f"oidentd file {source}: used, it says {chosen!r}")
        return self._user_id("user-reply", source, uid, name, raw, None, trail, why), None

    def _report_problems(self, uid: int, who: str, path: str, text: str, parsed: UserFile) -> None:
        """Log what a user file says that is not understood, once per version of the
        file (every query reads it; the log must not repeat it per query), and at most
        once per user and :data:`FILE_LOG_INTERVAL`, then counted (the user can write a
        new version before every query)."""
        if not parsed.problems:
            return
        key = (path, hash(text))
        if key in self._reported:
            return
        if len(self._reported) >= 1024:
            self._reported.clear()
        self._reported.add(key)
        with self._log_lock:
            self._file_log.log(
                ("not understood", uid),
                logging.WARNING,
                f"versions of {who}'s files with parts not understood",
                "%s: parts of %s are not understood: %s",
                who,
                path,
                "; ".join(parsed.problems),
            )

    def _check_not_another_user(self, text: str, uid: int) -> None:
        """Raise :class:`ReplyFileRefused` if ``text`` names another existing user: by
        login name (exactly, or in lower case), or by number, since ``answer = "uid"``
        answers the uid as text and "991" must not be claimable by anyone but uid 991
        (leading zeros too: a reader that takes the number sees the same uid)."""
        for candidate in dict.fromkeys((text, text.lower())):
            other = self.user_db.uid_of(candidate)
            if other is not None and other != uid:
                raise ReplyFileRefused(
                    f"{text!r} is the name of another user (uid {other}) and "
                    f"allow_spoof_other is off"
                )
        if text.isascii() and text.isdigit():
            number = int(text)
            if number != uid and number <= _MAX_UID and self.user_db.name_of(number) is not None:
                raise ReplyFileRefused(
                    f"{text!r} is the uid of another user ({self.user_db.name_of(number)}) "
                    f"and allow_spoof_other is off"
                )

    def _from_settings(
        self,
        uid: int,
        name: str | None,
        settings: AnswerSettings,
        note: str | None,
        trail: list[str] | None,
    ) -> Decision:
        kind = settings.answer or "hidden"
        source = settings.source
        why = f"{kind}, {source}"
        for rule in self.config.rules:
            if rule.settings.source == source:
                why += f" matched: {rule.describe() or 'any connection'}"
        if kind == "hidden":
            return self._error(kind, source, uid, name, "HIDDEN-USER", note, trail, why)
        if kind == "no-user":
            return self._error(kind, source, uid, name, "NO-USER", note, trail, why)
        charset = self.config.reply.charset
        raw: bytes | None = None
        if kind == "random":
            text = random_user_id()
            if trail is not None:
                trail.append("a random id, drawn afresh for each query")
        elif kind == "fixed" and settings.reply is not None:
            text = settings.reply
        elif kind == "username" and name is not None:
            text = name
            try:
                raw = safe_user_id(name, charset)
            except ValueError as exc:
                self._log(
                    logging.WARNING, uid, "answering uid %d instead of its name: %s", uid, exc
                )
                if trail is not None:
                    trail.append(f"the user name cannot go on the wire ({exc}): the uid instead")
                text = str(uid)
        else:  # "uid", or "username" without a passwd entry
            if kind == "username" and trail is not None:
                trail.append(f"uid {uid} has no user name (no passwd entry): the uid instead")
            text = str(uid)
        if raw is None:
            raw = safe_user_id(text, charset)
        return self._user_id(kind, source, uid, name, raw, note, trail, why)

    def _user_id(
        self,
        kind: str,
        source: str,
        uid: int,
        name: str | None,
        raw: bytes,
        note: str | None,
        trail: Sequence[str] | None = None,
        why: str = "",
    ) -> Decision:
        return Decision(
            kind=kind,
            source=source,
            uid=uid,
            user_name=name,
            user_id=raw,
            opsys=self.config.reply.opsys,
            charset=self.config.reply.charset,
            note=note,
            reasons=tuple(trail or ()),
            why=why or f"{kind}, {source}",
        )

    def _error(
        self,
        kind: str,
        source: str,
        uid: int | None,
        name: str | None,
        error: str,
        note: str | None = None,
        trail: Sequence[str] | None = None,
        why: str = "",
    ) -> Decision:
        masked = self.config.reply.mask_errors and error != "UNKNOWN-ERROR"
        reasons = tuple(trail or ())
        why = why or f"{kind}, {source}"
        if masked and trail is not None:
            reasons += (f"{error} is sent as UNKNOWN-ERROR: [reply] mask_errors = true",)
        return Decision(
            kind=kind,
            source=source,
            uid=uid,
            user_name=name,
            error="UNKNOWN-ERROR" if masked else error,
            unmasked_error=error if masked else None,
            opsys=self.config.reply.opsys,
            charset=self.config.reply.charset,
            note=note,
            reasons=reasons,
            why=why,
        )

    def lookup_failed(self, local: Address, remote: Address, error: str) -> Decision:
        """The decision when the lookup itself failed: ``UNKNOWN-ERROR`` (never masked,
        never another answer: nobody knows whose connection it is)."""
        return Decision(
            kind="lookup-failed",
            source="the socket lookup",
            error="UNKNOWN-ERROR",
            opsys=self.config.reply.opsys,
            charset=self.config.reply.charset,
            reasons=(
                f"the lookup of {show_address(local)} <-> {show_address(remote)} failed: {error}",
            ),
            why=f"lookup-failed, {error}",
        )


def _who(uid: int, name: str | None) -> str:
    return f"uid {uid} ({name})" if name else f"uid {uid} (no user name)"


def _table(settings: AnswerSettings) -> str:
    return settings.source if settings.line is None else f"{settings.source} (line {settings.line})"


def _any_of(items: Sequence[object]) -> str:
    return " or ".join(str(item) for item in items)


#: The settings whose origin the trail names besides ``answer``.
_TRAIL_SETTINGS = ("allow_user_reply", "allow_spoof_other", "allow_spoof_privport")


def _origins(
    layers: Sequence[AnswerSettings],
    merged: AnswerSettings,
    default: AnswerSettings,
    trail: list[str],
) -> None:
    """Where each effective setting came from, by :func:`merge_settings`'s rule: the
    first layer that sets it (``answer`` carries its own source)."""
    answer = f'"{merged.answer}"'
    if merged.answer == "fixed":
        answer += f", reply = {merged.reply!r}"
    trail.append(f"answer = {answer} from {_table(merged)}")
    for setting in _TRAIL_SETTINGS:
        value = getattr(merged, setting)
        origin = next(
            (layer for layer in (*layers, default) if getattr(layer, setting) is not None),
            BUILTIN_DEFAULT,
        )
        if value or origin is not BUILTIN_DEFAULT:
            trail.append(f"{setting} = {str(value).lower()} from {_table(origin)}")
