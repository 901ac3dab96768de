"""The result of the policy: the reply for one query, and the truth behind it.

A :class:`Decision` carries both the reply and the real user, because an identd that
lets users pick their answer must log who they really were for abuse handling, as
oidentd does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aioidentd.policy.settings import ForwardTarget
from aioidentd.protocol import ErrorReply, Reply, UserIdReply

__all__ = ["CLAIM_NOT_USED", "NAT_FORWARD_NOT_USED", "Decision"]

#: How a decision's note starts when a claim made over the claims socket was refused.
CLAIM_NOT_USED = "claim not used: "
#: ... and when a [[nat]] forward gave no usable answer.
NAT_FORWARD_NOT_USED = "nat forward not used: "


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
        return self.kind in (
            "fixed",
            "random",
            "random-numeric",
            "user-reply",
            "forward",
            "claim",
            "nat-forward",
        )

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
            and not self.note.startswith((CLAIM_NOT_USED, NAT_FORWARD_NOT_USED))
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
            if self.note.startswith((CLAIM_NOT_USED, NAT_FORWARD_NOT_USED)):
                text += f"; {self.note}"
            else:
                label = "forward not used" if self.forward is not None else "reply file not used"
                text += f"; {label}: {self.note}"
        return text
