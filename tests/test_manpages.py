"""The man pages are generated (scripts/make_manpages.py) from the argument parser and
docs/config.md: the committed pages must be what the generator writes now, so an option
or a configuration key added without regenerating them fails here; and they must render
without a warning, from groff and from mandoc's checker."""

from __future__ import annotations

import email.utils
import re
import shlex
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
    for section in ("SIGNALS", "EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"):
        assert f".SH {section}" in page8
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "JOURNAL_STREAM"):
        assert variable in page8, variable
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


@pytest.mark.parametrize("name", PAGES)
def test_pages_pass_mandoc_lint(name: str) -> None:
    """mandoc's checker at its strictest useful level (style: also long input lines and
    a missing date), with nothing allowed."""
    mandoc = require("mandoc", "mandoc (package mandoc)")
    proc = subprocess.run(
        [mandoc, "-Tlint", "-W", "style", str(ROOT / "man" / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout + proc.stderr == "" and proc.returncode == 0, proc.stdout + proc.stderr


def _release_date() -> str:
    """debian/changelog's date for this version, which a release writes (CHANGELOG.md's
    heading has none until then)."""
    from aioidentd import __version__

    heading = re.search(
        rf"^## \[{re.escape(__version__)}\] - (\d{{4}}-\d\d-\d\d)$",
        (ROOT / "CHANGELOG.md").read_text(),
        re.M,
    )
    if heading:
        return heading.group(1)
    entry = re.search(
        rf"^aioidentd \({re.escape(__version__)}-[^)]*\).*?^ -- .*?>  (.+)$",
        (ROOT / "debian" / "changelog").read_text(),
        re.M | re.S,
    )
    assert entry, f"debian/changelog has no entry for {__version__}"
    return email.utils.parsedate_to_datetime(entry.group(1)).date().isoformat()


@pytest.mark.parametrize("name", PAGES)
def test_pages_carry_the_release_date(name: str) -> None:
    th = next(
        line for line in (ROOT / "man" / name).read_text().splitlines() if line.startswith(".TH")
    )
    assert shlex.split(th)[3] == _release_date(), th


def _section(page: str, name: str) -> str:
    match = re.search(rf"^\.SH {name}\n(.*?)^\.SH ", page, re.M | re.S)
    assert match, name
    return match.group(1)


def _unroff(text: str) -> str:
    return text.replace("\\\n", "").replace("\\-", "-").replace("\\e", "\\")


def test_examples_are_command_lines_the_parser_takes() -> None:
    """Every command in aioidentd(8)'s EXAMPLES, as shown, is one the argument parser
    accepts (an option renamed or removed fails here)."""
    from aioidentd.cli import build_parser

    examples = _unroff(_section((ROOT / "man" / "aioidentd.8").read_text(), "EXAMPLES"))
    commands = [line[2:] for line in examples.splitlines() if line.startswith(("$ ", "# "))]
    assert {shlex.split(command)[1] for command in commands} >= {
        "serve",
        "query",
        "check-config",
        "explain",
        "resolve",
        "import-oidentd",
    }
    for command in commands:
        argv = shlex.split(command)
        if ">" in argv:
            argv = argv[: argv.index(">")]
        assert argv[0] == "aioidentd", command
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exc:
            pytest.fail(f"the parser refuses an example: {command} (exit {exc.code})")


def test_config_page_is_for_an_installed_system() -> None:
    """aioidentd.toml(5) is read where the package is installed: no Python of the docs
    site's, no repository paths or make targets, headings whose file names and tables
    keep their case, and the files it is about."""
    page = (ROOT / "man" / "aioidentd.toml.5").read_text()
    shown = [line for line in page.splitlines() if not line.startswith('.\\"')]  # not comments
    text = _unroff("\n".join(shown))
    assert "import " not in text and "asyncio" not in text
    assert not re.findall(r"(?<![/\w])(?:examples|src|docs|schema|scripts|tests)/\w", text)
    assert not re.findall(r"\bmake (?:schema|man|deb|dist|run|test|docs)\b", text)
    headings = [line for line in text.splitlines() if line.startswith(".SH ")]
    for literal in ("[server]", "[metrics]", "[pseudonym]", "[[nat]]", "~/.aioidentd-reply"):
        assert any(literal in heading for heading in headings), literal
    assert not [
        heading for heading in headings if re.search(r"\[SERVER\]|AIOIDENTD-REPLY", heading)
    ]
    files = _section(page, "FILES")
    for path in (
        "/etc/aioidentd.toml",
        "~/.aioidentd\\-reply",
        "~/.oidentd.conf",
        "/var/lib/aioidentd/pseudonym.key",
        "/run/aioidentd/claims.sock",
        "/usr/share/doc/aioidentd/examples/aioidentd.toml",
        "/usr/share/aioidentd/aioidentd.schema.json",
    ):
        assert f"\\fI{path}\\fR" in files, path
