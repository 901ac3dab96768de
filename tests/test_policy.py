"""The policy: which reply for which uid and connection, and users' reply files."""

from __future__ import annotations

import logging
import os
import pwd
import re
import textwrap
from pathlib import Path

import pytest

from aioidentd.policy import REPLY_FILE, Decision, Policy, SystemUserDB, parse_config
from aioidentd.protocol import ErrorReply, UserIdReply, encode_reply
from support import FakeUserDB, require_root

LOCAL = ("192.0.2.10", 40000)
IRC = ("198.51.100.7", 6667)

ALICE, BOB, CAROL = 1000, 1001, 1002


DB = FakeUserDB(
    {
        0: ("root", "/root", ["root"]),
        ALICE: ("alice", None, ["alice", "irc"]),
        BOB: ("bob", None, ["bob", "staff", "irc"]),
        CAROL: ("carol", None, ["carol"]),
        1003: ("zoë", None, ["users"]),
    }
)


def make_policy(text: str = "", db: FakeUserDB = DB, euid: int = 65534) -> Policy:
    config = parse_config(textwrap.dedent(text), "test.toml")
    return Policy(config, user_db=db, geteuid=lambda: euid)


def decide(
    text: str,
    uid: int | None,
    local: tuple[str, int] = LOCAL,
    remote: tuple[str, int] = IRC,
) -> Decision:
    return make_policy(text).decide(uid, local, remote)


def user_id(decision: Decision) -> str | None:
    return None if decision.user_id is None else decision.user_id.decode()


# ----------------------------------------------------------------------------- answers


def test_no_socket_is_no_user() -> None:
    decision = decide("", None)
    assert decision.error == "NO-USER"
    assert decision.kind == "no-socket"
    assert decision.reply(6193, 23) == ErrorReply(6193, 23, "NO-USER")
    assert decision.describe() == "no socket NO-USER (no-socket, lookup found no connection)"


def test_default_answers_the_user_name() -> None:
    decision = decide("", ALICE)
    assert user_id(decision) == "alice"
    assert decision.kind == "username"
    assert not decision.spoofed
    assert encode_reply(decision.reply(40000, 6667)) == b"40000,6667:USERID:UNIX:alice\r\n"
    assert decision.describe() == "alice (uid 1000) replied as 'alice' (username, built-in default)"


def test_username_without_passwd_entry_answers_the_uid() -> None:
    decision = decide("", 4242)
    assert user_id(decision) == "4242"
    assert decision.user_name is None
    assert decision.describe().startswith("uid 4242 replied as '4242'")


def test_username_that_cannot_be_sent_answers_the_uid(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert user_id(decide("", 1003)) == "1003"
    assert "answering uid 1003 instead of its name" in caplog.text
    utf8 = decide('[reply]\ncharset = "UTF-8"\n', 1003)
    assert utf8.user_id == "zoë".encode()
    assert encode_reply(utf8.reply(1, 2)) == "1,2:USERID:UNIX,UTF-8:zoë\r\n".encode()


def test_repeated_queries_follow_the_users_and_the_settings_of_each_moment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A policy answering many queries (decisions are remembered per user and settings):
    a renamed account is answered by its new name, a [[rule]] still picks by port, and a
    name that cannot be sent still gets the uid and its warning."""
    db = FakeUserDB({ALICE: ("alice", None, ["alice"]), 1003: ("zoë", None, ["users"])})
    policy = make_policy(
        """
        [[rule]]
        remote_port = [25]
        answer = "hidden"
        """,
        db,
    )
    for _ in range(3):
        assert user_id(policy.decide(ALICE, LOCAL, IRC)) == "alice"
        assert policy.decide(ALICE, LOCAL, ("198.51.100.7", 25)).error == "HIDDEN-USER"
    db.users[ALICE] = ("alice2", None, ["alice"])
    assert user_id(policy.decide(ALICE, LOCAL, IRC)) == "alice2"
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert user_id(policy.decide(1003, LOCAL, IRC)) == "1003"
    assert "answering uid 1003 instead of its name" in caplog.text


def test_uid_answer() -> None:
    assert user_id(decide('[default]\nanswer = "uid"\n', ALICE)) == "1000"


def test_fixed_answer() -> None:
    decision = decide('[default]\nanswer = "fixed"\nreply = "guest"\n', ALICE)
    assert user_id(decision) == "guest"
    assert decision.spoofed
    assert decision.describe() == "alice (uid 1000) replied as 'guest' (fixed, [default])"


def test_random_answer_is_fresh_and_irc_safe() -> None:
    policy = make_policy('[default]\nanswer = "random"\n')
    ids = {user_id(policy.decide(ALICE, LOCAL, IRC)) for _ in range(20)}
    assert len(ids) == 20
    for value in ids:
        assert value is not None and re.fullmatch(r"[a-z0-9]{8}", value)
    assert policy.decide(ALICE, LOCAL, IRC).spoofed


@pytest.mark.parametrize(("answer", "error"), [("hidden", "HIDDEN-USER"), ("no-user", "NO-USER")])
def test_error_answers(answer: str, error: str) -> None:
    decision = decide(f'[default]\nanswer = "{answer}"\n', ALICE)
    assert decision.user_id is None
    assert decision.error == error
    assert decision.reply(5, 6) == ErrorReply(5, 6, error)


def test_opsys_and_charset_come_from_reply_table() -> None:
    decision = decide('[reply]\nopsys = "OTHER"\ncharset = "UTF-8"\n', ALICE)
    assert decision.reply(1, 2) == UserIdReply(1, 2, "OTHER", b"alice", "UTF-8")


def test_mask_errors_turns_every_error_into_unknown_error() -> None:
    masked = '[reply]\nmask_errors = true\n[default]\nanswer = "hidden"\n'
    decision = decide(masked, ALICE)
    assert decision.error == "UNKNOWN-ERROR"
    assert decision.unmasked_error == "HIDDEN-USER"
    assert decision.reply(1, 2) == ErrorReply(1, 2, "UNKNOWN-ERROR")
    assert "HIDDEN-USER sent as UNKNOWN-ERROR" in decision.describe()
    assert decide(masked, None).error == "UNKNOWN-ERROR"
    assert decide(masked, 0).error == "UNKNOWN-ERROR"
    assert decide(masked.replace("hidden", "no-user"), ALICE).error == "UNKNOWN-ERROR"
    # USERID replies are untouched.
    assert user_id(decide("[reply]\nmask_errors = true\n", ALICE)) == "alice"


def test_mask_errors_is_off_by_default() -> None:
    assert decide('[default]\nanswer = "hidden"\n', ALICE).error == "HIDDEN-USER"


# ----------------------------------------------------------------------------- root


def test_root_is_hidden_by_default() -> None:
    decision = decide("", 0)
    assert decision.error == "HIDDEN-USER"
    assert decision.source == "built-in root rule"


def test_root_stays_hidden_whatever_rules_and_default_say() -> None:
    text = """
        [default]
        answer = "username"
        allow_user_reply = true
        [group.root]
        answer = "uid"
        [[rule]]
        remote_port = 6667
        answer = "username"
        """
    assert decide(text, 0).error == "HIDDEN-USER"


@pytest.mark.parametrize("key", ["root", "0"])
def test_root_is_shown_when_its_table_sets_an_answer(key: str) -> None:
    assert user_id(decide(f'[user.{key}]\nanswer = "username"\n', 0)) == "root"


def test_root_table_without_answer_keeps_root_hidden() -> None:
    assert decide("[user.root]\nallow_user_reply = false\n", 0).error == "HIDDEN-USER"


# ----------------------------------------------------------------------------- precedence

PRECEDENCE = """
    [default]
    answer = "uid"

    [group.irc]
    answer = "random"

    [group.staff]
    answer = "fixed"
    reply = "staffer"

    [user.alice]
    answer = "fixed"
    reply = "wonderland"

    [[rule]]
    remote_port = "6660-6669"
    user = "alice"
    answer = "hidden"

    [[rule]]
    remote_port = 6667
    answer = "no-user"
    """


def test_first_matching_rule_wins() -> None:
    assert decide(PRECEDENCE, ALICE).error == "HIDDEN-USER"
    assert decide(PRECEDENCE, BOB).error == "NO-USER"
    assert decide(PRECEDENCE, CAROL).error == "NO-USER"


def test_user_table_beats_group_tables() -> None:
    assert user_id(decide(PRECEDENCE, ALICE, remote=("198.51.100.7", 80))) == "wonderland"


def test_group_tables_in_file_order_then_default() -> None:
    # bob is in staff and irc; [group.irc] comes first in the file.
    bob = decide(PRECEDENCE, BOB, remote=("198.51.100.7", 80))
    assert bob.kind == "random"
    assert bob.source == "[group.irc]"
    carol = decide(PRECEDENCE, CAROL, remote=("198.51.100.7", 80))
    assert user_id(carol) == "1002"
    assert carol.source == "[default]"


def test_settings_are_merged_setting_by_setting() -> None:
    policy = make_policy(
        """
        [default]
        answer = "random"
        [group.irc]
        allow_user_reply = true
        [user.alice]
        allow_spoof_other = true
        """
    )
    settings = policy.settings_for(ALICE, "alice", LOCAL, IRC)
    assert settings.answer == "random"
    assert settings.source == "[default]"
    assert settings.allow_user_reply is True
    assert settings.allow_spoof_other is True
    assert settings.allow_spoof_privport is False


def test_user_table_by_uid() -> None:
    assert decide('[user.1001]\nanswer = "hidden"\n', BOB).error == "HIDDEN-USER"


def test_reads_files_only_when_some_table_allows_user_replies() -> None:
    assert not make_policy("").reads_files
    assert not make_policy("[default]\nallow_user_reply = false\n").reads_files
    assert make_policy("[group.irc]\nallow_user_reply = true\n").reads_files
    assert make_policy(rule("remote_port = 1") + "allow_user_reply = true\n").reads_files


def test_groups_are_not_looked_up_when_no_table_needs_them() -> None:
    db = FakeUserDB(dict(DB.users))
    make_policy('[user.alice]\nanswer = "uid"\n', db).decide(ALICE, LOCAL, IRC)
    assert db.group_calls == 0
    make_policy('[group.irc]\nanswer = "uid"\n', db).decide(ALICE, LOCAL, IRC)
    assert db.group_calls == 1


# ----------------------------------------------------------------------------- rule matching


def rule(condition: str) -> str:
    return f'[[rule]]\n{condition}\nanswer = "hidden"\n'


@pytest.mark.parametrize(
    ("condition", "local", "remote", "hit"),
    [
        ('local_port = "40000-40010"', LOCAL, IRC, True),
        ('local_port = "40001-40010"', LOCAL, IRC, False),
        ("remote_port = [6697, 6667]", LOCAL, IRC, True),
        ("remote_port = 6697", LOCAL, IRC, False),
        ('remote_address = "198.51.100.0/24"', LOCAL, IRC, True),
        ('remote_address = "203.0.113.0/24"', LOCAL, IRC, False),
        ('remote_address = "198.51.100.0/24"', LOCAL, ("::ffff:198.51.100.7", 6667), True),
        ('remote_address = "::ffff:198.51.100.0/120"', LOCAL, IRC, True),
        ('remote_address = "2001:db8::/32"', LOCAL, ("2001:db8::7", 6667), True),
        ('remote_address = "2001:db8::/32"', LOCAL, ("2001:db9::7", 6667), False),
        ('remote_address = "2001:db8::/32"', LOCAL, IRC, False),
        ('remote_address = "fe80::/10"', LOCAL, ("fe80::1%eth0", 6667), True),
        ('remote_address = "0.0.0.0/0"', LOCAL, ("not an address", 6667), False),
        ('local_address = "192.0.2.10"', LOCAL, IRC, True),
        ('local_address = ["192.0.2.11", "::1"]', LOCAL, IRC, False),
        ('user = "alice"', LOCAL, IRC, True),
        ("user = [1000]", LOCAL, IRC, True),
        ('user = ["bob", "carol"]', LOCAL, IRC, False),
        ('group = "irc"', LOCAL, IRC, True),
        ('group = "staff"', LOCAL, IRC, False),
        ('remote_port = 6667\nremote_address = "203.0.113.0/24"', LOCAL, IRC, False),
    ],
)
def test_rule_conditions(
    condition: str, local: tuple[str, int], remote: tuple[str, int], hit: bool
) -> None:
    decision = decide(rule(condition), ALICE, local, remote)
    assert (decision.error == "HIDDEN-USER") is hit


# ----------------------------------------------------------------------------- reply files

ALLOW = "[default]\nallow_user_reply = true\n"


@pytest.fixture
def owner() -> int:
    """The uid that will own the test's reply files: 1000 when root can chown, else us."""
    return ALICE if os.geteuid() == 0 else os.getuid()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    path.chmod(0o711)
    return path


def write_reply(home: Path, owner: int, data: bytes | str, mode: int = 0o644) -> Path:
    path = home / REPLY_FILE
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    path.chmod(mode)
    if os.geteuid() == 0:
        os.chown(path, owner, -1)
    return path


def file_policy(owner: int, home: Path, text: str = ALLOW, euid: int = 65534) -> Policy:
    db = FakeUserDB(
        {
            owner: ("alice", str(home), ["alice"]),
            owner + 1: ("bob", None, ["bob"]),
        }
    )
    return make_policy(text, db, euid)


def test_reply_file_is_used(owner: int, home: Path) -> None:
    write_reply(home, owner, "  wonder  \r\nsecond line ignored\n")
    decision = file_policy(owner, home).decide(owner, LOCAL, IRC)
    assert user_id(decision) == "wonder"
    assert decision.kind == "user-reply"
    assert decision.spoofed
    assert decision.uid == owner
    assert decision.describe().startswith(f"alice (uid {owner}) replied as 'wonder' (user-reply")


def test_reply_file_is_ignored_unless_allowed(owner: int, home: Path) -> None:
    write_reply(home, owner, "wonder\n")
    assert user_id(file_policy(owner, home, "").decide(owner, LOCAL, IRC)) == "alice"


def test_missing_reply_file_falls_back_quietly(
    owner: int, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        decision = file_policy(owner, home).decide(owner, LOCAL, IRC)
    assert user_id(decision) == "alice"
    assert decision.note is None
    assert caplog.records == []


def refused(
    owner: int,
    home: Path,
    caplog: pytest.LogCaptureFixture,
    text: str = ALLOW,
    euid: int = 65534,
    remote: tuple[str, int] = IRC,
    level: int = logging.WARNING,
) -> str:
    """Decide for a user whose file must be refused; return the reason. The policy logs
    nothing itself: the responder logs the note at ``note_level``, rate-limited per user
    (tests/test_responder.py)."""
    with caplog.at_level(logging.DEBUG):
        decision = file_policy(owner, home, text, euid).decide(owner, LOCAL, remote)
    assert user_id(decision) == "alice"  # the policy's normal answer
    assert decision.kind == "username"
    assert decision.note is not None
    assert decision.note in decision.describe()
    assert decision.note_level == level
    assert caplog.records == []
    return decision.note


def test_symlink_is_refused(
    owner: int, home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = write_reply(tmp_path, owner, "wonder\n")
    (home / REPLY_FILE).symlink_to(target)
    assert refused(owner, home, caplog).endswith("is a symbolic link")


def test_a_refused_file_is_in_every_decision_and_logged_by_the_responder(
    owner: int, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The other end of a user's connection may ask as often as it likes: the refusal is
    in every decision (and so in every query's log line with log_queries). The policy
    writes no line of its own for it: the reason can carry the file's content, so a user
    could make every query a new reason; the responder logs refusals per user, the first
    in full, then a count (tests/test_responder.py)."""
    write_reply(home, owner, "wonder\n", mode=0o666)
    policy = file_policy(owner, home)
    with caplog.at_level(logging.DEBUG, logger="aioidentd.policy.policy"):
        notes = {policy.decide(owner, LOCAL, IRC).note for _ in range(50)}
        (home / REPLY_FILE).chmod(0o600)
        notes |= {policy.decide(owner, LOCAL, IRC).note for _ in range(50)}
    assert len(notes) == 2 and None not in notes
    assert caplog.records == []


def test_wrong_owner_is_refused(owner: int, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    require_root("to give the file to another uid")
    path = write_reply(home, owner, "wonder\n")
    os.chown(path, 65534, -1)
    assert refused(owner, home, caplog).endswith("is owned by uid 65534, not by the user")


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_writable_by_others_is_refused(
    owner: int, home: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    write_reply(home, owner, "wonder\n", mode)
    assert refused(owner, home, caplog).endswith("is writable by group or others (chmod 644)")


def test_not_world_readable_is_refused(
    owner: int, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_reply(home, owner, "wonder\n", 0o600)
    assert "is not readable by others" in refused(owner, home, caplog)


def test_home_not_searchable_is_refused(
    owner: int, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_reply(home, owner, "wonder\n")
    home.chmod(0o750)
    try:
        note = refused(owner, home, caplog)
    finally:
        home.chmod(0o711)
    assert "not searchable by others" in note or "cannot open" in note


def test_too_big_is_refused(owner: int, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_reply(home, owner, "x" * 600 + "\n")
    assert refused(owner, home, caplog).endswith("is larger than 514 octets")


def test_largest_allowed_file(owner: int, home: Path) -> None:
    write_reply(home, owner, "x" * 512 + "\r\n")
    decision = file_policy(owner, home).decide(owner, LOCAL, IRC)
    assert decision.user_id == b"x" * 512


def test_fifo_is_refused(owner: int, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = home / REPLY_FILE
    os.mkfifo(path, 0o644)
    if os.geteuid() == 0:
        os.chown(path, owner, -1)
    assert refused(owner, home, caplog).endswith("is not a regular file")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("a:b\n", "must not contain ':'"),
        ("\n", "must not be empty"),
        ("bell\x07\n", "control characters"),
        ("zoë\n", "is not US-ASCII"),
    ],
)
def test_invalid_reply_is_refused(
    owner: int, home: Path, caplog: pytest.LogCaptureFixture, content: str, reason: str
) -> None:
    write_reply(home, owner, content)
    note = refused(owner, home, caplog)
    assert note.startswith("invalid reply: ")
    assert reason in note


def test_non_utf8_file_is_refused(owner: int, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_reply(home, owner, b"caf\xe9\n")
    assert refused(owner, home, caplog).endswith("is not UTF-8 text")


def test_read_as_root_is_refused(owner: int, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_reply(home, owner, "wonder\n")
    note = refused(owner, home, caplog, euid=0)
    assert note == "the daemon runs as root and never reads users' files as root"


def test_no_home_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        decision = make_policy(ALLOW).decide(ALICE, LOCAL, IRC)
    assert user_id(decision) == "alice"
    assert decision.note == "the user has no home directory"


def test_other_users_name_is_refused_unless_allowed(
    owner: int, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_reply(home, owner, "Bob\n")
    note = refused(owner, home, caplog)
    assert note == (
        f"'Bob' is the name of another user (uid {owner + 1}) and allow_spoof_other is off"
    )
    allowed = file_policy(owner, home, ALLOW + "allow_spoof_other = true\n")
    assert user_id(allowed.decide(owner, LOCAL, IRC)) == "Bob"


@pytest.mark.parametrize(
    ("content", "other"),
    [("991\n", "carol (uid 991)"), ("0\n", "root (uid 0)"), ("00991\n", "carol (uid 991)")],
)
def test_other_users_uid_is_refused_unless_allowed(
    owner: int, home: Path, caplog: pytest.LogCaptureFixture, content: str, other: str
) -> None:
    """With ``answer = "uid"`` for carol, a reply file "991" would make two users answer
    the same id: a number naming another existing uid is another user's name."""
    write_reply(home, owner, content)
    db = FakeUserDB(
        {
            0: ("root", "/root", ["root"]),
            owner: ("alice", str(home), ["alice"]),
            991: ("carol", None, ["carol"]),
        }
    )
    with caplog.at_level(logging.INFO):
        decision = make_policy(ALLOW, db).decide(owner, LOCAL, IRC)
    assert user_id(decision) == "alice"
    name = other.split(" (uid ")[0]
    assert decision.note == (
        f"{content.strip()!r} is the uid of another user ({name}) and allow_spoof_other is off"
    )
    allowed = make_policy(ALLOW + "allow_spoof_other = true\n", db)
    assert user_id(allowed.decide(owner, LOCAL, IRC)) == content.strip()


@pytest.mark.parametrize("number", ["own", "4242", "99999999999999999999"])
def test_own_uid_and_numbers_no_user_has_are_fine(owner: int, home: Path, number: str) -> None:
    text = str(owner) if number == "own" else number
    write_reply(home, owner, text + "\n")
    db = FakeUserDB({0: ("root", "/root", ["root"]), owner: ("alice", str(home), ["alice"])})
    decision = make_policy(ALLOW, db).decide(owner, LOCAL, IRC)
    assert (decision.kind, user_id(decision), decision.note) == ("user-reply", text, None)


def test_own_name_is_fine(owner: int, home: Path) -> None:
    write_reply(home, owner, "alice\n")
    decision = file_policy(owner, home).decide(owner, LOCAL, IRC)
    assert decision.kind == "user-reply"


def test_privileged_remote_port_refuses_reply_unless_allowed(
    owner: int, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_reply(home, owner, "wonder\n")
    smtp = ("198.51.100.7", 25)
    note = refused(owner, home, caplog, remote=smtp, level=logging.INFO)
    assert note == "remote port 25 is privileged and allow_spoof_privport is off"
    allowed = file_policy(owner, home, ALLOW + "allow_spoof_privport = true\n")
    assert user_id(allowed.decide(owner, LOCAL, smtp)) == "wonder"


def test_refused_reply_falls_back_to_the_matched_answer(owner: int, home: Path) -> None:
    write_reply(home, owner, "a:b\n")
    policy = file_policy(owner, home, '[default]\nanswer = "hidden"\nallow_user_reply = true\n')
    decision = policy.decide(owner, LOCAL, IRC)
    assert decision.error == "HIDDEN-USER"
    assert decision.note is not None and "invalid reply" in decision.note


# ----------------------------------------------------------------------------- system db


def test_system_user_db_matches_pwd() -> None:
    db = SystemUserDB()
    me = pwd.getpwuid(os.getuid())
    assert db.name_of(me.pw_uid) == me.pw_name
    assert db.uid_of(me.pw_name) == me.pw_uid
    assert db.home_of(me.pw_uid) == me.pw_dir
    groups = db.groups_of(me.pw_uid)
    assert groups and isinstance(groups[0], str)
    unused = 2**31 - 7
    assert db.name_of(unused) is None
    assert db.home_of(unused) is None
    assert db.groups_of(unused) == ()
    assert db.uid_of("no-such-user-aioidentd") is None


def test_system_user_db_keeps_answers_for_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    from aioidentd.policy.policy import SystemUserDB

    calls: list[int] = []
    real = pwd.getpwuid

    def counting(uid: int) -> pwd.struct_passwd:
        calls.append(uid)
        return real(uid)

    monkeypatch.setattr(pwd, "getpwuid", counting)
    cached = SystemUserDB(ttl=60.0)
    assert [cached.name_of(0) for _ in range(3)] == ["root"] * 3
    assert cached.home_of(0) == real(0).pw_dir
    assert calls == [0]  # one NSS lookup for four answers
    fresh = SystemUserDB(ttl=0.0)  # every answer asks again: a change is seen at once
    assert [fresh.name_of(0) for _ in range(2)] == ["root"] * 2
    assert calls == [0, 0, 0]
    assert SystemUserDB().name_of(2**31 - 7) is None  # unknown uids are cached as unknown


def test_the_explain_trail_costs_nothing_unless_recording() -> None:
    """The daemon decides every query with the silent trail: a step's words are never
    formatted nor its lines computed; ``explain`` records them in order."""
    from aioidentd.policy.trail import SILENT, Recording

    class Loud:
        def __str__(self) -> str:
            raise AssertionError("formatted")

    def steps() -> list[str]:
        raise AssertionError("computed")

    SILENT.add("owner: %s", Loud())
    SILENT.extend(steps)
    assert SILENT.lines == ()
    trail = Recording("first")
    trail.add("owner: %s (%r)", "alice", "x")
    trail.extend(lambda n: [f"step {n}", "last"], 2)
    assert trail.lines == ("first", "owner: alice ('x')", "step 2", "last")
