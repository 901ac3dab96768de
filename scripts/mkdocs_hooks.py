"""mkdocs hooks: the guides are the README's sections, cut into pages at build time.

The README is the one text of the embedding guide, the client, the host identd and the
install; copying them into docs/ would let the site and the README drift. This hook makes
those pages from README.md when the site is built, the recipes page from examples/ (each
program shown whole, as CI runs it), and turns links that point outside the site (to
examples/ or to the repository's files) into plain text or into the page that holds them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]

#: Page -> the README's ``## `` headings (their start) that make it; "" is the preamble.
SECTIONS = {
    "index.md": ["", "What ident is"],
    "install.md": ["Install"],
    "embedding.md": ["The embedded server"],
    "client.md": ["The client"],
    "daemon.md": ["The host identd"],
    "project.md": ["Tested against real peers", "Speed", "Development"],
}
EXAMPLES = ["irc_bot.py", "bouncer.py", "sync_bot.py"]


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
    if name != "index.md":
        # The first heading becomes the page title.
        text = re.sub(r"^## ", "# ", text, count=1, flags=re.M)
    return text


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
    return files


_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Links to the repository's files: docs/X.md -> X.md, examples/*.py -> the recipes,
    anything else outside the site -> its text."""

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

    return _LINK.sub(fix, markdown)


_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):(?=<code>)")


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """The docstrings' Sphinx roles (:class:`X`) shown as plain code, not as ':class:X'."""
    return _ROLE.sub("", html)
