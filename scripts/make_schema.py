"""Write the JSON Schema of the configuration file from the schema the validator uses.

Every key, its TOML type and its value rule come from :mod:`aioidentd.policy.settings`
(the dataclass fields and their :class:`~aioidentd.policy.settings.Key`); the descriptions
come from the tables of docs/config.md. A value rule this script does not know how to
express is an error, so a new rule cannot slip into the schema unchecked.
``tests/test_schema.py`` regenerates the file and compares it with the committed one.

Editors validate as users type: taplo (Even Better TOML) with a ``#:schema`` comment on
the first line of the file, or its ``[[schema]]`` settings.

    python scripts/make_schema.py [OUTFILE]     (default: schema/aioidentd.schema.json)
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any, get_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aioidentd import __version__  # noqa: E402
from aioidentd.policy import settings  # noqa: E402
from aioidentd.pseudonym import NETWORK_NAME  # noqa: E402

OUT = ROOT / "schema" / "aioidentd.schema.json"
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", dict: "object"}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_PORT_RANGE = {"type": "string", "pattern": r"^\s*\d{1,9}\s*(-\s*\d{1,9}\s*)?$"}
_ADDRESS = {"type": "string", "minLength": 1}
_TOKEN = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[!-+\\--9;-~]+$"}


def _one_or_many(item: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]}


def value_schema(name: str, spec: settings.Key) -> dict[str, Any]:
    """The JSON Schema of one key's value, from its TOML type and its rule."""
    check = spec.check
    qualname = getattr(check, "__qualname__", "")
    base: dict[str, Any] = {}
    if spec.toml is not None:
        base = {"type": _JSON_TYPES[spec.toml]}
    if check is settings._same:
        return base
    if check is settings._port:
        return {**base, "minimum": 0, "maximum": 65535}
    if check is settings._seconds:
        return {**base, "exclusiveMinimum": 0}
    if qualname == "_whole.<locals>.check":
        bounds = inspect.getclosurevars(check).nonlocals
        return {**base, "minimum": bounds["low"], "maximum": bounds["high"]}
    if qualname == "_choice.<locals>.check":
        return {**base, "enum": list(inspect.getclosurevars(check).nonlocals["choices"])}
    if check in (settings._not_empty, settings._path):
        return {**base, "minLength": 1}
    if check is settings._absolute:
        return {**base, "pattern": "^/"}
    if check is settings._named_networks:
        return {
            "type": "object",
            "propertyNames": {"pattern": f"^{NETWORK_NAME.pattern}$"},
            "additionalProperties": _one_or_many(_ADDRESS),
        }
    if check is settings._socket_path:
        return {**base, "pattern": "^/", "maxLength": 107}
    if check is settings._forward_port:
        return {**base, "minimum": 1, "maximum": 65535}
    if check is settings._nat_answer:
        return {**base, "enum": list(get_args(settings.NatAnswer))}
    if check in (settings._token, settings._charset):
        return {**base, **_TOKEN}
    if check in (settings._forward, settings._listen_address):
        return {**base, "pattern": r"^(\[[0-9A-Fa-f:.%]+\]|[0-9.]+):\d{1,5}$"}
    if check is settings._listen:
        return _one_or_many(_ADDRESS)
    if check is settings._port_ranges:
        return _one_or_many({"anyOf": [_PORT, _PORT_RANGE]})
    if check is settings._networks:
        return _one_or_many(_ADDRESS)
    if check in (settings._names, settings._groups):
        return _one_or_many(
            {"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer", "minimum": 0}]}
        )
    raise SystemExit(f"make_schema: no JSON Schema for the rule of {name!r} ({qualname})")


def descriptions() -> dict[str, dict[str, str]]:
    """``{section: {key: meaning}}`` from docs/config.md's tables, where the section is the
    one the heading names (``[server]``, ``[[rule]]``, ...; "answer" for the settings
    every answer table takes)."""
    found: dict[str, dict[str, str]] = {}
    section = ""
    for line in (ROOT / "docs" / "config.md").read_text().splitlines():
        if line.startswith("#"):
            match = re.search(r"`(\[\[?[a-z]+\]\]?)`", line)
            section = "answer" if "Answer settings" in line else (match.group(1) if match else "")
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not section or not line.startswith("|") or len(cells) < 2:
            continue
        key = re.fullmatch(r"`([a-z0-9_]+)`", cells[0])
        if key:
            meaning = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", cells[-1]).replace("`", "")
            found.setdefault(section, {})[key.group(1)] = meaning
    return found


def table_schema(cls: type, docs: dict[str, str], extra: type | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for cls_ in (cls,) if extra is None else (cls, extra):
        for name, _, spec in settings.keys_of(cls_):
            schema = value_schema(name, spec)
            if name in docs:
                schema = {"description": docs[name], **schema}
            properties[name] = schema
    return {"type": "object", "additionalProperties": False, "properties": properties}


def schema() -> dict[str, Any]:
    docs = descriptions()
    answer = table_schema(settings.AnswerSettings, docs.get("answer", {}))
    sections: dict[str, Any] = {
        "server": table_schema(settings.DaemonSettings, docs["[server]"]),
        "reply": table_schema(settings.ReplySettings, docs["[reply]"]),
        "metrics": table_schema(settings.MetricsSettings, docs["[metrics]"]),
        "pseudonym": table_schema(settings.PseudonymSettings, docs["[pseudonym]"]),
        "default": answer,
        "user": {"type": "object", "additionalProperties": answer},
        "group": {"type": "object", "additionalProperties": answer},
        "nat": {
            "type": "array",
            "items": table_schema(settings.NatRule, docs.get("[[nat]]", {})),
        },
        "rule": {
            "type": "array",
            "items": table_schema(
                settings.Rule,
                {**docs["[[rule]]"], **docs.get("answer", {})},
                settings.AnswerSettings,
            ),
        },
    }
    names = [name for name, _, _ in settings.keys_of(settings.Config)]
    assert sorted(names) == sorted(sections), (names, sorted(sections))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "aioidentd.schema.json",
        "title": f"aioidentd {__version__} configuration (/etc/aioidentd.toml)",
        "description": "Generated by scripts/make_schema.py from aioidentd.policy.settings "
        "and docs/config.md; see aioidentd.toml(5).",
        "type": "object",
        "additionalProperties": False,
        "properties": {name: sections[name] for name in names},
    }


def render() -> str:
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())


if __name__ == "__main__":
    main()
