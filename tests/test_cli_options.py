"""What every command offers an administrator: ``--version``, help for every option,
and the conventional configuration path (``/etc/aioidentd.toml``)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from aioidentd import __version__
from aioidentd.cli import _arguments, build_parser, main
from support import run_aioidentd

COMMANDS = ["serve", "query", "check-config", "explain", "resolve", "import-oidentd"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no sub-commands")


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_every_command_prints_the_version(command: list[str]) -> None:
    proc = run_aioidentd(*command, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"aioidentd {__version__}\n"
    # The one version: the installed metadata says what the package says.
    assert version("aioidentd") == __version__


def test_every_option_of_every_command_has_help() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert sorted(commands) == sorted(COMMANDS)
    for name, sub in [("aioidentd", parser), *commands.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            words = action.help or ""
            assert len(words) > 8 and words != argparse.SUPPRESS, (name, action.dest)


def test_help_points_to_installed_documentation() -> None:
    """The --config help names the man page and the default path, not a repository file."""
    proc = run_aioidentd("serve", "--help")
    text = " ".join(proc.stdout.split())
    assert "aioidentd.toml(5)" in text and "default /etc/aioidentd.toml when it exists" in text
    assert "docs/config.md" not in text


@pytest.fixture
def default_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``/etc/aioidentd.toml`` moved to a scratch file. ``serve`` configures logging
    (``basicConfig(force=True)`` on the captured stderr): the root logger is put back so
    that later tests' log capture is not disturbed."""
    path = tmp_path / "aioidentd.toml"
    monkeypatch.setattr(_arguments, "DEFAULT_CONFIG", str(path))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield path
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


def test_serve_reads_the_default_configuration_when_it_exists(
    default_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    default_config.write_text("[server]\nprot = 113\n")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert f"{default_config}:2: unknown key 'prot' in [server]" in err


def test_explain_reads_the_default_configuration_and_no_config_skips_it(
    default_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connection = ["127.0.0.1", "6667", "--local", "127.0.0.1:5000"]
    default_config.write_text("[default]\nanswer = 'usrname'\n")
    assert main(["explain", *connection]) == 2
    assert str(default_config) in capsys.readouterr().err
    # --no-config: the built-in policy; nobody owns this connection, so NO-USER (status 1).
    assert main(["explain", "--no-config", *connection]) == 1
    assert "ERROR:NO-USER" in capsys.readouterr().out
    # No file there at all: the built-in policy too.
    default_config.unlink()
    assert main(["explain", *connection]) == 1


def test_config_and_no_config_exclude_each_other() -> None:
    proc = run_aioidentd("serve", "--config", "x.toml", "--no-config")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
