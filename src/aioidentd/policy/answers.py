"""The configured answer kinds (``username``, ``uid``, ``fixed``, ``random``,
``pseudonym``, ``hidden``, ``no-user``) made into decisions, with the ``[reply]`` settings
every decision carries (opsys, charset, error masking)."""

from __future__ import annotations

import logging
from typing import Final

from aioidentd.policy.decision import Decision
from aioidentd.policy.settings import AnswerSettings, Config, PseudonymSettings
from aioidentd.policy.trail import SILENT, Trail
from aioidentd.policy.users import UserLog
from aioidentd.protocol import (
    Address,
    random_numeric_id,
    random_user_id,
    safe_user_id,
    show_address,
)
from aioidentd.pseudonym import Pseudonyms

__all__ = ["Answers", "pseudonyms_for"]


def pseudonyms_for(settings: PseudonymSettings, key: bytes) -> Pseudonyms:
    """The ids ``[pseudonym]`` describes, made with ``key``."""
    return Pseudonyms(
        key,
        length=settings.length,
        rotate=settings.rotate,
        networks=settings.networks,
        ipv4_prefix=settings.ipv4_prefix,
        ipv6_prefix=settings.ipv6_prefix,
    )


#: The answers that are the same for every query of one user under one set of settings
#: (random ids, pseudonyms and forwards are not).
_SAME_EACH_TIME: Final = frozenset({None, "hidden", "no-user", "fixed", "username", "uid"})
#: Users x settings remembered at once; the kernel names the users, the configuration
#: the settings, so this is bounded by the host, not by queriers.
MAX_CACHED_DECISIONS: Final = 4096


class Answers:
    """Decisions as the configuration's ``[reply]`` table shapes them."""

    def __init__(self, config: Config, log: UserLog, pseudonyms: Pseudonyms | None) -> None:
        self.config = config
        self._log = log
        self.pseudonyms = pseudonyms
        #: What remembered() made, by (settings, uid, name).
        self._decisions: dict[tuple[AnswerSettings, int, str | None], Decision] = {}

    def remembered(
        self, uid: int, name: str | None, settings: AnswerSettings, remote: Address
    ) -> Decision:
        """:meth:`from_settings` for a user who chose nothing, in a query nobody asked to
        explain: where that answer is the same each time, made once per user and
        settings (most queries a host gets are a few users', answered alike)."""
        if settings.answer not in _SAME_EACH_TIME:
            return self.from_settings(uid, name, settings, remote, None)
        key = (settings, uid, name)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self.from_settings(uid, name, settings, remote, None)
            fell_back = (  # a name that cannot be sent: its warning is logged each time
                settings.answer == "username"
                and name is not None
                and name != str(uid)
                and decision.user_id == str(uid).encode()
            )
            if not fell_back:
                if len(self._decisions) >= MAX_CACHED_DECISIONS:
                    self._decisions.clear()
                self._decisions[key] = decision
        return decision

    def from_settings(
        self,
        uid: int,
        name: str | None,
        settings: AnswerSettings,
        remote: Address,
        note: str | None,
        trail: Trail = SILENT,
    ) -> Decision:
        """The answer the effective settings give (the user chose none) for a connection
        to ``remote`` (whose host is the querier)."""
        kind = settings.answer or "hidden"
        source = settings.source
        where = source
        for rule in self.config.rules:
            if rule.settings.source == source:
                where += f" matched: {rule.describe() or 'any connection'}"
        why = f"{kind}, {where}"
        if kind == "hidden":
            return self.error(kind, source, uid, name, "HIDDEN-USER", note, trail, why)
        if kind == "no-user":
            return self.error(kind, source, uid, name, "NO-USER", note, trail, why)
        charset = self.config.reply.charset
        raw: bytes | None = None
        if kind == "pseudonym":
            pseudonyms = self.pseudonyms
            assert pseudonyms is not None  # Policy() refuses a configuration without it
            text, network, epoch = pseudonyms.lookup(str(uid), remote[0])
            # Letters and digits by construction: no wire rule to check (the check is a
            # third of this answer's cost).
            raw = text.encode(charset or "ascii")
            why = f"pseudonym on network {network}{f' ({epoch})' if epoch else ''}, {where}"
            trail.extend(_pseudonym_steps, pseudonyms, uid, name, network, epoch, text)
        elif kind == "random":
            text = random_user_id()
            trail.add("a random id, drawn afresh for each query")
        elif kind == "random-numeric":
            text = random_numeric_id()
            trail.add("'user' and a random number, drawn afresh for each query")
        elif kind == "fixed" and settings.reply is not None:
            text = settings.reply
        elif kind == "username" and name is not None:
            text = name
            try:
                raw = safe_user_id(name, charset)
            except ValueError as exc:
                self._log.name(
                    logging.WARNING, uid, "answering uid %d instead of its name: %s", uid, exc
                )
                trail.add("the user name cannot go on the wire (%s): the uid instead", exc)
                text = str(uid)
        else:  # "uid", or "username" without a passwd entry
            if kind == "username":
                trail.add("uid %d has no user name (no passwd entry): the uid instead", uid)
            text = str(uid)
        if raw is None:
            raw = safe_user_id(text, charset)
        return self.user_id(kind, source, uid, name, raw, note, trail, why)

    def user_id(
        self,
        kind: str,
        source: str,
        uid: int,
        name: str | None,
        raw: bytes,
        note: str | None,
        trail: Trail = SILENT,
        why: str = "",
    ) -> Decision:
        """A decision that answers the id ``raw``."""
        return Decision(
            kind=kind,
            source=source,
            uid=uid,
            user_name=name,
            user_id=raw,
            opsys=self.config.reply.opsys,
            charset=self.config.reply.charset,
            note=note,
            reasons=trail.lines,
            why=why or f"{kind}, {source}",
        )

    def error(
        self,
        kind: str,
        source: str,
        uid: int | None,
        name: str | None,
        error: str,
        note: str | None = None,
        trail: Trail = SILENT,
        why: str = "",
    ) -> Decision:
        """A decision that answers ``ERROR : error`` (as ``UNKNOWN-ERROR`` when errors
        are masked)."""
        masked = self.config.reply.mask_errors and error != "UNKNOWN-ERROR"
        if masked:
            trail.add("%s is sent as UNKNOWN-ERROR: [reply] mask_errors = true", error)
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
            reasons=trail.lines,
            why=why or f"{kind}, {source}",
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


def _pseudonym_steps(
    pseudonyms: Pseudonyms,
    uid: int,
    name: str | None,
    network: str,
    epoch: str,
    text: str,
) -> tuple[str]:
    rotation = f"epoch {epoch}, rotated {pseudonyms.rotate}" if epoch else "never rotated"
    who = f"{name} (uid {uid})" if name else f"uid {uid}"
    return (
        f"the pseudonym of {who} for the querier's network {network} ({rotation}): "
        f"{text!r}; aioidentd resolve {text} --from ADDRESS names the user",
    )
