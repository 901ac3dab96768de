"""Every Python example in README.md and docs/*.md is type-checked with ``mypy --strict``
against the package, so that an example using a renamed argument, a wrong port order
type or a removed name breaks the build instead of the reader's first try.

Most examples talk to real IRC servers (irc.example.net) and cannot run here; the
programs in ``examples/`` are run against real IRC servers by
``tests/interop/test_examples.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from peers import unavailable

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)


def python_blocks() -> list[tuple[str, int, str]]:
    """(document, first line, code) of every ```python block."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start(2)) + 1
            found.append((doc.name, line, textwrap.dedent(match.group(2))))
    return found


def test_readme_links_hold_on_the_package_index() -> None:
    """The README is also the package's description on the index, where a relative link
    (``docs/config.md``) points nowhere; the docs site links those names itself."""
    text = (ROOT / "README.md").read_text()
    relative = [
        target
        for target in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", text)
        if not re.match(r"[a-z]+:", target)
    ]
    assert relative == []


def test_readme_has_python_examples() -> None:
    names = [name for name, _, _ in python_blocks()]
    assert names.count("README.md") >= 5


def test_every_python_example_type_checks(tmp_path: Path) -> None:
    try:
        import mypy  # noqa: F401
    except ImportError:
        unavailable("mypy is not installed (the 'test' extra)")
    files = {}
    for number, (doc, line, code) in enumerate(python_blocks()):
        path = tmp_path / f"example_{number:02d}.py"
        path.write_text(code)
        files[path.name] = f"{doc}:{line}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            *sorted(str(tmp_path / name) for name in files),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Point each error at its document and line: example_03.py:5 -> README.md:(first+4).
    report = proc.stdout
    for name, where in files.items():
        doc, first = where.split(":")

        def in_doc(match: re.Match[str], doc: str = doc, first: int = int(first)) -> str:
            return f"{doc}:{first + int(match.group(1)) - 1}"

        report = re.sub(rf"\S*{name}:(\d+)", in_doc, report)
    assert proc.returncode == 0, report + proc.stderr
