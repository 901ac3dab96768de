"""Deciding what a host identd answers for a connection, given the uid that owns it.

Pure logic over a :class:`~aioidentd.policy.settings.Config`: no sockets, no event loop,
so the whole policy (precedence, root hiding, spoofing limits, error masking) is testable
with a fake user database. The only I/O is a user's reply file, read by
:mod:`~aioidentd.policy.userfiles` and never as root.

:meth:`Policy.decide` is the order of the steps; each step has its module:

* :mod:`.users`: who the users are (names, homes, groups) and the log lines about them;
* :mod:`.layers`: which settings apply (rules, user and group tables, defaults, merged);
* :mod:`.user_choice`: what a user chose (reply file, oidentd file) within the limits;
* :mod:`.answers`: the configured answer kinds made into decisions;
* :mod:`.delegated`: answers chosen elsewhere (claims, forward targets, NAT);
* :mod:`.decision`: the result, :class:`Decision`; :mod:`.trail`: the explain trail.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace

from aioidentd.policy.answers import Answers, pseudonyms_for
from aioidentd.policy.decision import CLAIM_NOT_USED, NAT_FORWARD_NOT_USED, Decision
from aioidentd.policy.delegated import Delegated
from aioidentd.policy.layers import Layers, merge_settings
from aioidentd.policy.settings import AnswerSettings, Config, NatRule
from aioidentd.policy.trail import SILENT, Recording, Trail
from aioidentd.policy.user_choice import UserChoice, privileged_port
from aioidentd.policy.users import FILE_LOG_INTERVAL, SystemUserDB, UserDB, UserLog
from aioidentd.protocol import Address, Reply, show_address
from aioidentd.pseudonym import Pseudonyms

__all__ = [
    "FILE_LOG_INTERVAL",
    "NAT_FORWARD_NOT_USED",
    "Decision",
    "Policy",
    "SystemUserDB",
    "UserDB",
    "merge_settings",
]

logger = logging.getLogger(__name__)


class Policy:
    """Answers ``which reply for this connection`` from a configuration.

    ``user_db`` defaults to the system's passwd and group databases. ``geteuid`` is
    injectable only so that tests running as root can exercise reply files; the daemon
    must leave it alone. ``pseudonym_key`` is the secret of ``answer = "pseudonym"``
    (required when a table answers so; see :mod:`aioidentd.pseudonym`).
    """

    def __init__(
        self,
        config: Config,
        *,
        user_db: UserDB | None = None,
        geteuid: Callable[[], int] = os.geteuid,
        pseudonym_key: bytes | None = None,
    ) -> None:
        self.config = config
        self.user_db: UserDB = user_db if user_db is not None else SystemUserDB()
        log = UserLog(logger)
        pseudonyms = None
        if config.uses_pseudonyms:
            if pseudonym_key is None:
                raise ValueError('answer = "pseudonym" needs the key: Policy(pseudonym_key=...)')
            pseudonyms = pseudonyms_for(config.pseudonym, pseudonym_key)
        #: What ``answer = "pseudonym"`` answers with (None: no table answers so).
        self.pseudonyms: Pseudonyms | None = pseudonyms
        self._layers = Layers(config, self.user_db)
        self._answers = Answers(config, log, pseudonyms)
        self._choice = UserChoice(config, self.user_db, self._answers, log, geteuid)
        self._delegated = Delegated(self._layers, self._answers, self._choice)
        tables = [
            config.default,
            *config.users.values(),
            *config.groups.values(),
            *(rule.settings for rule in config.rules),
        ]
        self._reads_files = any(table.may_choose() for table in tables)
        #: The answer for a connection the lookup did not find (most queries a busy
        #: identd gets are about nothing): the same decision every time it is not
        #: explained, built once rather than per query.
        self._no_socket = self._no_connection_decision(SILENT)

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
        if uid is None and not explain:
            return self._no_socket
        trail: Trail = Recording() if explain else SILENT
        if uid is None:
            trail.extend(_no_connection, local, remote)
            return self._no_connection_decision(trail)
        name = self.user_db.name_of(uid)
        trail.extend(_owner, uid, name)
        settings = self._layers.settings_for(uid, name, local, remote, trail)
        if settings.forward is not None:
            trail.add(
                'answer = "forward": the daemon asks %s first; '
                "when that gives no usable answer, the answer that follows",
                settings.forward,
            )
        decision = self._own_answer(uid, name, settings, local, remote, trail)
        return self._delegated.forward_first(decision, settings, remote, trail)

    def _no_connection_decision(self, trail: Trail) -> Decision:
        return self._answers.error(
            "no-socket", "lookup found no connection", None, None, "NO-USER", trail=trail
        )

    def _own_answer(
        self,
        uid: int,
        name: str | None,
        settings: AnswerSettings,
        local: Address,
        remote: Address,
        trail: Trail,
    ) -> Decision:
        """The user's choice where they may choose, else what the settings say."""
        note: str | None = None
        if settings.may_choose():
            chosen, note = self._choice.choose(uid, name, settings, local, remote, trail)
            if chosen is not None:
                return chosen
        if note is None and trail is SILENT:
            return self._answers.remembered(uid, name, settings, remote)
        decision = self._answers.from_settings(uid, name, settings, remote, note, trail)
        if note is not None and privileged_port(remote, settings) is not None:
            # Normal (a user's IRC id is not for their mail): INFO, not WARNING.
            return replace(decision, note_level=logging.INFO)
        return decision

    def settings_for(
        self,
        uid: int,
        name: str | None,
        local: Address,
        remote: Address,
        trail: Trail = SILENT,
    ) -> AnswerSettings:
        """The effective settings: each one from the first layer that sets it (see
        :meth:`.layers.Layers.settings_for`)."""
        return self._layers.settings_for(uid, name, local, remote, trail)

    def lookup_failed(self, local: Address, remote: Address, error: str) -> Decision:
        """The decision when the lookup itself failed: ``UNKNOWN-ERROR`` (never masked,
        never another answer: nobody knows whose connection it is)."""
        return self._answers.lookup_failed(local, remote, error)

    # -- claims, forwards and NAT (see .delegated) -------------------------------------

    def claimable(
        self, uid: int, local: Address, remote: Address, user_id: str | None
    ) -> str | None:
        """Why ``uid`` may not choose the answer for this connection of its own (a claim
        over the daemon's claims socket), or None when it may: the same permission and
        limits as a reply file (``allow_user_reply``, ``allow_spoof_privport``, the id
        rules and ``allow_spoof_other``)."""
        return self._delegated.claimable(uid, local, remote, user_id)

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
        if reason is not None:
            return replace(self.decide(uid, local, remote), note=f"{CLAIM_NOT_USED}{reason}")
        return self._delegated.claimed(uid, user_id, opsys, charset, error)

    def forwarded(self, own: Decision, reply: Reply | None, failure: str | None) -> Decision:
        """The decision once ``own.forward`` was asked (see
        :meth:`.delegated.Delegated.forwarded`)."""
        return self._delegated.forwarded(own, reply, failure)

    def nat_decision(self, rule: NatRule, inner: Address) -> Decision:
        """A ``[[nat]]`` entry's static answer for the inner machine's connection."""
        return self._delegated.nat_decision(rule, inner)

    def nat_user(
        self,
        rule: NatRule,
        inner: Address,
        raw: bytes,
        charset: str | None,
        kind: str = "nat-forward",
    ) -> Decision:
        """The id an inner machine's identd gave, as this host's answer."""
        return self._delegated.nat_user(rule, inner, raw, charset, kind)

    def nat_error(self, inner: Address, error: str, source: str) -> Decision:
        """An error for an inner machine's connection."""
        return self._delegated.nat_error(inner, error, source)


def _no_connection(local: Address, remote: Address) -> tuple[str]:
    return (
        f"no live connection {show_address(local)} <-> {show_address(remote)} in the socket "
        "table (the lookup found none, or only a closed one that nobody owns)",
    )


def _owner(uid: int, name: str | None) -> tuple[str]:
    return (f"owner: uid {uid} ({name})" if name else f"owner: uid {uid} (no user name)",)
