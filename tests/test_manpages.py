"""The man pages are generated (scripts/make_manpages.py) from the argument parser and
docs/config.md: the committed pages must be what the generator writes now, so an option
or a configuration key added without regenerating them fails here; and they must render
without a warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from peers import require

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["aioidentd.8", "aioidentd.toml.5"]


def test_committed_man_pages_are_regenerated_ones(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_manpages.py"), str(tmp_path)],
        check=True,
        timeout=60,
    )
    for name in PAGES:
        assert (tmp_path / name).read_text() == (ROOT / "man" / name).read_text(), (
            f"man/{name} is stale: run 'make man'"
        )


def test_every_option_and_key_is_in_the_pages() -> None:
    from aioidentd.policy.settings import DaemonSettings, keys_of

    page8 = (ROOT / "man" / "aioidentd.8").read_text().replace("\\-", "-")
    for flag in ("--no-config", "--max-connections N", "--version", "--user-file PATH"):
        assert flag in page8, flag
    for section in ("SIGNALS", "EXIT STATUS", "FILES"):
        assert f".SH {section}" in page8
    page5 = (ROOT / "man" / "aioidentd.toml.5").read_text()
    for name, _, _ in keys_of(DaemonSettings):
        assert f".TP\n\\fB{name}\\fR" in page5, name


@pytest.mark.parametrize("name", PAGES)
def test_pages_render_without_warnings(name: str) -> None:
    groff = require("groff", "groff (package groff-base)")
    proc = subprocess.run(
        [groff, "-man", "-ww", "-z", str(ROOT / "man" / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
