"""What a newcomer's shell does to the commands (issue 20): an unset variable as the
configuration's name, a pipe closed by ``head``, run as the real command in a child
process."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import ENV, aioidentd_argv, run_aioidentd, serve_process

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
