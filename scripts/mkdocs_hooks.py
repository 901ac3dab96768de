"""mkdocs hooks: the guides are the README's sections, cut into pages at build time.

The README is the one text of the embedding guide, the client, the host identd and the
install; copying them into docs/ would let the site and the README drift. This hook makes
those pages from README.md when the site is built, the recipes page from examples/ (each
program shown whole, as CI runs it), and turns links that point outside the site (to
examples/ or to the repository's files) into plain text or into the page that holds them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from pygments.formatters import HtmlFormatter  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]

#: Page -> the README's ``## `` headings (their start) that make it; "" is the preamble.
SECTIONS = {
    "index.md": ["", "Quick start"],
    "install.md": ["Install"],
    "embedding.md": ["The embedded server"],
    "client.md": ["The client"],
    "daemon.md": ["The host identd"],
    "project.md": ["Tested against real peers", "Speed", "Development"],
}
EXAMPLES = ["irc_bot.py", "bouncer.py", "sync_bot.py", "irc_jaraco.py", "irc_pydle.py"]


def readme_sections() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    parts = re.split(r"^(?=## )", text, flags=re.M)
    sections = {"": parts[0]}
    for part in parts[1:]:
        sections[part.splitlines()[0].removeprefix("## ").strip()] = part
    return sections


def page_text(name: str, sections: dict[str, str]) -> str:
    chosen = []
    for start in SECTIONS[name]:
        matches = [title for title in sections if title.startswith(start)] if start else [""]
        if len(matches) != 1:
            raise SystemExit(f"mkdocs_hooks: README has no single section {start!r}")
        chosen.append(sections[matches[0]])
    text = "\n".join(chosen)
    if len(chosen) == 1:
        # One section: its heading becomes the page title and every heading under it
        # moves up a level, so that the page's outline (the sidebar) has no gap.
        text = outside_code(text, lambda part: _HEADING.sub(lambda m: m.group(1)[1:] + " ", part))
    elif name != "index.md":
        text = f"# {NAV_TITLES[name]}\n\n{text}"
    return text


#: The title of a page made of several README sections (each stays a ``##``).
NAV_TITLES = {"project.md": "Tests, speed, development"}
_HEADING = re.compile(r"^(#{2,6}) ", re.M)
_FENCE = re.compile(r"^( *)(```|~~~).*?^\1\2[ \t]*$", re.S | re.M)


def outside_code(text: str, change: Callable[[str], str]) -> str:
    """``change`` applied to the Markdown between fenced code blocks, not inside them."""
    out, start = [], 0
    for match in _FENCE.finditer(text):
        out += [change(text[start : match.start()]), match.group(0)]
        start = match.end()
    return "".join([*out, change(text[start:])])


def recipes() -> str:
    lines = [
        "# Recipes",
        "",
        "Whole programs from `examples/`. Each runs against a real IRC server (ngircd) in a",
        "network namespace in CI (`tests/interop/test_examples.py`).",
        "",
        "- IRC bots and bouncers: below.",
        "- systemd: [the units and their sandbox](systemd.md).",
        "- Port 113 without root, and NAT: [port 113](embedding.md#port-113) (an nftables or",
        "  iptables redirect; the server reads the query's original address).",
        "- Forwarding the host identd to an application's server:",
        "  [forwarding](config.md#forwarding-to-an-applications-identd).",
        "",
    ]
    for name in EXAMPLES:
        source = (ROOT / "examples" / name).read_text()
        doc = re.match(r'"""(.*?)"""', source, re.S)
        lines += [f"## `{name}`", ""]
        if doc:
            lines += [doc.group(1).strip(), ""]
        lines += ["```python", source.rstrip(), "```", ""]
    return "\n".join(lines)


def on_files(files: Files, config: Any) -> Files:
    sections = readme_sections()
    for name in SECTIONS:
        files.append(File.generated(config, name, content=page_text(name, sections)))
    files.append(File.generated(config, "recipes.md", content=recipes()))
    # The code highlighting's style sheet, served by the site itself (no third party).
    css = HtmlFormatter().get_style_defs(".highlight")
    files.append(File.generated(config, "css/pygments.css", content=css))
    return files


_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
#: A code span naming a file of the repository (the README cannot link to them: its
#: relative links break on the package index) or a name of the public API.
_SPAN = re.compile(r"(?<![\[`])`([^`\n]+)`(?![\]`])")
_PUBLIC = re.compile(r"(?:aioidentd\.)?([A-Za-z_][A-Za-z0-9_]*)(?:\(\))?")


def public_names() -> frozenset[str]:
    import aioidentd

    return frozenset(aioidentd.__all__) - {"__version__"}


def linked_span(span: str, files: Files, public: frozenset[str]) -> str | None:
    """The link a code span becomes on the site, if any: ``docs/config.md`` to that
    page, ``examples/bot.py`` to the recipes, ``aioidentd.query()`` and ``IdentServer``
    (a public name written out) to its entry in the API reference."""
    if span.startswith("docs/") and span.endswith(".md"):
        page = span.removeprefix("docs/")
        return f"[`{span}`]({page})" if files.get_file_from_path(page) else None
    if span.startswith("examples/") and span.endswith(".py"):
        return f"[`{span}`](recipes.md)"
    match = _PUBLIC.fullmatch(span)
    if match is None or match.group(1) not in public:
        return None
    name = match.group(1)
    if not (span.startswith("aioidentd.") or name[0].isupper()):
        return None  # a bare `query` or `serving` may be a word, not the function
    return f"[`{span}`][aioidentd.{name}]"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Links to the repository's files: docs/X.md -> X.md, examples/*.py -> the recipes,
    anything else outside the site -> its text; code spans naming such a file or a public
    name become links (to the page, or into the API reference)."""

    def fix(match: re.Match[str]) -> str:
        text, target = match.group(1), match.group(2)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return match.group(0)
        path, _, anchor = target.partition("#")
        path = path.removeprefix("../").removeprefix("docs/")
        if path.endswith(".md") and files.get_file_from_path(path) is not None:
            return f"[{text}]({path}{'#' + anchor if anchor else ''})"
        if path.startswith("examples/") and path.endswith(".py"):
            return f"[{text}](recipes.md)"
        return text

    public = public_names() if page.file.src_uri != "api.md" else frozenset()

    def spans(part: str) -> str:
        part = _LINK.sub(fix, part)
        return _SPAN.sub(lambda m: linked_span(m.group(1), files, public) or m.group(0), part)

    return outside_code(markdown, spans)


_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):<code>(~?)([^<]*)</code>")
_CODE = re.compile(r"<(pre|code)\b.*?</\1>", re.S)


def stray_fences(html: str) -> list[str]:
    """Code fences that Markdown did not take for one (a fence indented wrongly under a
    list item becomes a paragraph: its backticks shown, or read as one inline code span
    that starts with the fence's language and a line break): the text around each."""
    found = [m.group(0)[:80] for m in _FENCE_AS_SPAN.finditer(html)]
    prose = _CODE.sub("", html)
    found += [prose[max(0, m.start() - 40) : m.end() + 40] for m in re.finditer("```", prose)]
    return found


_FENCE_AS_SPAN = re.compile(r"<p><code>[\w+-]*\n[^<]*")


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """The docstrings' Sphinx roles (:class:`X`) shown as plain code, not as ':class:X';
    a page with a code fence rendered as text fails the build (--strict does not see it)."""
    stray = stray_fences(html)
    if stray:
        raise PluginError(f"{page.file.src_uri}: a code fence rendered as text: {stray[0]!r}")
    return _ROLE.sub(_role_as_code, html)


def _role_as_code(match: re.Match[str]) -> str:
    """A Sphinx role's target as code; ``~a.b.C`` shown as ``C``, as Sphinx shows it."""
    tilde, target = match.group(1), match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"
