"""``aioidentd explain``: the daemon's answer for one real connection, and every reason.

Real connections on loopback (one of them owned by nobody, through a child process), the
real kernel lookup, the real policy over the machine's users, real reply files. The
answers are checked against the ones the daemon gives on the wire for the same
connections, so that explain cannot drift from what the daemon does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aioidentd.daemon.explain import Explanation, explain
from aioidentd.lookup import ProcNetLookup
from aioidentd.lookup.table import read_table
from aioidentd.policy import Config, parse_config
from aioidentd.protocol import Address
from peers import NOBODY, require
from support import (
    FakeUserDB,
    ask,
    connection_as_nobody,
    require_root,
    run_aioidentd,
    serve_process,
    wait_until,
    world_readable_dir,
)

HOST = "127.0.0.1"


def config(text: str = "") -> Config:
    return parse_config(textwrap.dedent(text), "test.toml")


def topics(result: Explanation, topic: str) -> list[str]:
    return [step.text for step in result.steps if step.topic == topic]


@contextmanager
def nobody_connection() -> Iterator[tuple[Address, Address]]:
    """(nobody's end, our end) of a live connection: explained from nobody's side, it is
    the ident host's connection to us as the remote peer."""
    with connection_as_nobody(HOST) as (accepted, child_port):
        yield (HOST, child_port), accepted.getsockname()[:2]


@contextmanager
def own_connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connection made by this process (so owned by whoever runs the tests)."""
    with socket.create_server((HOST, 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            yield client, accepted


def test_found_owner_and_the_answer_the_daemon_gives() -> None:
    with nobody_connection() as (local, remote):
        result = explain(config(), local, remote)
        (found,) = topics(result, "connection")
        assert "found (ESTABLISHED), owner uid 65534 (nobody)" in found
        assert result.answer == f"{local[1]},{remote[1]}:USERID:UNIX:nobody"
        assert 'answer = "username" from built-in default' in topics(result, "policy")
        # The daemon says the same on the wire.
        with serve_process("--port", "0") as daemon:
            line = ask(daemon.port, b"%d, %d\r\n" % (local[1], remote[1]))
        assert line.decode().rstrip("\r\n") == result.answer


def test_rules_say_which_matched_and_why_the_others_did_not() -> None:
    with nobody_connection() as (local, remote):
        rules = f"""
            [[rule]]
            remote_port = "1-2"
            answer = "hidden"
            [[rule]]
            user = "nobody"
            remote_port = {remote[1]}
            answer = "random"
        """
        result = explain(config(rules), local, remote)
    policy = topics(result, "policy")
    assert f"[[rule]] #1 (line 2) does not match: remote port {remote[1]} is not 1-2" in policy
    assert f"[[rule]] #2 (line 5) matches (remote port {remote[1]} and user nobody)" in policy
    assert 'answer = "random" from [[rule]] #2 (line 5)' in policy
    assert result.decision.kind == "random"
    assert (
        result.decision.why
        == f"random, [[rule]] #2 matched: remote port {remote[1]} and user nobody"
    )


def test_root_is_hidden_and_says_so() -> None:
    require_root("a connection owned by root")
    with own_connection() as (client, accepted):
        result = explain(config(), client.getsockname(), accepted.getsockname())
    assert any("owner uid 0 (root)" in text for text in topics(result, "connection"))
    assert any("the built-in root rule hides it" in text for text in topics(result, "policy"))
    assert result.answer.endswith(":ERROR:HIDDEN-USER")


def test_masked_errors_say_what_was_masked() -> None:
    with nobody_connection() as (local, remote):
        result = explain(
            config('[reply]\nmask_errors = true\n[default]\nanswer = "no-user"\n'), local, remote
        )
    assert result.answer.endswith(":ERROR:UNKNOWN-ERROR")
    assert "NO-USER is sent as UNKNOWN-ERROR: [reply] mask_errors = true" in topics(
        result, "policy"
    )


def test_a_querier_that_is_not_the_other_end_is_told_why() -> None:
    with nobody_connection() as (local, remote):
        result = explain(config(), local, remote, querier="127.0.0.2")
    (query,) = topics(result, "query")
    assert "only 127.0.0.1, the other end, can ask about it" in query
    assert result.answer.endswith(":ERROR:NO-USER")
    # The nearest candidate is the real connection, with the host that may ask.
    assert any(
        f"local port {local[1]} is connected to {remote[0]}:{remote[1]} instead" in text
        and "must come from 127.0.0.1" in text
        for text in topics(result, "connection")
    )


def test_no_such_connection_names_the_ones_near_it() -> None:
    with nobody_connection() as (local, remote):
        wrong_port = (remote[0], remote[1] + 1 if remote[1] < 65535 else remote[1] - 1)
        result = explain(config(), local, wrong_port)
        other_end = explain(config(), (HOST, local[1] + 1 if local[1] < 65535 else 1), remote)
    connection = topics(result, "connection")
    assert connection[0].startswith("no live connection")
    assert any(f"is connected to {remote[0]}:{remote[1]} instead" in t for t in connection)
    assert any(
        f"is connected from local port {local[1]} instead" in text and "uid 65534" in text
        for text in topics(other_end, "connection")
    )


def test_time_wait_is_a_closed_connection_nobody_owns() -> None:
    with socket.create_server((HOST, 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        local, remote = client.getsockname()[:2], accepted.getsockname()[:2]
        client.close()  # the side that closes first keeps the TIME_WAIT
        assert accepted.recv(1) == b""
        accepted.close()

        def in_time_wait() -> bool:
            return any(
                entry.state_name == "TIME_WAIT" and entry.local == local and entry.remote == remote
                for entry in read_table()
            )

        wait_until(in_time_wait, what="the closed connection in TIME_WAIT")
        result = explain(config(), local, remote)
    assert result.answer.endswith(":ERROR:NO-USER")
    assert any("is TIME_WAIT with no owner" in text for text in topics(result, "connection"))


def test_a_connection_in_another_network_namespace_is_found_there() -> None:
    require_root("to create a network namespace and look into it")
    unshare = require("unshare", "unshare (util-linux)")
    script = textwrap.dedent(
        """
        import socket, subprocess, sys
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        print(client.getsockname()[1], server.getsockname()[1], flush=True)
        sys.stdin.read()
        """
    )
    require("ip", "iproute2")
    child = subprocess.Popen(
        [unshare, "-n", sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        client_port, server_port = map(int, child.stdout.readline().split())
        result = explain(config(), (HOST, client_port), (HOST, server_port))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert result.answer.endswith(":ERROR:NO-USER")
    assert any(
        "exists in another network namespace" in text and f"that of pid {child.pid}" in text
        for text in topics(result, "connection")
    ), result.steps


def test_the_hint_about_containers_when_nothing_matches() -> None:
    # A port pair nothing uses: the listener's own port, asked about from port 1.
    with socket.create_server((HOST, 0)) as listener:
        port = listener.getsockname()[1]
        result = explain(config(), (HOST, 1), (HOST, port))
    (hint,) = topics(result, "hint")
    # Without other namespaces on the host, the general hint; with some, what was searched.
    assert ("container" in hint and "another network namespace" in hint) or (
        "other network namespaces has this connection" in hint
    ), hint


def test_a_failed_lookup_is_unknown_error_with_the_reason(tmp_path: Path) -> None:
    lookup = ProcNetLookup(tmp_path)  # no net/tcp here: every lookup fails
    result = explain(config(), (HOST, 40000), (HOST, 6667), lookup=lookup)
    assert result.answer == "40000,6667:ERROR:UNKNOWN-ERROR"
    (failed,) = [t for t in topics(result, "lookup") if "failed" in t]
    assert "cannot read" in failed and str(tmp_path) in failed


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    """A home directory that nobody's files can live in, readable by the daemon's user
    (pytest's tmp_path is private to root)."""
    require_root("to make files owned by nobody")
    with world_readable_dir("aioidentd-home-") as home:
        yield home


def test_a_reply_file_is_used_or_refused_with_the_reason(nobody_home: Path) -> None:
    db = FakeUserDB({NOBODY: ("nobody", str(nobody_home), ["nogroup"]), 0: ("root", "/root", [])})
    reply = nobody_home / ".aioidentd-reply"
    reply.write_text("ghost\n")
    os.chown(reply, NOBODY, NOBODY)
    allowed = config("[user.nobody]\nallow_user_reply = true\n")
    with nobody_connection() as (local, remote):
        reply.chmod(0o664)
        refused = explain(allowed, local, remote, user_db=db)
        reply.chmod(0o644)
        used = explain(allowed, local, remote, user_db=db)
    (why,) = topics(refused, "reply file")
    assert why.startswith("~nobody/.aioidentd-reply: refused:") and "writable by group" in why
    assert refused.answer.endswith(":USERID:UNIX:nobody")
    assert "allow_user_reply = true from [user.nobody] (line 1)" in topics(refused, "policy")
    assert topics(used, "reply file") == ["~nobody/.aioidentd-reply: used, it says 'ghost'"]
    assert used.answer.endswith(":USERID:UNIX:ghost")
    # Decided as the daemon's user, not as root (root never reads users' files).
    assert any("after dropping root" in text for text in topics(used, "privileges"))


def test_an_oidentd_file_written_by_znc_is_named_in_the_trail(nobody_home: Path) -> None:
    db = FakeUserDB({NOBODY: ("nobody", str(nobody_home), ["nogroup"])})
    conf = nobody_home / ".oidentd.conf"
    conf.write_text('global { reply "zncuser" }\n')
    os.chown(conf, NOBODY, NOBODY)
    conf.chmod(0o644)
    allowed = config("[user.nobody]\nallow_user_reply = true\n")
    with nobody_connection() as (local, remote):
        result = explain(allowed, local, remote, user_db=db)
    assert topics(result, "reply file") == ["~nobody/.aioidentd-reply: there is none"]
    (chosen,) = topics(result, "user file")
    assert chosen == f"oidentd file {conf} line 1: used, it says 'zncuser'"
    assert result.answer.endswith(":USERID:UNIX:zncuser")
    assert result.decision.why == f"user-reply, {conf} line 1"


# ------------------------------------------------------------------------- the command


def test_command_finds_the_connection_and_prints_each_step() -> None:
    with nobody_connection() as (local, remote):
        proc = run_aioidentd("explain", remote[0], str(remote[1]), "--local", str(local[1]))
        as_json = run_aioidentd(
            "explain", remote[0], str(remote[1]), "--local", f"{local[0]}:{local[1]}", "--json"
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # what the daemon would log is in the explanation
    lines = proc.stdout.splitlines()
    assert (
        lines[0] == f"connection {local[0]}:{local[1]} <-> {remote[0]}:{remote[1]}, asked by {HOST}"
    )
    assert any(
        line.startswith("connection: ") and "owner uid 65534 (nobody)" in line for line in lines
    )
    assert (
        lines[-1]
        == f"answer: {local[1]},{remote[1]}:USERID:UNIX:nobody (username, built-in default)"
    )
    document = json.loads(as_json.stdout)
    assert document["answer"] == f"{local[1]},{remote[1]}:USERID:UNIX:nobody"
    assert document["decision"]["uid"] == NOBODY and document["decision"]["kind"] == "username"
    assert {step["topic"] for step in document["steps"]} >= {"lookup", "connection", "answer"}


def test_command_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[default]\nanswer = "nobody"\n')
    cases = [
        (["explain", "no-such-host.invalid", "6667"], "cannot resolve"),
        (["explain", HOST, "6667", "--from", "[host]"], "only an IPv6 address goes in brackets"),
        (["explain", HOST, "70000"], "port"),
        (["explain", HOST, "6667", "--local", "::1:5"], "[ADDR]:PORT"),
        (["explain", "--config", str(bad), HOST, "6667", "--local", "127.0.0.1:5"], "bad.toml:2"),
        (["explain", "192.0.2.99", "1", "--local", "4"], "no connection to 192.0.2.99:1"),
    ]
    for argv, message in cases:
        proc = run_aioidentd(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_without_root_it_says_what_it_could_not_see(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as an ordinary user (the check, not the lookup, is what changes: the kernel's
    table is readable by anyone), it names what it could not do."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = explain(config(), (HOST, 1), (HOST, 2))
    (privileges,) = topics(result, "privileges")
    assert "not root" in privileges and "other network namespaces cannot be searched" in privileges
    assert "reads them as 'aioidentd'" in privileges  # the daemon's default user
    (hint,) = topics(result, "hint")
    assert hint.endswith("(run explain as root to search them)")


def test_a_query_that_cannot_reach_the_daemon_is_said() -> None:
    result = explain(config('[server]\nlisten = "127.0.0.2"\n'), (HOST, 1), (HOST, 2))
    (query,) = topics(result, "query")
    assert query.startswith("the daemon listens on 127.0.0.2 (port 113) only")
    assert explain(config('[server]\nlisten = "*"\n'), (HOST, 1), (HOST, 2)).steps[0].topic != (
        "query"
    )


def test_a_forward_is_asked_as_the_daemon_asks_it_and_its_failure_said() -> None:
    """The target is a listener that never answers: the forward times out, and the
    policy's own answer goes out, with the reason."""
    with socket.create_server((HOST, 0)) as target:
        port = target.getsockname()[1]
        forwarding = config(
            f'[user.nobody]\nanswer = "forward"\nforward = "127.0.0.1:{port}"\n'
            f'[default]\nanswer = "uid"\n'
        )
        with nobody_connection() as (local, remote):
            result = explain(forwarding, local, remote)
    assert any(
        f'answer = "forward": the daemon asks 127.0.0.1:{port} first' in text
        for text in topics(result, "policy")
    )
    (forward,) = topics(result, "forward")
    assert forward.startswith(f"not used: 127.0.0.1:{port}: ")  # why: timeout, or refused
    assert result.answer.endswith(":USERID:UNIX:65534")  # [default]'s answer


def test_the_command_prints_what_a_forward_target_said_escaped(tmp_path: Path) -> None:
    """A target (here root's, so believed) answers about other ports with an id full of
    terminal escapes: the step that says why its answer is not used shows them escaped."""
    with socket.create_server((HOST, 0)) as target:
        port = target.getsockname()[1]

        def answer() -> None:
            conn, _ = target.accept()
            with conn:
                conn.recv(1000)
                conn.sendall(b"1,2:USERID:UNIX:x\x1b]0;owned\x07\x1b[2J\r\n")

        answering = threading.Thread(target=answer)
        answering.start()
        path = tmp_path / "aioidentd.toml"
        path.write_text(
            f'[user.nobody]\nanswer = "forward"\nforward = "127.0.0.1:{port}"\n'
            '[default]\nanswer = "uid"\n'
        )
        with nobody_connection() as (local, remote):
            proc = run_aioidentd(
                "explain", remote[0], str(remote[1]), "--local", f"{local[0]}:{local[1]}",
                "--config", str(path),
            )  # fmt: skip
        answering.join(10)
    assert proc.returncode == 0, proc.stderr
    assert not any(c in proc.stdout for c in "\x1b\x07")
    assert "it answered about other ports (USERID UNIX x\\x1b]0;owned\\x07\\x1b[2J" in proc.stdout
