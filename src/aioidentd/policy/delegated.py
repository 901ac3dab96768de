"""Answers someone else chooses, and the checks the policy keeps on them: a claim made
over the claims socket (the connection's owner), a forward target (another identd), a
``[[nat]]`` entry (a machine behind this host).

Each is held to the limits a user's own reply file is held to
(:mod:`~aioidentd.policy.user_choice`), so that no way round them exists.
"""

from __future__ import annotations

from dataclasses import replace

from aioidentd.errors import ReplyFileRefused
from aioidentd.policy.answers import Answers
from aioidentd.policy.decision import Decision
from aioidentd.policy.layers import Layers
from aioidentd.policy.settings import AnswerSettings, NatRule
from aioidentd.policy.trail import Trail
from aioidentd.policy.user_choice import UserChoice, privileged_port
from aioidentd.protocol import Address, ErrorReply, Reply, UserIdReply, random_user_id, safe_user_id

__all__ = ["Delegated"]


def _inner(inner: Address) -> str:
    host = f"[{inner[0]}]" if ":" in inner[0] else inner[0]
    return f"inner host {host}:{inner[1]}"


class Delegated:
    """The policy's part in claims, forwards and NAT."""

    def __init__(self, layers: Layers, answers: Answers, choice: UserChoice) -> None:
        self._layers = layers
        self._answers = answers
        self._choice = choice
        self._reply = layers.config.reply

    # -- claims: the owner of the connection chose over the claims socket ---------------

    def claimable(
        self, uid: int, local: Address, remote: Address, user_id: str | None
    ) -> str | None:
        """Why ``uid`` may not claim this connection of its own, or None when it may."""
        name = self._layers.user_db.name_of(uid)
        settings = self._layers.settings_for(uid, name, local, remote)
        who = f"{name} (uid {uid})" if name else f"uid {uid}"
        if not settings.allow_user_reply:
            return f"the policy does not let {who} choose answers (allow_user_reply)"
        privileged = privileged_port(remote, settings)
        if privileged is not None:
            return privileged
        if user_id is not None:
            try:
                self._choice.chosen_id(uid, user_id, settings)
            except ReplyFileRefused as exc:
                return str(exc)
        return None

    def claimed(
        self, uid: int, user_id: bytes | None, opsys: str, charset: str | None, error: str | None
    ) -> Decision:
        """The decision for a claim the policy allows."""
        name = self._layers.user_db.name_of(uid)
        if error is not None:
            return self._answers.error("claim", "claims socket", uid, name, error)
        assert user_id is not None
        decision = self._answers.user_id("claim", "claims socket", uid, name, user_id, None)
        return replace(decision, opsys=opsys, charset=charset)

    # -- forwards: another identd chooses (answer = "forward") --------------------------

    def forward_first(
        self, decision: Decision, settings: AnswerSettings, remote: Address, trail: Trail
    ) -> Decision:
        """``decision`` with the forward target to ask first, or with the reason why
        there is none: the forward target chooses the id, so the limit on privileged
        remote ports applies as to a user's own reply."""
        target = settings.forward
        if target is None:
            return decision
        note = privileged_port(remote, settings)
        if note is not None:
            trail.add("no forward: %s", note)
            return replace(decision, note=note, reasons=trail.lines)
        return replace(decision, forward=target, spoof_other=bool(settings.allow_spoof_other))

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
                error = self._answers.error(
                    "forward", source, own.uid, own.user_name, "HIDDEN-USER"
                )
                return replace(error, forward=target)
            failure = f"it answered ERROR : {reply.error}"
        elif failure is None and isinstance(reply, UserIdReply):
            failure, raw, charset = self._forwarded_id(own, reply)
            if failure is None and raw is not None:
                decision = self._answers.user_id(
                    "forward", source, own.uid or 0, own.user_name, raw, None
                )
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
        charset = self._reply.charset if text.isascii() else reply.charset
        try:
            raw = safe_user_id(text, charset)
        except ValueError as exc:
            return f"its id is refused: {exc}", None, None
        if not own.spoof_other:
            try:
                self._choice.check_not_another_user(text, -1 if own.uid is None else own.uid)
            except ReplyFileRefused as exc:
                return str(exc), None, None
        return None, raw, charset

    # -- NAT: connections of machines behind this host ---------------------------------

    def nat_decision(self, rule: NatRule, inner: Address) -> Decision:
        """A ``[[nat]]`` entry's static answer for the inner machine's connection."""
        source = f"[[nat]] #{rule.number}"
        if rule.answer in ("hidden", "no-user"):
            error = "HIDDEN-USER" if rule.answer == "hidden" else "NO-USER"
            return self.nat_error(inner, error, source)
        text = rule.reply if rule.answer == "fixed" and rule.reply else random_user_id()
        raw = safe_user_id(text, self._reply.charset)
        return self.nat_user(rule, inner, raw, self._reply.charset, kind=rule.answer)

    def nat_user(
        self,
        rule: NatRule,
        inner: Address,
        raw: bytes,
        charset: str | None,
        kind: str = "nat-forward",
    ) -> Decision:
        """The id an inner machine's identd (or the entry) gave, as this host's answer."""
        return Decision(
            kind=kind,
            source=f"[[nat]] #{rule.number}",
            user_name=_inner(inner),
            user_id=raw,
            # A static entry may name its own (an oidentd_masq.conf line's system type).
            opsys=(rule.opsys if kind != "nat-forward" else None) or self._reply.opsys,
            charset=charset,
        )

    def nat_error(self, inner: Address, error: str, source: str) -> Decision:
        """An error for an inner machine's connection."""
        decision = self._answers.error("nat", source, None, None, error)
        return replace(decision, user_name=_inner(inner))
