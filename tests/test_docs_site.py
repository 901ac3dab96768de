"""The documentation site builds with warnings as errors (mkdocs --strict), and holds what
it promises: the README's guides, the configuration reference, the recipes with the
example programs, and the API reference rendered from the docstrings. Its code examples
are the README's, docs/'s (type-checked by test_readme) and examples/'s (run by
tests/interop/test_examples.py)."""

from __future__ import annotations

import html
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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
    def page(name: str) -> str:
        return text_of((site / name).read_text())

    assert "/opt/aioidentd/bin/pip install ." in page("install.html")
    assert "make run" in page("index.html")
    assert "IdentServer" in page("embedding.html")
    assert "aioidentd.query" in page("client.html")
    assert "check-config" in page("daemon.html")
    assert "max_connections" in page("config.html")
    assert "ProtectHome" in page("systemd.html")
    # The benchmark figures and their method live on the site, not the README.
    assert "Method" in page("speed.html") and "oidentd" in page("speed.html")


def test_recipes_show_the_example_programs_whole(site: Path) -> None:
    recipes = (site / "recipes.html").read_text()
    for name in ("irc_bot.py", "bouncer.py", "sync_bot.py", "irc_jaraco.py", "irc_pydle.py"):
        assert name in recipes
    assert "open_connection" in recipes


def test_api_reference_is_rendered_from_the_docstrings(site: Path) -> None:
    api = (site / "api.html").read_text()
    for name in ("IdentServer", "IdentServer.open_connection", "Controller", "query"):
        assert f'id="aioidentd.{name}"' in api, name
    assert 'id="aioidentd.protocol.parse_query"' in api
    assert ":class:<code>" not in api  # Sphinx roles shown as code


def text_of(page: str) -> str:
    """A page's text as a reader sees it (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_the_reference_shows_signatures_with_types(site: Path) -> None:
    api = text_of((site / "api.html").read_text())
    # The constructors' keyword arguments, with their types and defaults, on the class.
    for signature in (
        'IdentServer(\n    host: str | Sequence[str] | None = "127.0.0.1",\n    port: int = 113,',
        "    multiple: bool = False,\n    idle_timeout: float = 60.0,",
        "Controller(\n    server: IdentServer,",
        "HostClaims(\n    path: str = DEFAULT_CLAIMS_SOCKET,",
        ") -> Reply",
    ):
        assert signature in api, signature
    # A default named by a constant resolves to its value.
    assert "IDENT_PORT = 113" in api


def test_the_guides_link_into_the_reference(site: Path) -> None:
    embedding = (site / "embedding.html").read_text()
    assert 'href="api.html#aioidentd.IdentServer"' in embedding
    assert 'href="api.html#aioidentd.Controller"' in embedding
    assert 'href="api.html#aioidentd.IdentError"' in (site / "client.html").read_text()
    assert 'href="config.html"' in (site / "daemon.html").read_text()


def test_the_embedding_guide_renders_its_code_and_outline(site: Path) -> None:
    page = (site / "embedding.html").read_text()
    # The claim-after-connecting example sits in a list item: a code block, not text.
    assert "```" not in text_of(re.sub(r"<pre\b.*?</pre>", "", page, flags=re.S))
    blocks = [text_of(block) for block in re.findall(r"<pre\b.*?</pre>", page, flags=re.S)]
    assert any("async def connect_then_claim" in block for block in blocks)
    # One h1, the sections under it as h2: in the sidebar.
    assert len(re.findall(r"<h1[ >]", page)) == 1
    for title in ("In a thread", "Port 113"):
        assert re.search(rf"<h2 id=[^>]*>{title}", page), title
        assert re.search(rf'<a href="#[^"]*"[^>]*>{title}', page), f"{title} not in the sidebar"


def test_the_site_makes_no_third_party_request(site: Path) -> None:
    for page in site.rglob("*.html"):
        text = page.read_text()
        remote = re.findall(
            r"""<(?:script|link|img)\b[^>]*(?:src|href)=["']((?:https?:)?//[^"']+)""", text
        )
        assert not remote, (page.name, remote)
    # Code is highlighted when the site is built, with the site's own style sheet.
    assert 'class="highlight"' in (site / "embedding.html").read_text()
    assert ".highlight .k" in (site / "css" / "pygments.css").read_text()


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_fence_rendered_as_text_fails_the_build() -> None:
    import markdown  # type: ignore[import-untyped]

    # What the embedding guide once rendered: a fence under a list item, which plain
    # Markdown does not nest, becomes a paragraph starting with three backticks.
    source = "- a list item\n\n  ```python\n  import asyncio\n  ```\n"
    broken = markdown.markdown(source, extensions=["fenced_code"])
    assert hooks().stray_fences(broken)
    fine = markdown.markdown(source, extensions=["pymdownx.superfences"])
    assert not hooks().stray_fences(fine)
    assert not hooks().stray_fences("<pre><code>```python\n</code></pre><p><code>```</code></p>")


def docstring_table(api: str, name: str, title: str) -> list[str]:
    """The first cell of each row of ``title``'s table ("Parameters:", "Raises:") in the
    entry of ``name`` itself, not in its members' entries."""
    start = api.index(f'id="{name}"')
    end = api.find('id="aioidentd.', start + 1)
    entry = api[start : end if end > 0 else len(api)]
    found = re.search(
        rf'<span class="doc-section-title">{re.escape(title)}</span>.*?<tbody>(.*?)</tbody>',
        entry,
        re.S,
    )
    assert found, f"{name} has no {title} table"
    return [
        text_of(cell).strip()
        for cell in re.findall(r"<tr\b[^>]*>\s*<td>(.*?)</td>", found.group(1), re.S)
    ]


def test_the_reference_has_parameters_returns_and_raises(site: Path) -> None:
    """The constructors' and main functions' arguments are a table, each with its type,
    default and meaning, not prose; what they return and raise too."""
    api = (site / "api.html").read_text()
    import inspect

    from aioidentd import IdentServer

    server = docstring_table(api, "aioidentd.IdentServer", "Parameters:")
    assert "claim_wait" in server and "multiple" in server
    # Every keyword argument has its row: one added without a word fails here.
    assert server == list(inspect.signature(IdentServer).parameters), server
    assert "ValueError" in docstring_table(api, "aioidentd.IdentServer", "Raises:")
    assert "server" in docstring_table(api, "aioidentd.Controller", "Parameters:")
    assert "OSError" in docstring_table(api, "aioidentd.Controller.start", "Raises:")
    assert docstring_table(api, "aioidentd.HostClaims", "Parameters:") == ["path", "timeout"]
    assert "HostClaimError" in docstring_table(api, "aioidentd.HostClaims.claim", "Raises:")
    assert "local_addr" in docstring_table(api, "aioidentd.query", "Parameters:")
    assert docstring_table(api, "aioidentd.query", "Returns:") == ["Reply"]
    raised = docstring_table(api, "aioidentd.query", "Raises:")
    assert {"IdentConnectError", "IdentTimeout", "IdentPortMismatch"} <= set(raised), raised
    # Sphinx's ~ (show the last name) is honoured, not printed.
    assert "<code>~" not in api
