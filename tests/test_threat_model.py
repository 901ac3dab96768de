"""docs/threat-model.md names, for each line, the tests that hold it: each named test
must exist, so that the model cannot silently outlive the tests that follow it."""

from __future__ import annotations

import re
from pathlib import Path

from aioidentd.protocol import SENDABLE_CHARSETS

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "docs" / "threat-model.md"


def test_every_test_the_threat_model_names_exists() -> None:
    named = re.findall(r"`((?:interop/)?test_\w+\.py)::(test_\w+)`", MODEL.read_text())
    assert len(named) >= 30
    missing = [
        f"{path}::{test}"
        for path, test in named
        if not re.search(rf"^(async )?def {test}\(", (ROOT / "tests" / path).read_text(), re.M)
    ]
    assert missing == []


def test_the_threat_model_lists_every_charset_that_is_sent() -> None:
    rows = re.findall(r"^\| (US-ASCII|UTF-8|ISO-8859-\d+) \|", MODEL.read_text(), re.M)
    names = {"US-ASCII": "ascii", "UTF-8": "utf-8"}
    assert {names.get(row, row.lower().replace("iso-", "iso")) for row in rows} == SENDABLE_CHARSETS
