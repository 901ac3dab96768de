"""answer = "pseudonym": ids that are the same on one network, unrelated across networks,
and traceable only with the key (aioidentd.pseudonym, [pseudonym], the key file, the
daemon, explain and resolve). The proof with real IRC servers is
tests/interop/test_irc_pseudonyms.py."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import string
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import aioidentd
from aioidentd import IdentServer, Pseudonyms
from aioidentd.daemon.pseudonym_key import load_or_create_key, read_key
from aioidentd.errors import ConfigError, DaemonError
from aioidentd.policy import Policy, parse_config
from aioidentd.pseudonym import collision_rate, epoch_of
from peers import require_root
from support import ENV, FakeUserDB, ask, connection_as_nobody, run_aioidentd, serve_process

KEY = bytes(range(32))
LOCAL = ("192.0.2.10", 40000)
ALICE, BOB = 1000, 1001
USERS = FakeUserDB({ALICE: ("alice", None, ("alice",)), BOB: ("bob", None, ("bob",))})
NOBODY = 65534


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- the derivation ------------------------------------------------------------------


def test_same_user_same_network_same_id_and_other_networks_unrelated() -> None:
    names = Pseudonyms(KEY, networks={"libera": ["203.0.113.0/24", "2001:db8:1::/48"]})
    first = names.of("1000", "203.0.113.5")
    assert names.of("1000", "203.0.113.200") == first  # another server of the network
    assert names.of("1000", "2001:db8:1::77") == first  # and over IPv6
    assert names.of("1000", "::ffff:203.0.113.9") == first  # a dual-stack socket's form
    assert Pseudonyms(KEY, networks={"libera": ["203.0.113.0/24"]}).of("1000", "203.0.113.1") == (
        first
    )  # the same key and network: the same id in another process
    others = {names.of("1000", f"198.51.{n}.1") for n in range(50)}
    assert first not in others and len(others) == 50  # every /24 is its own network
    assert names.of("1001", "203.0.113.5") != first
    assert (
        Pseudonyms(bytes(32), networks={"libera": ["203.0.113.0/24"]}).of("1000", "203.0.113.5")
        != first
    )  # another key


def test_ids_are_lower_case_letters_and_digits_starting_with_a_letter() -> None:
    for length in (6, 10, 20):
        names = Pseudonyms(KEY, length=length)
        for user in range(300):
            text = names.of(str(user), "192.0.2.1")
            assert len(text) == length
            assert text[0] in string.ascii_lowercase
            assert set(text) <= set(string.ascii_lowercase + string.digits)


def test_unnamed_networks_are_cut_to_the_prefix() -> None:
    names = Pseudonyms(KEY, ipv4_prefix=16, ipv6_prefix=32)
    assert names.network("10.1.200.3") == "10.1.0.0/16"
    assert names.network("2001:db8:aa::1") == "2001:db8::/32"
    assert names.of("7", "10.1.0.1") == names.of("7", "10.1.255.254") != names.of("7", "10.2.0.1")
    assert Pseudonyms(KEY).network("192.0.2.77") == "192.0.2.0/24"
    assert Pseudonyms(KEY).network("2001:db8:1:2::1") == "2001:db8:1::/48"


def test_a_range_in_two_networks_is_refused() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        Pseudonyms(KEY, networks={"a": ["10.0.0.0/8"], "b": ["10.1.0.0/16"]})
    with pytest.raises(ValueError, match="16-64 bytes"):
        Pseudonyms(b"short")


def test_rotation_changes_ids_at_the_epoch_boundary_only() -> None:
    names = Pseudonyms(KEY, rotate="monthly")
    november = names.of("1000", "192.0.2.1", when=at("2026-11-30T23:59:59"))
    assert names.of("1000", "192.0.2.1", when=at("2026-11-01T00:00:00")) == november
    december = names.of("1000", "192.0.2.1", when=at("2026-12-01T00:00:00"))
    assert december != november
    assert names.epoch(at("2026-12-15T12:00")) == "2026-12"
    assert Pseudonyms(KEY).of("1000", "192.0.2.1", when=at("2020-01-01")) == Pseudonyms(KEY).of(
        "1000", "192.0.2.1", when=at("2030-06-01")
    )  # rotate = "never"
    assert epoch_of("weekly", at("2026-12-03T10:00"))[0] == "2026-W49"
    _label, start, end = epoch_of("weekly", at("2026-12-03T10:00"))
    assert (start, end) == (at("2026-11-30"), at("2026-12-07"))  # Monday to Monday
    assert epoch_of("daily", at("2026-12-31T23:00"))[2] == at("2027-01-01")
    assert epoch_of("yearly", at("2026-06-01"))[0] == "2026"


def test_resolve_finds_the_user_and_every_candidate_of_a_collision() -> None:
    names = Pseudonyms(KEY, length=6, rotate="monthly")
    users = [str(n) for n in range(120_000)]
    seen: dict[str, str] = {}
    pair = None
    for user in users:
        text = names.of(user, "192.0.2.1")
        if text in seen:
            pair = (seen[text], user, text)
            break
        seen[text] = user
    assert pair is not None, "no collision among 120,000 six-character ids"
    first, second, text = pair
    assert names.resolve(text, "192.0.2.99", users) == [first, second]
    assert names.resolve(text.upper(), "192.0.2.99", users) == [first, second]  # IRC: no case
    assert names.resolve(text, "198.51.100.1", users[: int(second) + 1]) != [first, second]
    long = Pseudonyms(KEY, rotate="monthly")
    full = long.of("1000", "192.0.2.1")
    assert long.resolve(full[:8], "192.0.2.1", ["999", "1000"]) == ["1000"]  # a server cut it
    december = long.of("1000", "192.0.2.1", when=at("2026-12-10"))
    assert long.resolve(december, "192.0.2.1", ["1000"], when=at("2026-12-31")) == ["1000"]
    assert long.resolve(december, "192.0.2.1", ["1000"], when=at("2027-01-01")) == []


def test_the_documented_collision_rate() -> None:
    """docs/config.md and docs/privacy.md: about 1 in 530,000 for 100,000 accounts at the
    default length (1 in 15,000 cut to 9 characters, 1 in 400 at length 8)."""
    assert round(1 / collision_rate(100_000), -4) == 530_000
    assert round(1 / collision_rate(100_000, 9), -3) == 15_000
    assert round(1 / collision_rate(100_000, 8), -2) == 400
    docs = Path(__file__).resolve().parents[1] / "docs"
    for page in ("config.md", "privacy.md"):
        assert "about 1 in 530,000" in " ".join((docs / page).read_text().split()), page


async def test_an_application_gives_each_user_a_stable_id_per_network() -> None:
    """A bouncer's use (docs/privacy.md): the id claimed for each upstream connection is
    the user's pseudonym for that server, with the application's own key; the server,
    asking our IdentServer over a real socket, sees it on every reconnect."""
    names = Pseudonyms(secrets.token_bytes(32))
    async with IdentServer("127.0.0.1", 0) as ident:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        seen: dict[str, list[str]] = {"alice": [], "bob": []}
        for user in ("alice", "bob", "alice"):
            address, port = listener.getsockname()
            _reader, writer = await ident.open_connection(
                address, port, user_id=names.of(user, address)
            )
            conn, _ = await loop.sock_accept(listener)
            with conn:
                reply = await aioidentd.query_connection(conn, port=ident.addresses[0][1])
            writer.close()
            assert isinstance(reply, aioidentd.UserIdReply), reply
            seen[user].append(str(reply.user_id))
        listener.close()
    assert seen["alice"][0] == seen["alice"][1] == names.of("alice", "127.0.0.1")
    assert seen["bob"][0] != seen["alice"][0]
    assert names.resolve(seen["bob"][0], "127.0.0.1", ["alice", "bob"]) == ["bob"]


# -- the configuration and the policy --------------------------------------------------

CONFIG = """\
[pseudonym]
key_file = "/nonexistent/key"
rotate = "never"

[pseudonym.networks]
libera = ["203.0.113.0/24", "198.51.100.0/25"]

[default]
answer = "pseudonym"

[user.bob]
allow_user_reply = true
"""


def test_pseudonym_settings_are_read_and_checked() -> None:
    config = parse_config(CONFIG)
    assert config.uses_pseudonyms
    assert config.pseudonym.rotate == "never" and config.pseudonym.length == 10
    assert [str(n) for n in config.pseudonym.networks["libera"]] == [
        "203.0.113.0/24",
        "198.51.100.0/25",
    ]
    assert not parse_config("").uses_pseudonyms
    assert parse_config('[[rule]]\nremote_port = 6667\nanswer = "pseudonym"\n').uses_pseudonyms
    cases = {
        "[pseudonym]\nlenght = 8\n": "unknown key 'lenght' in [pseudonym] (did you mean 'length'?)",
        "[pseudonym]\nlength = 30\n": "6..20",
        '[pseudonym]\nrotate = "monthy"\n': "did you mean 'monthly'?",
        '[pseudonym]\nkey_file = "key"\n': "absolute path",
        '[pseudonym.networks]\na = "10.0.0.0/8"\nb = ["10.9.0.0/16"]\n': "overlaps 10.0.0.0/8",
        '[pseudonym.networks]\n"a b" = "10.0.0.0/8"\n': "a network's name",
        '[pseudonym.networks]\na = "10.0.0.1/8"\n': "host bits set",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            parse_config(text)
        assert message in str(caught.value), (text, str(caught.value))
        assert str(caught.value).startswith("<string>:"), "with a line number"


def test_policy_answers_the_pseudonym_and_explains_it() -> None:
    policy = Policy(parse_config(CONFIG), user_db=USERS, pseudonym_key=KEY)
    expected = Pseudonyms(KEY, networks={"libera": ["203.0.113.0/24"]}).of("1000", "203.0.113.7")
    decision = policy.decide(ALICE, LOCAL, ("198.51.100.3", 6667), explain=True)
    assert decision.kind == "pseudonym" and decision.user_id == expected.encode()
    assert decision.opsys == "UNIX"  # what ircd-hybrid accepts too (docs/config.md)
    assert decision.why == "pseudonym on network libera, [default]"
    assert "alice (uid 1000) replied as" in decision.describe()  # the real user beside it
    assert any(
        "the pseudonym of alice (uid 1000) for the querier's network libera" in r and expected in r
        for r in decision.reasons
    ), decision.reasons
    elsewhere = policy.decide(ALICE, LOCAL, ("192.0.2.3", 6667))
    assert elsewhere.user_id != decision.user_id and elsewhere.why.startswith(
        "pseudonym on network 192.0.2.0/24"
    )
    assert policy.decide(0, LOCAL, ("198.51.100.3", 6667)).error == "HIDDEN-USER"  # root
    with pytest.raises(ValueError, match="needs the key"):
        Policy(parse_config(CONFIG), user_db=USERS)


def test_a_users_own_choice_wins_over_the_pseudonym() -> None:
    """bob may choose (allow_user_reply): his claim is the answer; alice may not."""
    policy = Policy(parse_config(CONFIG), user_db=USERS, pseudonym_key=KEY)
    remote = ("198.51.100.3", 6667)
    claimed = policy.claimed(BOB, LOCAL, remote, b"bobby", "UNIX", None, None)
    assert claimed.kind == "claim" and claimed.user_id == b"bobby"
    refused = policy.claimed(ALICE, LOCAL, remote, b"notalice", "UNIX", None, None)
    assert refused.kind == "pseudonym" and refused.note is not None


# -- the key file ----------------------------------------------------------------------


def test_the_key_is_created_once_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "pseudonym.key"
    key, created = load_or_create_key(str(path))
    assert created and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert re.fullmatch(r"[0-9a-f]{64}\n", path.read_text())
    assert load_or_create_key(str(path)) == (key, False)
    assert [p.name for p in path.parent.iterdir()] == ["pseudonym.key"]  # no temporary left


def test_two_daemons_starting_at_once_share_one_key(tmp_path: Path) -> None:
    """--inetd starts a process per connection: the first start may be two at once."""
    path = tmp_path / "pseudonym.key"
    code = (
        "import sys; from aioidentd.daemon.pseudonym_key import load_or_create_key; "
        "print(load_or_create_key(sys.argv[1])[0].hex())"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], env=ENV, stdout=subprocess.PIPE)
        for _ in range(6)
    ]
    keys = {proc.communicate(timeout=30)[0] for proc in procs}
    assert len(keys) == 1 and keys != {b""}


def test_a_key_others_may_read_or_anyone_may_own_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o440)
    with pytest.raises(DaemonError, match=r"may be read by others \(mode 0440\): chmod 400"):
        read_key(str(path), (os.geteuid(),))
    path.chmod(0o400)
    assert read_key(str(path), (os.geteuid(),)) == KEY
    with pytest.raises(DaemonError, match="belongs to uid"):
        read_key(str(path), (os.geteuid() + 1,))
    path.chmod(0o600)
    path.write_text("not hex\n")
    with pytest.raises(DaemonError, match="not 32-128 hex digits"):
        read_key(str(path), (os.geteuid(),))
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(DaemonError, match="cannot read"):
        read_key(str(link), (os.geteuid(),))


# -- the daemon, explain and resolve -----------------------------------------------------


def _daemon_config(tmp_path: Path) -> Path:
    config = tmp_path / "aioidentd.toml"
    config.write_text(
        f'[server]\nuser = "nobody"\nlog_queries = true\n\n[pseudonym]\n'
        f'key_file = "{tmp_path}/state/pseudonym.key"\n\n[default]\nanswer = "pseudonym"\n'
    )
    return config


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory the daemon can still read after dropping root (pytest's own are
    private to root), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="aioidentd-pseudonym-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_the_daemon_answers_pseudonyms_and_resolve_names_the_user(shared: Path) -> None:
    require_root("to run a connection as nobody and drop privileges")
    tmp_path = shared
    config = _daemon_config(tmp_path)
    with serve_process("--config", str(config), "--host", "127.0.0.1", "--port", "0") as daemon:
        port = daemon.port
        answers = []
        for _ in range(2):
            with connection_as_nobody() as (accepted, child_port):
                server_port = accepted.getsockname()[1]
                answers.append(ask(port, f"{child_port},{server_port}\r\n".encode()))
                explained = run_aioidentd(
                    *("explain", "127.0.0.1", str(server_port), "--config", str(config)),
                    *("--local", f"127.0.0.1:{child_port}"),
                )
        daemon.wait_for(r"asked .*: nobody \(uid 65534\) replied as '[a-z0-9]{10}' \(pseudonym")
        assert daemon.count("created a new pseudonym key") == 1
        assert re.search(r"[0-9a-f]{64}", daemon.log) is None  # the key is never logged
    ids = {answer.decode().rstrip().rpartition(":")[2] for answer in answers}
    assert len(ids) == 1, answers  # the same id for every connection
    (pseudonym,) = ids
    assert explained.returncode == 0, explained.stderr
    assert (
        "the pseudonym of nobody (uid 65534) for the querier's network 127.0.0.0/24"
        in (explained.stdout)
        and f"USERID:UNIX:{pseudonym}" in explained.stdout
    ), explained.stdout
    assert all(b":USERID:UNIX:" in answer for answer in answers)
    key = tmp_path / "state" / "pseudonym.key"
    assert key.stat().st_uid == NOBODY and stat.S_IMODE(key.stat().st_mode) == 0o400
    found = run_aioidentd("resolve", pseudonym, "--from", "127.0.0.1", "--config", str(config))
    assert found.returncode == 0, found.stderr
    assert "nobody (uid 65534)" in found.stdout and "on network 127.0.0.0/24" in found.stdout
    other = run_aioidentd("resolve", pseudonym, "--from", "192.0.2.1", "--config", str(config))
    assert other.returncode == 1 and "0 of" in other.stdout
    bad = run_aioidentd("resolve", "no_such", "--from", "192.0.2.1", "--config", str(config))
    assert bad.returncode == 2 and "not a pseudonym" in bad.stderr


def test_resolve_without_the_key_says_so(tmp_path: Path) -> None:
    config = _daemon_config(tmp_path)
    result = run_aioidentd("resolve", "abcdefghij", "--from", "192.0.2.1", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith("aioidentd resolve: cannot read the pseudonym key")
    assert "Traceback" not in result.stderr


def test_a_reload_with_another_key_file_makes_and_uses_that_key(shared: Path) -> None:
    require_root("to run a connection as nobody and drop privileges")
    tmp_path = shared
    config = _daemon_config(tmp_path)
    with serve_process("--config", str(config), "--host", "127.0.0.1", "--port", "0") as daemon:
        port = daemon.port

        def answer() -> bytes:
            with connection_as_nobody() as (accepted, child_port):
                query = f"{child_port},{accepted.getsockname()[1]}\r\n".encode()
                return ask(port, query).rpartition(b":")[2]

        before = answer()
        # The daemon, now nobody, makes the new key in a directory it may write.
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        os.chown(fresh, NOBODY, NOBODY)
        config.write_text(config.read_text().replace("/state/", "/fresh/"))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for("SIGHUP: configuration reloaded")
        assert daemon.count(f"created a new pseudonym key in {fresh}/pseudonym.key") == 1
        after = answer()
        assert re.fullmatch(rb"[a-z][a-z0-9]{9}\r\n", after) and after != before
        # A key file the daemon cannot make: the running configuration stays.
        config.write_text(config.read_text().replace("/fresh/", "/nowhere/deeper/"))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for("SIGHUP: keeping the running configuration: cannot create the pseudonym")
        assert answer() == after
