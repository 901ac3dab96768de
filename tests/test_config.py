"""The configuration file: schema, defaults, and every error with its line number."""

from __future__ import annotations

import argparse
import ipaddress
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aioidentd.cli import build_parser
from aioidentd.cli.check_config import run as check_config
from aioidentd.policy import (
    AnswerSettings,
    ConfigError,
    PortRange,
    describe,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "aioidentd.toml"


def parse(text: str) -> object:
    return parse_config(textwrap.dedent(text), "aioidentd.toml")


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text).lstrip("\n"), "aioidentd.toml")
    return info.value


# ----------------------------------------------------------------------------- valid


def test_empty_file_gives_the_defaults() -> None:
    config = parse_config("", "empty.toml")
    assert config.daemon.listen is None
    assert config.daemon.port == 113
    assert config.daemon.multiple is False
    assert config.daemon.response_timeout == 1.0
    assert config.daemon.user == "aioidentd"
    assert config.reply.opsys == "UNIX"
    assert config.reply.charset is None
    assert config.reply.mask_errors is False
    assert config.default.answer is None  # the built-in default ("username") applies
    assert config.rules == ()


def test_full_schema() -> None:
    config = parse_config(
        textwrap.dedent(
            """
            [server]
            listen = ["127.0.0.1", "::1"]
            port = 1113
            multiple = true
            idle_timeout = 30
            response_timeout = 0.5
            reply_style = "spaced"
            max_connections = 10
            user = "identd"
            group = "nogroup"
            log_queries = true

            [reply]
            opsys = "OTHER"
            charset = "UTF-8"
            mask_errors = true

            [default]
            answer = "random"
            allow_user_reply = true

            [user.alice]
            answer = "fixed"
            reply = "älice"

            [user.1001]
            answer = "uid"

            [group.staff]
            answer = "username"
            allow_spoof_other = true

            [[rule]]
            local_port = ["6660-6669", 7000]
            remote_address = ["192.0.2.0/24", "2001:db8::/32"]
            user = ["alice", 1002]
            group = "irc"
            answer = "hidden"
            """
        ),
        "full.toml",
    )
    assert config.daemon.listen == ("127.0.0.1", "::1")
    assert config.daemon.idle_timeout == 30.0
    assert config.daemon.reply_style == "spaced"
    assert config.daemon.group == "nogroup"
    assert config.reply.charset == "UTF-8"
    assert config.default.answer == "random"
    assert config.default.allow_user_reply is True
    assert config.users["alice"].reply == "älice"
    assert config.users[1001].answer == "uid"
    assert config.groups["staff"].allow_spoof_other is True
    (rule,) = config.rules
    assert rule.local_ports == (PortRange(6660, 6669), PortRange(7000, 7000))
    assert rule.remote_addresses == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert rule.users == ("alice", 1002)
    assert rule.groups == ("irc",)
    assert rule.line == 34
    assert rule.settings == AnswerSettings(answer="hidden", source="[[rule]] #1", line=34)


def test_listen_star_means_every_interface() -> None:
    config = parse_config('[server]\nlisten = "*"\n', "x.toml")
    assert config.daemon.listen is None


def test_every_answer_kind_is_accepted() -> None:
    for answer in ("username", "uid", "random", "hidden", "no-user"):
        config = parse_config(f'[default]\nanswer = "{answer}"\n', "x.toml")
        assert config.default.answer == answer
    config = parse_config('[default]\nanswer = "fixed"\nreply = "guest"\n', "x.toml")
    assert config.default.reply == "guest"


def test_shipped_example_is_valid() -> None:
    config = load_config(str(EXAMPLE))
    assert config.rules
    assert "configuration is valid" in describe(config)


def test_describe_shows_root_hidden_and_rules() -> None:
    config = parse_config(
        '[[rule]]\nremote_port = "6667"\nanswer = "random"\n\n[user.bob]\nanswer = "uid"\n',
        "x.toml",
    )
    text = describe(config)
    assert "root: hidden (built-in" in text
    assert "1. (line 1) if remote port 6667: random" in text
    assert "[user.bob] uid" in text
    assert "[default] username" in text
    configured = describe(parse_config('[user.root]\nanswer = "username"\n', "x.toml"))
    assert "root: hidden" not in configured


def test_locator_handles_quoted_dotted_and_multiline() -> None:
    err = error(
        '''
        title = """
        [user.fake]
        answer = "x"
        """
        '''
    )
    assert str(err) == "aioidentd.toml:1: unknown key 'title' in the top level"
    err = error(
        """
        [user."bob smith"]
        answer = "username"
        [ user . 'carol' ]
        answr = "hidden"
        """
    )
    assert err.line == 4
    assert "did you mean 'answer'?" in str(err)
    err = error(
        """
        user.dave.answer = "uid"
        user.dave.colour = "red"
        """
    )
    assert str(err) == "aioidentd.toml:2: unknown key 'colour' in [user.dave]"


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """
            [server]
            port = 113

            [sever]
            port = 1
            """,
            "aioidentd.toml:4: unknown key 'sever' in the top level (did you mean 'server'?)",
        ),
        (
            """
            [default]
            answer = "hidden"

            [user.alice]
            answer = "uid"
            repy = "x"
            """,
            "aioidentd.toml:6: unknown key 'repy' in [user.alice] (did you mean 'reply'?)",
        ),
        (
            """
            [[rule]]
            local_port = 6667
            answer = "random"

            [[rule]]
            remote_prot = 6667
            answer = "hidden"
            """,
            "aioidentd.toml:6: unknown key 'remote_prot' in [[rule]] #2 "
            "(did you mean 'remote_port'?)",
        ),
        (
            """
            [server]
            multiple = "yes"
            """,
            "aioidentd.toml:2: 'multiple' in [server] must be true or false, not a string",
        ),
        (
            """
            [server]
            port = "113"
            """,
            "aioidentd.toml:2: 'port' in [server] must be an integer, not a string",
        ),
        (
            """
            [server]
            port = 70000
            """,
            "aioidentd.toml:2: 'port' in [server] must be 0..65535, got 70000",
        ),
        (
            """
            [server]
            response_timeout = 0
            """,
            "aioidentd.toml:2: 'response_timeout' in [server] must be a positive number of "
            "seconds, got 0",
        ),
        (
            """
            [server]
            listen = ["localhost"]
            """,
            "aioidentd.toml:2: 'listen' in [server]: not an IP address: 'localhost'",
        ),
        (
            """
            [server]
            reply_style = "compakt"
            """,
            "aioidentd.toml:2: 'reply_style' in [server] must be one of 'compact', 'spaced', "
            "got 'compakt' (did you mean 'compact'?)",
        ),
        (
            """
            [reply]
            opsys = "UNIX:1"
            """,
            "aioidentd.toml:2: 'opsys' in [reply] must be 1-64 printable ASCII characters "
            "without ':' or ',', got 'UNIX:1'",
        ),
        (
            """
            [reply]
            charset = "KLINGON"
            """,
            "aioidentd.toml:2: 'charset' in [reply]: unknown charset 'KLINGON' (try 'UTF-8')",
        ),
        (
            """
            [reply]
            charset = "cp037"
            """,
            "aioidentd.toml:2: 'charset' in [reply]: charset 'cp037' cannot be sent "
            "(US-ASCII, UTF-8 and ISO-8859-1..16 can)",
        ),
        (
            """
            [default]
            answer = "hiden"
            """,
            "aioidentd.toml:2: 'answer' in [default] must be one of 'username', 'uid', "
            "'fixed', 'random', 'random-numeric', 'pseudonym', 'hidden', 'no-user', 'forward', "
            "got 'hiden' "
            "(did you mean 'hidden'?)",
        ),
        (
            """
            # root and friends
            [user.root]
            answer = "fixed"
            """,
            'aioidentd.toml:3: answer = "fixed" in [user.root] needs reply = "..." '
            "(the id to send)",
        ),
        (
            """
            [group.staff]
            answer = "uid"
            reply = "x"
            """,
            "aioidentd.toml:3: 'reply' in [group.staff] needs answer = \"fixed\"",
        ),
        (
            """
            [default]
            answer = "fixed"
            reply = "a:b"
            """,
            "aioidentd.toml:3: 'reply' in [default]: user id must not contain ':' "
            "(clients count colons): 'a:b'",
        ),
        (
            """
            [default]
            answer = "fixed"
            reply = "a\\rb"
            """,
            "aioidentd.toml:3: 'reply' in [default]: user id must not contain control "
            "characters (CR, LF, ...): 'a\\rb'",
        ),
        (
            """
            [default]
            answer = "fixed"
            reply = "älice"
            """,
            "aioidentd.toml:3: 'reply' in [default]: user id 'älice' is not US-ASCII; "
            "pass charset='UTF-8' to send it",
        ),
        (
            """
            [default]
            answer = "fixed"
            reply = "%s"
            """
            % ("x" * 513),
            "aioidentd.toml:3: 'reply' in [default]: user id must be 1-512 octets, got 513",
        ),
        (
            """
            [default]
            allow_user_reply = 1
            """,
            "aioidentd.toml:2: 'allow_user_reply' in [default] must be true or false, "
            "not an integer",
        ),
        (
            """
            [[rule]]
            local_port = "70000"
            answer = "hidden"
            """,
            "aioidentd.toml:2: 'local_port' in [[rule]] #1: port must be 1..65535, got 70000",
        ),
        (
            """
            [[rule]]
            local_port = "6669-6660"
            answer = "hidden"
            """,
            "aioidentd.toml:2: 'local_port' in [[rule]] #1: range '6669-6660' is backwards",
        ),
        (
            """
            [[rule]]
            remote_port = "irc"
            answer = "hidden"
            """,
            "aioidentd.toml:2: 'remote_port' in [[rule]] #1 must be a port, a range "
            "\"LOW-HIGH\" or an array of them, got 'irc'",
        ),
        (
            """
            [[rule]]
            answer = "hidden"
            remote_address = ["192.0.2.0/24",
                              "192.0.2.300/24"]
            """,
            "aioidentd.toml:3: 'remote_address' in [[rule]] #1: '192.0.2.300/24' does not "
            "appear to be an IPv4 or IPv6 network",
        ),
        (
            """
            [[rule]]
            remote_address = "192.0.2.1/24"
            answer = "hidden"
            """,
            "aioidentd.toml:2: 'remote_address' in [[rule]] #1: 192.0.2.1/24 has host bits set",
        ),
        (
            """
            [[rule]]
            local_port = 6667
            """,
            "aioidentd.toml:1: [[rule]] #1 sets nothing (give it an answer)",
        ),
        (
            """
            [[rule]]
            answer = "random"
            """,
            "aioidentd.toml:1: [[rule]] #1 has no condition and would match everything; "
            "put settings for everyone in [default]",
        ),
        (
            """
            [[rule]]
            local_port = ["6667", "6697"]
            answer = "random"

            [[rule]]
            local_port = [6697, 6667]
            answer = "hidden"
            """,
            "aioidentd.toml:5: [[rule]] #2 has the same conditions as [[rule]] #1 (line 1) "
            "and would never match; merge them",
        ),
        (
            """
            [user.root]
            answer = "uid"
            [user.0]
            answer = "username"
            """,
            "aioidentd.toml:3: [user.0] names a user already configured",
        ),
        (
            # str.isdigit() takes these, int() does not (or reads a number nobody meant).
            """
            [default]
            answer = "uid"

            [user."²"]
            answer = "hidden"
            """,
            "aioidentd.toml:4: [user.²]: '²' is neither a user name nor a uid (digits 0-9)",
        ),
        (
            """
            [[rule]]
            remote_port = 6667
            user = ["alice", "٣"]
            answer = "random"
            """,
            "aioidentd.toml:3: 'user' in [[rule]] #1: '٣' is neither a user name nor a uid "
            "(digits 0-9)",
        ),
        (
            """
            user = "alice"
            """,
            "aioidentd.toml:1: [user] must be a table, not a string",
        ),
        (
            """
            [user]
            alice = "hidden"
            """,
            "aioidentd.toml:2: [user.alice] must be a table, not a string",
        ),
        (
            """
            [rule]
            answer = "hidden"
            """,
            "aioidentd.toml:1: 'rule' must be written as [[rule]] tables",
        ),
    ],
)
def test_config_errors_name_the_line(text: str, expected: str) -> None:
    assert str(error(text)) == expected


def test_toml_syntax_error_keeps_line_and_file() -> None:
    err = error(
        """
        [server]
        port = 113
        multiple = yes
        """
    )
    assert err.line == 3
    assert str(err).startswith("aioidentd.toml:3: TOML syntax: Invalid value (column 12)")


def test_duplicate_table_is_a_syntax_error() -> None:
    err = error(
        """
        [user.alice]
        answer = "uid"

        [user.alice]
        answer = "hidden"
        """
    )
    assert err.line == 4
    assert "TOML syntax" in str(err)


def test_load_config_missing_and_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read: No such file"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[default]\nanswer = "uid"\n# caf\xe9\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml:3: not UTF-8 text"):
        load_config(str(bad))


def test_config_error_is_a_value_error() -> None:
    err = error("[server]\nport = -1\n")
    assert isinstance(err, ValueError)
    assert (err.filename, err.line) == ("aioidentd.toml", 2)


# ----------------------------------------------------------------------------- CLI


def test_check_config_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.toml"
    path.write_text('[user.nobody]\nanswer = "random"\n')  # a user every host has
    assert check_config(argparse.Namespace(config=str(path), user_file=[])) == 0
    out, err = capsys.readouterr()
    assert "good.toml: configuration is valid" in out
    assert "[user.nobody] random" in out
    assert err == ""


def test_check_config_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = 113\nmultple = true\n")
    assert check_config(argparse.Namespace(config=str(path), user_file=[])) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"aioidentd: {path}:3: unknown key 'multple' in [server] (did you mean 'multiple'?)\n"
    )


def test_check_config_superscript_uid_is_a_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "digits.toml"
    path.write_text('[[rule]]\nlocal_port = 113\nuser = "²"\nanswer = "hidden"\n')
    assert check_config(argparse.Namespace(config=str(path), user_file=[])) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"aioidentd: {path}:3: 'user' in [[rule]] #1: '²' is neither a user name nor a "
        "uid (digits 0-9)\n"
    )


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    args = build_parser().parse_args(["check-config", str(path)])
    assert args.func(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"aioidentd: {path}: cannot read: No such file or directory\n"
    assert "Traceback" not in err


def test_check_config_on_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config(argparse.Namespace(config=str(tmp_path), user_file=[])) == 2
    assert capsys.readouterr().err.startswith(f"aioidentd: {tmp_path}: cannot read: ")


def test_locator_skips_multiline_strings_and_counts_arrays() -> None:
    from aioidentd.policy._toml_lines import Locator

    text = textwrap.dedent(
        """\
        note = '''
        [user.fake]
        colour = 1
        '''
        [[rule]]
        answer = "a"
        [user.real]
        "quoted.key" = 1
        [[rule]]
        answer = "b"
        """
    )
    locator = Locator(text)
    assert locator.line_of(("note",)) == 1
    assert locator.line_of(("user", "fake")) == 7  # only [user.real] declared "user"
    assert locator.line_of(("rule", 0, "answer")) == 6
    assert locator.line_of(("user", "real", "quoted.key")) == 8
    assert locator.line_of(("rule", 1, "answer")) == 10
    assert locator.line_of(("rule", 1, "missing")) == 9
    assert locator.line_of(("nowhere",)) is None


def test_every_key_of_the_schema_is_documented() -> None:
    """docs/config.md has a row for each key the schema defines (a key added is a row)."""
    from aioidentd.policy.settings import (
        AnswerSettings,
        DaemonSettings,
        MetricsSettings,
        PseudonymSettings,
        ReplySettings,
        Rule,
        keys_of,
    )

    doc = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    sections = (DaemonSettings, ReplySettings, MetricsSettings, PseudonymSettings, AnswerSettings)
    for section in (*sections, Rule):
        for name, _, _ in keys_of(section):
            assert f"| `{name}` |" in doc, f"{section.__name__}: {name}"


def test_check_config_shows_a_users_control_characters_escaped(tmp_path: Path) -> None:
    """A user's oidentd file is what root reads with --user-file: ESC, BEL and CR in it
    (a terminal title, a screen clear, a line overwritten) reach root's terminal as
    escapes, never as themselves. The real command, its real output bytes."""
    config = tmp_path / "aioidentd.toml"
    config.write_text("[default]\nanswer = 'username'\n")
    user_file = tmp_path / "oidentd.conf"
    user_file.write_bytes(
        b'global {\n  reply "x\x1b]0;owned\x07\x1b[2J\rroot"\n}\n'
        b"default {\n  bogus\x1b[31m\x07\x0d\n}\n"
    )
    command = ["check-config", str(config), "--user-file", str(user_file)]
    done = subprocess.run(
        [sys.executable, "-m", "aioidentd", *command],
        capture_output=True,
        timeout=60,
    )
    assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", done.stdout + done.stderr)
    out = done.stdout.decode()
    assert 'reply "x\\x1b]0;owned\\x07\\x1b[2J\\x0droot"' in out
    assert "bogus\\x1b[31m\\x07" in out
