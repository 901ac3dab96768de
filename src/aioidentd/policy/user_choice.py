"""The id a user chose for their own connection: ``~/.aioidentd-reply``, else what their
tools wrote for oidentd, within the limits every choice shares.

The limits (one set for reply files, oidentd files, claims and forwards, so that all of
them say it alike): no choice for a connection to a privileged remote port unless
``allow_spoof_privport``; the wire rules for an id; not another user's name or uid
unless ``allow_spoof_other``; and no user's file is ever read as root.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from aioidentd.errors import ReplyFileRefused
from aioidentd.policy.answers import Answers
from aioidentd.policy.decision import Decision
from aioidentd.policy.oidentd_conf import parse_user_file
from aioidentd.policy.settings import USER_CHOICES, AnswerSettings, Config
from aioidentd.policy.trail import SILENT, Trail
from aioidentd.policy.userfiles import REPLY_FILE, read_oidentd_file, read_reply_file
from aioidentd.policy.users import MAX_UID, UserDB, UserLog
from aioidentd.protocol import Address, safe_user_id

__all__ = ["UserChoice", "privileged_port"]


def privileged_port(remote: Address, settings: AnswerSettings) -> str | None:
    """Why a user may not choose the id for a connection to a privileged remote port
    (``allow_spoof_privport`` off), or None."""
    if remote[1] < 1024 and not settings.allow_spoof_privport:
        return f"remote port {remote[1]} is privileged and allow_spoof_privport is off"
    return None


class UserChoice:
    """Reads and checks what a user chose; ``geteuid`` is injectable only so that tests
    running as root can exercise reply files."""

    def __init__(
        self,
        config: Config,
        user_db: UserDB,
        answers: Answers,
        log: UserLog,
        geteuid: Callable[[], int] = os.geteuid,
    ) -> None:
        self.config = config
        self.user_db = user_db
        self._answers = answers
        self._log = log
        self._geteuid = geteuid

    def choose(
        self,
        uid: int,
        name: str | None,
        settings: AnswerSettings,
        local: Address,
        remote: Address,
        trail: Trail = SILENT,
    ) -> tuple[Decision | None, str | None]:
        """The user's own answer (the user may choose: ``allow_user_reply`` and the
        ``allow_user_*`` keys of an oidentd file's choices), or None and
        why not (None when the user simply chose nothing; the reason is in ``trail`` too;
        not logged here: see :class:`~aioidentd.policy.decision.Decision`)."""
        chosen, note = self._reply_file(uid, name, settings, remote, trail)
        if chosen is not None:
            why = f"user-reply, ~/{REPLY_FILE} allowed by {settings.source}"
            decision = self._answers.user_id(
                "user-reply", settings.source, uid, name, chosen, note, trail, why
            )
            return decision, None
        if note is not None:
            return None, note
        # No ~/.aioidentd-reply: what the user's tools wrote for oidentd.
        return self._oidentd_file(uid, name, settings, local, remote, trail)

    def _reply_file(
        self,
        uid: int,
        name: str | None,
        settings: AnswerSettings,
        remote: Address,
        trail: Trail,
    ) -> tuple[bytes | None, str | None]:
        where = f"~{name}/{REPLY_FILE}" if name else REPLY_FILE
        note = privileged_port(remote, settings)
        if note is None and self._geteuid() == 0:
            note = "the daemon runs as root and never reads users' files as root"
        elif note is None and not self.user_db.home_of(uid):
            note = "the user has no home directory"
        if note is not None:
            trail.add("reply file %s: not read: %s", where, note)
            return None, note
        if not settings.allow_user_reply:
            # Only an oidentd file's other choices (hide, random, ...) are allowed.
            trail.add("reply file %s: not read: allow_user_reply is off", where)
            return None, None
        home = self.user_db.home_of(uid) or ""
        try:
            text = read_reply_file(home, uid)
            if text is None:
                trail.add("reply file %s: there is none", where)
                return None, None
            raw = self.chosen_id(uid, text, settings)
        except ReplyFileRefused as exc:
            trail.add("reply file %s: refused: %s", where, exc)
            return None, str(exc)
        trail.add("reply file %s: used, it says %r", where, text)
        return raw, None

    def _oidentd_file(
        self,
        uid: int,
        name: str | None,
        settings: AnswerSettings,
        local: Address,
        remote: Address,
        trail: Trail,
    ) -> tuple[Decision | None, str | None]:
        """What the user's oidentd file says for this connection (see
        :mod:`.oidentd_conf`), or None and why not."""
        who = f"{name} (uid {uid})" if name else f"uid {uid}"
        home = self.user_db.home_of(uid)
        if not home:
            return None, None
        try:
            found = read_oidentd_file(home, uid)
            if found is None:
                trail.add("oidentd file of the user: there is none")
                return None, None
            path, text = found
            parsed = parse_user_file(text)
            self._log.file_problems(uid, who, path, text, parsed.problems)
            entry = parsed.choose(local, remote)
            if entry is None:
                trail.add("oidentd file %s: nothing in it applies to this connection", path)
                return None, None
            source = f"{path} line {entry.line}"
            if not settings.allows(entry.choice.kind):
                refused = (
                    f"{source} says {entry.choice.kind}, and "
                    f"{USER_CHOICES[entry.choice.kind]} is off"
                )
                trail.add("oidentd file: not used: %s", refused)
                return None, f"oidentd file: {refused}"
            chosen = entry.choice.user_id(uid)
            why = f"user-reply, {source}"
            if chosen is None:
                trail.add("oidentd file %s: hides the user", source)
                decision = self._answers.error(
                    "user-reply", source, uid, name, "HIDDEN-USER", None, trail, why
                )
                return decision, None
            raw = self.chosen_id(uid, chosen, settings)
        except ReplyFileRefused as exc:
            trail.add("oidentd file of the user: refused: %s", exc)
            return None, f"oidentd file: {exc}"
        trail.add("oidentd file %s: used, it says %r", source, chosen)
        return self._answers.user_id("user-reply", source, uid, name, raw, None, trail, why), None

    def chosen_id(self, uid: int, text: str, settings: AnswerSettings) -> bytes:
        """The octets of an id a user chose, or ReplyFileRefused saying why not: the wire
        rules, and not another user's name or uid unless ``allow_spoof_other``."""
        try:
            raw = safe_user_id(text, self.config.reply.charset)
        except ValueError as exc:
            raise ReplyFileRefused(f"invalid reply: {exc}") from None
        if not settings.allow_spoof_other:
            self.check_not_another_user(text, uid)
        return raw

    def check_not_another_user(self, text: str, uid: int) -> None:
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
            if number != uid and number <= MAX_UID and self.user_db.name_of(number) is not None:
                raise ReplyFileRefused(
                    f"{text!r} is the uid of another user ({self.user_db.name_of(number)}) "
                    f"and allow_spoof_other is off"
                )
