"""``aioidentd serve`` and ``python -m aioidentd`` as a user runs them."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from support import ENV, ask, run_aioidentd


@contextmanager
def serve(*args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aioidentd", "serve", "--port", "0", *args],
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 10
        port = 0
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            match = re.search(r"serving ident on 127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "server did not report its port"
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serves_fallback_and_stops_cleanly_on_signal(signum: int) -> None:
    with serve("--default", "alice", "--reply-style", "spaced") as (proc, port):
        assert ask(port, b"6193, 23\r\n") == b"6193 , 23 : USERID : UNIX : alice\r\n"
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        rest = proc.stderr.read()
        assert "Traceback" not in rest
        assert "shutting down" in rest


def test_random_and_multiple() -> None:
    with serve("--random", "--multiple") as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"1,2\r\n3,4\r\n")
            data = b""
            while data.count(b"\n") < 2:
                data += sock.recv(1024)
        assert re.fullmatch(
            rb"1,2:USERID:UNIX:[a-z0-9]{8}\r\n3,4:USERID:UNIX:[a-z0-9]{8}\r\n", data
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--port", "70000"], "port must be 0..65535"),
        (["serve", "--port", "http"], "not an integer: 'http'"),
        (["serve", "--workers", "300"], "workers must be 1..256, got 300"),
        (["serve", "--reply-style", "spaced2"], "did you mean 'spaced'"),
        (["serve", "--idle-timeout", "-5"], "positive number of seconds"),
        (["serve", "--response-timeout", "nan"], "positive number of seconds"),
        (["serve", "--default", "ab", "--random"], "not allowed with"),
        # The configuration's rule for a fixed answer, word for word (see test_config).
        (["serve", "--default", "a:b"], "user id must not contain ':' (clients count colons)"),
        (["serve", "--default", " ab"], "user id must not start or end with blanks"),
        (["serve", "--default", "jürgen"], "charset"),
        (["serve", "--bogus"], "unrecognized arguments"),
        ([], "a command is required"),
    ],
)
def test_bad_arguments_give_one_line_error_and_status_2(args: list[str], message: str) -> None:
    proc = run_aioidentd(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line, not argparse's usage block
    assert line.startswith("aioidentd") and "--help" in line


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_aioidentd("serve", "--port", str(port))
    assert proc.returncode == 1
    assert f"cannot bind 127.0.0.1 port {port}: Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_server_key_but_listen_has_a_flag_with_the_files_rule() -> None:
    """The flags come from the schema: a [server] key added there is a flag too, and a
    value the file refuses is refused on the command line with the same words."""
    from aioidentd.policy import ConfigError, parse_config
    from aioidentd.policy.settings import DaemonSettings, keys_of

    proc = run_aioidentd("serve", "--help")
    names = [name for name, _, _ in keys_of(DaemonSettings)]
    assert names[0] == "listen" and "--host" in proc.stdout
    for name in names[1:]:
        assert f"--{name.replace('_', '-')}" in proc.stdout, name
    for key, value, words in (
        ("max_connections", "0", "must be 1..1000000, got 0"),
        ("idle_timeout", "-1", "must be a positive number of seconds, got -1"),
        ("user", '""', "must not be empty"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config(f"[server]\n{key} = {value}\n", "x.toml")
        assert str(info.value) == f"x.toml:2: '{key}' in [server] {words}"
        argument = "" if value == '""' else value
        flag = run_aioidentd("serve", f"--{key.replace('_', '-')}", argument)
        assert flag.returncode == 2 and f"{key} {words}" in flag.stderr, flag.stderr
