"""The sdist is complete for a packager: every file of the repository is in it (docs,
examples, man pages, schema, the whole test suite with its helpers), its tests can be
collected and run from the unpacked tree, and its metadata says which Pythons it is for."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from peers import unavailable

ROOT = Path(__file__).resolve().parents[1]
#: The Python versions CI runs the tests on (make test-pythons): the classifiers must list
#: exactly these.
TESTED_PYTHONS = ["3.11", "3.12", "3.13"]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        import build  # noqa: F401
    except ImportError:
        unavailable("the 'build' package is not installed (the 'test' extra)")
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (archive,) = out.glob("aioidentd-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out / "unpacked", filter="data")
    (tree,) = (out / "unpacked").iterdir()
    return tree


def tracked_files() -> list[str]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        unavailable("not a git checkout: the list of the repository's files is unknown")
    listed = subprocess.run(
        [git, "-C", str(ROOT), "ls-files"], check=True, capture_output=True, text=True
    ).stdout.split()
    return [name for name in listed if name != ".gitignore" and (ROOT / name).exists()]


def test_every_file_of_the_repository_is_in_the_sdist(sdist: Path) -> None:
    missing = [name for name in tracked_files() if not (sdist / name).is_file()]
    assert not missing, missing


def test_the_tests_collect_and_run_from_the_unpacked_sdist(sdist: Path) -> None:
    def collected(tree: Path) -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
            cwd=tree,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return [line for line in proc.stdout.splitlines() if "::" in line]

    assert collected(sdist) == collected(ROOT)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("tests/test_protocol.py", "tests/test_config.py"),
        ],
        cwd=sdist,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r"\d+ passed", proc.stdout)


def test_a_wheel_built_from_the_sdist_carries_units_man_pages_and_schema(
    sdist: Path, tmp_path: Path
) -> None:
    """The packager's path (sdist, then wheel) gives the administrator's files too."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(sdist)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("aioidentd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    data = f"aioidentd-{sdist.name.split('-', 1)[1]}.data/data/share/"
    expected = [
        "aioidentd/aioidentd.toml",
        "aioidentd/aioidentd.schema.json",
        "aioidentd/systemd/aioidentd.service",
        "aioidentd/systemd/aioidentd.socket",
        "aioidentd/systemd/aioidentd-inetd@.service",
        "aioidentd/systemd/aioidentd-inetd.socket",
        "man/man8/aioidentd.8",
        "man/man5/aioidentd.toml.5",
    ]
    missing = [name for name in expected if data + name not in names]
    assert not missing, (missing, sorted(names))


def test_metadata_names_the_tested_pythons(sdist: Path) -> None:
    meta = email.message_from_string((sdist / "PKG-INFO").read_text())
    versions = sorted(
        value.rsplit(":: ", 1)[1]
        for value in meta.get_all("Classifier") or []
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", value)
    )
    assert versions == TESTED_PYTHONS
    assert meta["Requires-Python"] == ">=3.11"
