"""What a newcomer's shell does to the commands (issue 20): an unset variable as the
configuration's name, a pipe closed by ``head``, run as the real command in a child
process."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from peers import require_root
from support import (
    ENV,
    aioidentd_argv,
    run_aioidentd,
    serve_process,
    wait_until,
    world_readable_dir,
)

#: Every command that reads the daemon's configuration, as a newcomer writes it with
#: ``"$CONF"`` unset.
EMPTY_CONFIG = [
    ["serve", "--config", ""],
    ["serve", "--config=", "--port", "0"],
    ["check-config", ""],
    ["explain", "127.0.0.1", "6667", "--local", "127.0.0.1:5000", "--config", ""],
    ["resolve", "abc", "--from", "192.0.2.1", "--config", ""],
]


@pytest.mark.parametrize("args", EMPTY_CONFIG, ids=lambda args: " ".join(args))
def test_an_empty_configuration_name_is_a_one_line_error(args: list[str]) -> None:
    # Before: serve started on every interface, port 113, with the default policy.
    done = run_aioidentd(*args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"aioidentd {args[0]}: error: " in lines[0]
    assert "an empty file name (an unset variable?)" in lines[0]
    assert "--no-config" in lines[0]


def test_load_config_refuses_an_empty_name() -> None:
    from aioidentd.errors import ConfigError
    from aioidentd.policy import load_config

    with pytest.raises(ConfigError, match="name is empty"):
        load_config("")


def _into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """``aioidentd ARGS | head -0``, the race taken out: the pipe's reader is gone
    before the command starts, so its first write meets a broken pipe."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            aioidentd_argv(*args),
            env=ENV,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
    finally:
        os.close(write_end)


@pytest.fixture
def valid_config(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "aioidentd.toml"
    path.write_text('[server]\nport = 1113\n[user.root]\nanswer = "hidden"\n')
    yield path


def test_check_config_into_a_closed_pipe_exits_quietly(valid_config: Path) -> None:
    done = _into_closed_pipe("check-config", str(valid_config))
    assert (done.returncode, done.stderr) == (141, "")


def test_explain_json_into_a_closed_pipe_exits_quietly() -> None:
    done = _into_closed_pipe(
        "explain", "--no-config", "127.0.0.1", "6667", "--local", "127.0.0.1:5000", "--json"
    )
    assert (done.returncode, done.stderr) == (141, "")


def test_query_json_into_a_closed_pipe_exits_quietly() -> None:
    with serve_process("--no-config", "--port", "0", "--default", "alice") as server:
        port = server.wait_for(r"serving ident on 127\.0\.0\.1:(\d+)").group(1)
        done = _into_closed_pipe("query", "127.0.0.1", "6193", "23", "--port", port, "--json")
    assert (done.returncode, done.stderr) == (141, "")


def test_a_real_shell_pipeline_shows_no_traceback(valid_config: Path) -> None:
    # As typed: whether 'true' is gone before the first write is the scheduler's choice,
    # so either status may come back; never a traceback, never anything on stderr.
    argv = " ".join(aioidentd_argv("check-config", str(valid_config)))
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {argv} | true"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode in (0, 141) and done.stderr == "", done.stderr


# -- check-config refuses what serve refuses (one set of rules: daemon/refusals.py) ------------

#: (file, the line and message both commands give). The daemon's own listening flags are
#: added to serve's command line, so that a file serve wrongly accepted would not bind
#: every interface's port 113 meanwhile.
REFUSED = [
    (
        '[server]\nworkers = 2\nclaims_socket = "/run/aioidentd-test.sock"\n',
        ":3: claims_socket needs workers = 1 (every query must see every claim), not workers = 2",
    ),
    (
        '[server]\nworkers = 2\n\n[metrics]\nlisten = "127.0.0.1:0"\n',
        ":4: [metrics] needs workers = 1 (each worker process counts its own queries), "
        "not workers = 2",
    ),
    (
        '[metrics]\ntextfile = "/tmp/aioidentd.prom"\n[server]\nworkers = 3\n',
        ":1: [metrics] needs workers = 1 (each worker process counts its own queries), "
        "not workers = 3",
    ),
]


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_check_config_refuses_what_serve_refuses(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "aioidentd.toml"
    path.write_text(text)
    checked = run_aioidentd("check-config", str(path))
    served = run_aioidentd("serve", "--config", str(path), "--host", "127.0.0.1", "--port", "0")
    expected = f"aioidentd: {path}{message}\n"
    assert (checked.returncode, checked.stdout, checked.stderr) == (2, "", expected)
    assert (served.returncode, served.stderr) == (2, expected)


def test_a_flag_that_breaks_a_rule_is_named_as_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "aioidentd.toml"
    path.write_text('[server]\nworkers = 1\nclaims_socket = "/run/aioidentd-test.sock"\n')
    served = run_aioidentd(
        "serve", "--config", str(path), "--host", "127.0.0.1", "--port", "0", "--workers", "2"
    )
    assert (served.returncode, served.stderr) == (
        2,
        f"aioidentd: {path}:3: claims_socket needs workers = 1 (every query must see every "
        f"claim), not --workers 2\n",
    )


def test_check_config_as_root_refuses_running_as_root(tmp_path: Path) -> None:
    require_root("serve refuses user = root only when it starts as root")
    path = tmp_path / "aioidentd.toml"
    path.write_text('[server]\nuser = "root"\n')
    checked = run_aioidentd("check-config", str(path))
    served = run_aioidentd("serve", "--config", str(path), "--host", "127.0.0.1", "--port", "0")
    expected = f"aioidentd: {path}:2: refusing to run as root: set [server] user to an "
    assert checked.returncode == served.returncode == 2
    assert checked.stderr.startswith(expected) and served.stderr == checked.stderr
    path.write_text('[server]\nuser = "root"\nallow_root = true\n')
    assert run_aioidentd("check-config", str(path)).returncode == 0


def test_sighup_keeps_the_running_policy_for_a_file_the_next_start_would_refuse() -> None:
    with world_readable_dir("aioidentd-newcomer-") as directory:
        path = directory / "aioidentd.toml"
        path.write_text('[server]\nlisten = "127.0.0.1"\nport = 0\n')
        with serve_process("--config", str(path)) as server:
            server.port  # noqa: B018  (serving)
            path.write_text(
                '[server]\nlisten = "127.0.0.1"\nport = 0\nworkers = 2\n'
                'claims_socket = "/run/aioidentd-test.sock"\n'
            )
            server.proc.send_signal(signal.SIGHUP)
            line = server.wait_for(r"SIGHUP: keeping the running configuration: (.*)").group(1)
            assert line == (
                f"{path}:5: claims_socket needs workers = 1 (every query must see every "
                f"claim), not workers = 2"
            )
            assert server.count("configuration reloaded") == 0
            assert server.stop() == 0


# -- tables naming accounts this host lacks: a warning with the line, once per load ------------

UNKNOWN = (
    '[user.nobody]\nanswer = "hidden"\n\n[user.nosuchuser-x]\nanswer = "hidden"\n\n'
    '[group.nosuchgroup-x]\nanswer = "random"\n\n[user.4000000000]\nanswer = "hidden"\n'
)


def test_check_config_warns_of_users_and_groups_this_host_lacks(tmp_path: Path) -> None:
    path = tmp_path / "aioidentd.toml"
    path.write_text(UNKNOWN)
    done = run_aioidentd("check-config", str(path))
    assert done.returncode == 0  # a user may be created later
    assert "configuration is valid" in done.stdout
    # Named with table and line; [user.nobody] exists, a uid is not looked up.
    assert done.stderr.splitlines() == [
        f"aioidentd: warning: {path}:4: [user.nosuchuser-x] names no user of this host "
        f"(not in the passwd database): it does nothing until such a user exists",
        f"aioidentd: warning: {path}:7: [group.nosuchgroup-x] names no group of this host "
        f"(not in the group database): it does nothing until such a group exists",
    ]


def test_serve_warns_at_start_and_at_each_reload_once() -> None:
    with world_readable_dir("aioidentd-newcomer-") as directory:
        path = directory / "aioidentd.toml"
        path.write_text('[server]\nlisten = "127.0.0.1"\nport = 0\nworkers = 2\n\n' + UNKNOWN)
        with serve_process("--config", str(path)) as server:
            server.port  # noqa: B018  (serving)
            assert server.count(r"names no user of this host") == 1
            assert server.count(r"toml:12: \[group.nosuchgroup-x\] names no group") == 1
            server.proc.send_signal(signal.SIGHUP)
            wait_until(
                lambda: server.count("SIGHUP: configuration reloaded") == 2,
                within=15,
                what="both workers to reload",
            )
            # Said by the supervisor, not once per worker.
            assert server.count(r"SIGHUP: \S+toml:9: \[user.nosuchuser-x\] names no user") == 1
            assert server.count(r"names no user of this host") == 2
            assert server.stop() == 0
