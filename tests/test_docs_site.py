"""The documentation site builds with warnings as errors (mkdocs --strict), and holds what
it promises: the README's guides, the configuration reference, the recipes with the
example programs, and the API reference rendered from the docstrings. Its code examples
are the README's, docs/'s (type-checked by test_readme) and examples/'s (run by
tests/interop/test_examples.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from peers import unavailable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        unavailable("mkdocs or mkdocstrings is not installed (the 'test' extra)")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def test_the_guides_are_the_readmes_sections(site: Path) -> None:
    install = (site / "install.html").read_text()
    assert "sudo /opt/aioidentd/bin/pip install aioidentd" in install
    assert "IdentServer" in (site / "embedding.html").read_text()
    assert "aioidentd.query" in (site / "client.html").read_text()
    assert "check-config" in (site / "daemon.html").read_text()
    assert "max_connections" in (site / "config.html").read_text()
    assert "ProtectHome" in (site / "systemd.html").read_text()


def test_recipes_show_the_example_programs_whole(site: Path) -> None:
    recipes = (site / "recipes.html").read_text()
    for name in ("irc_bot.py", "bouncer.py", "sync_bot.py"):
        assert name in recipes
    assert "open_connection" in recipes


def test_api_reference_is_rendered_from_the_docstrings(site: Path) -> None:
    api = (site / "api.html").read_text()
    for name in ("IdentServer", "IdentServer.open_connection", "Controller", "query"):
        assert f'id="aioidentd.{name}"' in api, name
    assert 'id="aioidentd.protocol.parse_query"' in api
    assert ":class:<code>" not in api  # Sphinx roles shown as code
