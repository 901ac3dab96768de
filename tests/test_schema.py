"""The JSON Schema of the configuration (schema/aioidentd.schema.json, for editors such as
taplo) is generated from the validator's own definitions by scripts/make_schema.py: the
committed file must be what the script writes now, it must accept the shipped example, and
it must refuse what the loader refuses for the reasons a schema can see (unknown keys,
wrong types, values out of range)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from aioidentd.errors import ConfigError
from aioidentd.policy import parse_config
from peers import unavailable

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schema" / "aioidentd.schema.json"


def validator() -> Any:
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        unavailable("jsonschema is not installed (the 'test' extra)")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_the_generated_one(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_schema.py"), str(out)], check=True, timeout=60
    )
    assert out.read_text() == SCHEMA.read_text(), "schema is stale: run 'make schema'"


def test_the_examples_are_valid() -> None:
    check = validator()
    example = (ROOT / "examples" / "aioidentd.toml").read_text()
    check.validate(tomllib.loads(example))
    docs = (ROOT / "docs" / "config.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", docs, re.S)
    assert blocks
    for block in blocks:
        data = tomllib.loads(block)
        parse_config(block, "docs")  # the loader takes it ...
        assert not list(check.iter_errors(data)), block  # ... and so does the schema


@pytest.mark.parametrize(
    "text",
    [
        "[server]\nprot = 113\n",
        "[sever]\nport = 113\n",
        "[server]\nport = 70000\n",
        "[server]\nport = '113'\n",
        "[server]\nmax_connections = 0\n",
        "[server]\nidle_timeout = 0\n",
        "[server]\nreply_style = 'compacted'\n",
        "[default]\nanswer = 'usrname'\n",
        "[user.alice]\nrepy = 'x'\n",
        "[[rule]]\nremote_port = 'ircd'\nanswer = 'random'\n",
        "[[rule]]\nremote_port = 6667\nanswr = 'random'\n",
        "[reply]\nopsys = 'UN:IX'\n",
        "[metrics]\nlisten = 'localhost'\n",
    ],
)
def test_schema_refuses_what_the_loader_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(text, "x.toml")
    assert list(validator().iter_errors(tomllib.loads(text))), text
