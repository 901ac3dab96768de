"""``aioidentd import-oidentd``: what an administrator moving from oidentd sees. The
answers the converted files give are proven against oidentd itself in
tests/interop/test_oidentd_matrix.py; here: exit statuses, messages with their lines,
comments, and the oidentd rules the converter must keep (order, inheritance, force)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aioidentd.oidentd import OidentdInputError, convert
from aioidentd.oidentd.flags import parse_flags
from aioidentd.policy import Policy, parse_config
from support import run_aioidentd


class Users:
    """A user database for deciding without real users."""

    def __init__(self) -> None:
        self.uids = {"alice": 1001, "bob": 1002, "lisa": 1003, "ryan": 1004, "root": 0}

    def name_of(self, uid: int) -> str | None:
        return next((name for name, number in self.uids.items() if number == uid), None)

    def uid_of(self, name: str) -> int | None:
        return self.uids.get(name)

    def home_of(self, uid: int) -> str | None:
        return None

    def groups_of(self, uid: int) -> tuple[str, ...]:
        return ()


def answer(
    system: str,
    user: str,
    fport: int = 6667,
    lport: int = 40000,
    flags: str = "",
    remote: str = "192.0.2.1",
    local: str = "198.51.100.1",
) -> str:
    """What the converted configuration answers for ``user``'s connection."""
    config = parse_config(convert(system, flags=flags).toml)
    decision = Policy(config, user_db=Users()).decide(
        Users().uids[user], (local, lport), (remote, fport)
    )
    if decision.user_id is not None:
        return decision.user_id.decode()
    return str(decision.error)


DEBIAN = """\
default {
\tdefault {
\t\tdeny spoof
\t\tdeny spoof_all
\t\tdeny hide
\t}
}
"""


def test_debians_file_converts_whole_and_passes_check_config(tmp_path: Path) -> None:
    conf = tmp_path / "oidentd.conf"
    conf.write_text(DEBIAN)
    result = run_aioidentd("import-oidentd", "--config", str(conf), "--flags", "-l 10")
    assert result.returncode == 0, result.stderr
    assert (
        f"# {conf} line 2: default {{ default {{ deny spoof; deny spoof_all; deny hide }} }}"
        in (result.stdout)
    )
    assert "max_connections = 10" in result.stdout
    # Root is the one thing that reads like a change; it is a note, not a refusal.
    assert "note: oidentd 2.5 answers root's name" in result.stderr
    toml = tmp_path / "aioidentd.toml"
    toml.write_text(result.stdout)
    checked = run_aioidentd("check-config", str(toml))
    assert checked.returncode == 0, checked.stderr


def test_what_cannot_be_said_is_named_with_its_line_and_exit_status_1(tmp_path: Path) -> None:
    conf = tmp_path / "oidentd.conf"
    conf.write_text(
        "default {\n\tdefault {\n\t\tallow forward\n\t}\n}\n"
        "user alice {\n\tto irc.example.net {\n\t\tforce hide\n\t}\n}\n"
    )
    result = run_aioidentd(
        "import-oidentd", "--config", str(conf), "--flags", "-r nobody -P 10.0.0.1 -R x"
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any(f"{conf} line 2: not converted: allow forward" in line for line in lines)
    assert any(f"{conf} line 7: not converted: to irc.example.net" in line for line in lines)
    assert any("flag -r nobody: not converted" in line and "NO-USER" in line for line in lines)
    assert any("flag -P 10.0.0.1: not converted" in line for line in lines)
    assert any("aioidentd serve --default x" in line for line in lines)
    assert result.stdout.count("# NOT CONVERTED") == 5
    parse_config(result.stdout)  # still loads, without what was refused


@pytest.mark.parametrize(
    ("system", "flags", "masq", "message"),
    [
        ("default {\n\tdefault {\n\t\tallow sproof\n\t}\n}\n", "", None, "line 3:"),
        (
            'user "a" { default { allow spoof } }\nuser "a" { default { allow hide } }',
            "",
            None,
            "line 2: user 'a' already has a block (line 1)",
        ),
        ('global { reply "x" }', "", None, "line 1: 'global'"),
        ("default { fport 70000 { allow spoof } }", "", None, "bad port or port range"),
        ('default { default { force reply "unclosed } }', "", None, "unclosed quoted string"),
        ("", "-x", None, "unknown option -x"),
        ("", "-m", "10.0.0.0/32 user UNIX\n", "line 1: invalid mask /32"),
        ("", "-m", "10.0.0.1 user\n", "line 1: 10.0.0.1 user needs a system type"),
    ],
)
def test_input_oidentd_would_refuse_is_exit_status_2(
    tmp_path: Path, system: str, flags: str, masq: str | None, message: str
) -> None:
    conf = tmp_path / "oidentd.conf"
    conf.write_text(system)
    args = ["import-oidentd", "--config", str(conf), f"--flags={flags}"]
    if masq is not None:
        (tmp_path / "masq").write_text(masq)
        args += ["--masq", str(tmp_path / "masq")]
    result = run_aioidentd(*args)
    assert result.returncode == 2, result
    assert message in result.stderr and result.stdout == ""
    assert "Traceback" not in result.stderr


def test_an_unreadable_file_is_exit_status_2(tmp_path: Path) -> None:
    result = run_aioidentd("import-oidentd", "--config", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"aioidentd: {tmp_path / 'missing'}: No such file")


def test_the_last_range_written_wins_and_shadowed_ones_are_notes() -> None:
    system = (
        'default {\n\tfport 6697 { force reply "early" }\n\tdefault { allow spoof }\n'
        '\tfport 6660:6670 { force reply "wide" }\n\tfport 6667 { force reply "first" }\n'
        '\tfport 6667 { force reply "second" }\n}\n'
    )
    assert answer(system, "alice", 6667) == "second"
    assert answer(system, "alice", 6668) == "wide"
    assert answer(system, "alice", 6697) == "alice"  # "early" is before the default range
    problems = [str(p) for p in convert(system).problems]
    assert any("line 2: note: never applies: the 'default' range of line 3" in p for p in problems)
    assert any("line 5: note: never applies: line 6 has the same filters" in p for p in problems)
    assert convert(system).status == 0


def test_a_users_block_comes_before_the_default_blocks_ranges() -> None:
    system = (
        "default {\n\tdefault { allow spoof }\n\tfport 6667 { force hide }\n}\n"
        'user lisa {\n\tlport 1024: { force reply "me" }\n}\n'
    )
    assert answer(system, "lisa", 6667) == "me"
    assert answer(system, "lisa", 6667, lport=80) == "HIDDEN-USER"  # lisa's range: no match
    assert answer(system, "alice", 6667) == "HIDDEN-USER"
    assert answer(system, "alice", 25) == "alice"


def test_capabilities_inherit_from_the_default_range_read_so_far() -> None:
    """A range starts from the default block's default range once it has been read; a
    force that a later allow ends leaves its capability granted."""
    system = (
        "user bob {\n\tdefault { allow random }\n}\n"
        "default {\n\tdefault {\n\t\tforce hide\n\t\tallow spoof\n\t}\n}\n"
        "user ryan {\n\tdefault { allow random }\n}\n"
    )
    config = parse_config(convert(system).toml)
    by_user = {rule.users[0]: rule.settings for rule in config.rules}
    assert by_user["ryan"].allow_user_hide and by_user["ryan"].allow_user_reply
    assert by_user["ryan"].allow_user_random
    assert not by_user["bob"].allow_user_hide and not by_user["bob"].allow_user_reply
    assert config.default.answer == "username" and config.default.allow_user_hide


def test_forced_answers() -> None:
    system = (
        "default {\n\tdefault { allow spoof }\n"
        "\tfport 1 { force hide }\n\tfport 2 { force numeric }\n"
        "\tfport 3 { force random_numeric }\n\tfport 4 { force forward 127.0.0.1 10113 }\n"
        '\tfport 5 { force reply "a" "b" }\n\tfport 6 { force spoof_all }\n}\n'
    )
    config = parse_config(convert(system).toml)
    answers = {rule.remote_ports[0].low: rule.settings for rule in config.rules}
    assert answers[1].answer == "hidden"
    assert answers[2].answer == "uid"
    assert answers[3].answer == "random-numeric"
    assert answers[4].answer == "forward" and str(answers[4].forward) == "127.0.0.1:10113"
    assert (answers[5].answer, answers[5].reply) == ("fixed", "a")
    assert answers[6].answer == "username"
    for settings in answers.values():
        assert not settings.allow_user_reply  # a forced range reads no user file
    refused = [p for p in convert(system).problems if p.refused]
    assert [p.where for p in refused] == ["<string> line 8"] or len(refused) == 1


def test_root_is_hidden_unless_the_file_speaks_of_root() -> None:
    assert answer(DEBIAN, "root") == "HIDDEN-USER"
    system = DEBIAN + 'user root {\n\tfport 6667 { force reply "admin" }\n}\n'
    assert answer(system, "root", 6667) == "admin"
    assert answer(system, "root", 25) == "root"  # as oidentd: the default block's answer


def test_flags_are_read_as_getopt_reads_them() -> None:
    flags = parse_flags('OIDENT_OPTIONS="-mf5000 -l10 -oOTHER --port=1113 --quie -a ::1"')
    assert [(f.letter, f.value) for f in flags] == [
        ("m", None),
        ("f", "5000"),
        ("l", "10"),
        ("o", "OTHER"),
        ("p", "1113"),
        ("q", None),
        ("a", "::1"),
    ]
    stray = convert("", flags="-f 5000")
    assert any("-f takes its argument only attached: -f5000" in str(p) for p in stray.problems)
    with pytest.raises(OidentdInputError, match="ambiguous"):
        convert("", flags="--masq")


def test_server_flags(tmp_path: Path) -> None:
    config = parse_config(
        convert("", flags="oidentd -a 127.0.0.1 -a ::1 -p 1113 -t 5 -e -o -c UTF-8 -u oident").toml
    )
    assert config.daemon.listen == ("127.0.0.1", "::1")
    assert (config.daemon.port, config.daemon.first_query_timeout) == (1113, 5)
    assert config.daemon.user == "oident"
    assert (config.reply.mask_errors, config.reply.opsys, config.reply.charset) == (
        True,
        "OTHER",
        "UTF-8",
    )


def test_the_nat_file() -> None:
    masq = (
        "# comment\n10.0.0.1 user1 UNIX\n10.0.0.0/24 user3 UNIX-BSD extra\n"
        "10.1.0.0/255.255.0.0 user4 UNKNOWN\nhost.internal user2 UNIX\n"
        "10.2.0.0/255.0.255.0 odd UNIX\n2001:db8::1 six UNIX\n"
    )
    result = convert(None, masq=masq, masq_name="masq", flags="-M")
    config = parse_config(result.toml)
    static = [(str(rule.networks[0]), rule.reply, rule.opsys) for rule in config.nat[:3]]
    assert static == [
        ("10.0.0.1/32", "user1", "UNIX"),
        ("10.0.0.0/24", "user3", "UNIX-BSD"),
        ("10.1.0.0/16", "user4", "UNKNOWN"),
    ]
    assert config.nat[-1].answer == "forward"  # -M: the file first, then forward
    problems = {p.where: (p.refused, p.message) for p in result.problems}
    assert problems["masq line 5"][0] and "host names" in problems["masq line 5"][1]
    assert problems["masq line 6"][0] and "not contiguous" in problems["masq line 6"][1]
    assert not problems["masq line 7"][0]  # IPv6: oidentd never uses it
    assert "ignores the words after" in problems["masq line 3"][1]
    # Without -m, -f or -M oidentd does not read the file.
    assert parse_config(convert(None, masq=masq, flags="-l 5").toml).nat == ()
