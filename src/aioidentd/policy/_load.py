"""Reading a configuration file: parsed once, validated completely, then frozen.

An administrator who swaps oidentd for aioidentd edits this file rarely and under
pressure, so every mistake is reported with the file name, the line and, for a misspelt
key or value, the closest valid spelling. Nothing is silently ignored: an unknown key is
an error, because a misspelt ``hidden`` that falls back to ``username`` leaks names.

What a key may hold is the schema's business (:mod:`.settings`); this module walks the
document section by section, applies each key's rule and turns a refusal into a
``file:line: message`` error (:mod:`._toml_lines` finds the line). Only the rules that
tie keys together live here: ``reply`` needs ``answer = "fixed"`` and is encoded by the
``[reply]`` charset, a rule needs a condition, two rules must not be the same.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, cast

from aioidentd.errors import ConfigError
from aioidentd.policy._toml_lines import Locator, Path
from aioidentd.policy.settings import (
    TOML_TYPES,
    AnswerSettings,
    Config,
    DaemonSettings,
    ForwardTarget,
    MetricsSettings,
    NatRule,
    PseudonymSettings,
    ReplySettings,
    Rule,
    keys_of,
    suggest,
    type_name,
    user_key,
)
from aioidentd.protocol import safe_user_id

__all__ = ["load_config", "parse_config"]

#: The byte order mark, as it reads once a UTF-8 file is decoded.
BOM = "\ufeff"

_TOP_KEYS = tuple(name for name, _, _ in keys_of(Config))
_SETTINGS_KEYS = tuple(name for name, _, _ in keys_of(AnswerSettings))
_CONDITION_KEYS = tuple(name for name, _, _ in keys_of(Rule))
_NAT_KEYS = tuple(name for name, _, _ in keys_of(NatRule))


def show(path: Path) -> str:
    """How a path reads in a message: ``[user.alice]``, ``[[rule]] #2``, ``[server] port``."""
    if not path:
        return "the top level"
    if path[0] in ("rule", "nat") and len(path) >= 2 and isinstance(path[1], int):
        head = f"[[{path[0]}]] #{path[1] + 1}"
        return head if len(path) == 2 else f"'{'.'.join(map(str, path[2:]))}' in {head}"
    return f"[{'.'.join(map(str, path))}]"


class _Loader:
    """Turns the parsed document into a :class:`Config`, raising the first error found."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.locator = Locator(text)
        self.daemon = DaemonSettings()

    def error(self, path: Path, message: str) -> ConfigError:
        return ConfigError(self.filename, self.locator.line_of(path), message)

    # -- what every section needs

    def table(self, value: object, path: Path) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"{show(path)} must be a table, not {type_name(value)}")
        return cast(dict[str, Any], value)

    def known_keys(self, table: Mapping[str, Any], path: Path, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for name in table:
            if name not in allowed:
                raise self.error(
                    (*path, name), f"unknown key '{name}' in {show(path)}{suggest(name, allowed)}"
                )

    def keys(self, cls: type, table: Mapping[str, Any], path: Path) -> dict[str, Any]:
        """The fields of ``cls`` that ``table`` sets, each read by its schema rule."""
        values: dict[str, Any] = {}
        for name, attribute, spec in keys_of(cls):
            if name not in table:
                continue
            value = table[name]
            where = f"'{name}' in {show(path)}"
            if spec.toml is not None and not _is(value, spec.toml):
                raise self.error(
                    (*path, name),
                    f"{where} must be {TOML_TYPES[spec.toml]}, not {type_name(value)}",
                )
            try:
                values[attribute] = spec.check(where, value)
            except ValueError as exc:
                raise self.error((*path, name), str(exc)) from None
        return values

    # -- sections

    def config(self, document: dict[str, Any]) -> Config:
        self.known_keys(document, (), _TOP_KEYS)
        daemon = self.daemon = DaemonSettings(**self.section(DaemonSettings, document, "server"))
        reply = ReplySettings(**self.section(ReplySettings, document, "reply"))
        metrics = MetricsSettings(**self.section(MetricsSettings, document, "metrics"))
        pseudonym = PseudonymSettings(**self.section(PseudonymSettings, document, "pseudonym"))
        default = self.settings(
            self.table(document.get("default", {}), ("default",)), ("default",), reply
        )
        users: dict[str | int, AnswerSettings] = {}
        for name, value in self.table(document.get("user", {}), ("user",)).items():
            path: Path = ("user", name)
            try:
                user = user_key(show(path), name)
            except ValueError as exc:
                raise self.error(path, str(exc)) from None
            if user in users or (user in ("root", 0) and ({"root", 0} & users.keys())):
                raise self.error(path, f"{show(path)} names a user already configured")
            users[user] = self.settings(self.table(value, path), path, reply)
        groups: dict[str, AnswerSettings] = {}
        for name, value in self.table(document.get("group", {}), ("group",)).items():
            path = ("group", name)
            groups[name] = self.settings(self.table(value, path), path, reply)
        rules_value = document.get("rule", [])
        if not isinstance(rules_value, list):
            raise self.error(("rule",), "'rule' must be written as [[rule]] tables")
        rules: list[Rule] = []
        for index, value in enumerate(rules_value):
            rules.append(self.rule(value, index, reply, rules))
        nat_value = document.get("nat", [])
        if not isinstance(nat_value, list):
            raise self.error(("nat",), "'nat' must be written as [[nat]] tables")
        nat = tuple(self.nat(value, index, reply) for index, value in enumerate(nat_value))
        tables = [default, *users.values(), *groups.values(), *(r.settings for r in rules)]
        if any(table.forward for table in tables):
            self.forward_time(document)
        return Config(
            filename=self.filename,
            daemon=daemon,
            reply=reply,
            metrics=metrics,
            pseudonym=pseudonym,
            default=default,
            users=MappingProxyType(users),
            groups=MappingProxyType(groups),
            rules=tuple(rules),
            nat=nat,
            lines=MappingProxyType(dict(self.locator.lines)),
        )

    def forward_time(self, document: dict[str, Any]) -> None:
        """A failed forward must leave time for the policy's own answer."""
        daemon = self.daemon
        if daemon.forward_timeout < daemon.response_timeout:
            return
        server = document.get("server", {})
        name = "forward_timeout" if "forward_timeout" in server else "response_timeout"
        raise self.error(
            ("server", name),
            f"forward_timeout ({daemon.forward_timeout:g} s) must be less than "
            f"response_timeout ({daemon.response_timeout:g} s): the policy's own answer "
            f"must still go out in time when a forward fails",
        )

    def section(self, cls: type, document: Mapping[str, Any], name: str) -> dict[str, Any]:
        path: Path = (name,)
        table = self.table(document.get(name, {}), path)
        self.known_keys(table, path, (key for key, _, _ in keys_of(cls)))
        return self.keys(cls, table, path)

    def settings(
        self,
        table: dict[str, Any],
        path: Path,
        reply: ReplySettings,
        allowed: Iterable[str] = _SETTINGS_KEYS,
    ) -> AnswerSettings:
        self.known_keys(table, path, allowed)
        values = self.keys(AnswerSettings, table, path)
        values["source"] = show(path)
        values["line"] = self.locator.line_of(path)
        if "reply" in values:
            if values.get("answer") != "fixed":
                raise self.error(
                    (*path, "reply"), f"'reply' in {show(path)} needs answer = \"fixed\""
                )
            try:
                safe_user_id(values["reply"], reply.charset)
            except ValueError as exc:
                raise self.error((*path, "reply"), f"'reply' in {show(path)}: {exc}") from None
        elif values.get("answer") == "fixed":
            raise self.error(
                (*path, "answer"),
                f'answer = "fixed" in {show(path)} needs reply = "..." (the id to send)',
            )
        self.forward(values, path)
        return AnswerSettings(**values)

    def forward(self, values: dict[str, Any], path: Path) -> None:
        """``forward`` goes with ``answer = "forward"`` (and ``forward_proxy`` with it),
        and must not name this daemon itself."""
        forwarding = values.get("answer") == "forward"
        if "forward" in values and not forwarding:
            raise self.error(
                (*path, "forward"), f"'forward' in {show(path)} needs answer = \"forward\""
            )
        if forwarding and "forward" not in values:
            raise self.error(
                (*path, "answer"),
                f'answer = "forward" in {show(path)} needs forward = "HOST:PORT" '
                f"(the identd to ask)",
            )
        if "forward_proxy" in values:
            if not forwarding:
                raise self.error(
                    (*path, "forward_proxy"),
                    f"'forward_proxy' in {show(path)} needs answer = \"forward\"",
                )
            values["forward"] = dataclasses.replace(
                values["forward"], proxy=values.pop("forward_proxy")
            )
        target = values.get("forward")
        if target is not None and _is_ourselves(target, self.daemon):
            raise self.error(
                (*path, "forward"),
                f"'forward' in {show(path)}: {target.host}:{target.port} is this daemon "
                f"itself (port {self.daemon.port}); forward to the application's identd",
            )

    def nat(self, value: object, index: int, reply: ReplySettings) -> NatRule:
        path: Path = ("nat", index)
        table = self.table(value, path)
        self.known_keys(table, path, _NAT_KEYS)
        values = self.keys(NatRule, table, path)
        where = f"[[nat]] #{index + 1}"
        if "networks" not in values:
            raise self.error(path, f'{where} needs network = "ADDRESS/PREFIX" (the inner hosts)')
        answer = values.get("answer", "forward")
        if answer == "fixed":
            if "reply" not in values:
                raise self.error(path, f'answer = "fixed" in {where} needs reply = "..."')
            try:
                safe_user_id(values["reply"], reply.charset)
            except ValueError as exc:
                raise self.error((*path, "reply"), f"'reply' in {where}: {exc}") from None
        elif "reply" in values:
            raise self.error((*path, "reply"), f"'reply' in {where} needs answer = \"fixed\"")
        if answer != "forward":
            for name in ("forward_port", "forward_proxy"):
                if name in table:
                    raise self.error(
                        (*path, name), f"'{name}' in {where} needs answer = \"forward\""
                    )
        return NatRule(index + 1, self.locator.line_of(path), **values)

    def rule(self, value: object, index: int, reply: ReplySettings, earlier: list[Rule]) -> Rule:
        path: Path = ("rule", index)
        table = self.table(value, path)
        settings = self.settings(table, path, reply, (*_SETTINGS_KEYS, *_CONDITION_KEYS))
        if not any(name in table for name in _SETTINGS_KEYS):
            raise self.error(path, f"{show(path)} sets nothing (give it an answer)")
        conditions = self.keys(Rule, table, path)
        if not conditions:
            raise self.error(
                path,
                f"{show(path)} has no condition and would match everything; "
                f"put settings for everyone in [default]",
            )
        rule = Rule(settings, index + 1, self.locator.line_of(path), **conditions)
        for other in earlier:
            if other.conditions() == rule.conditions():
                raise self.error(
                    path,
                    f"{show(path)} has the same conditions as [[rule]] #{other.number} "
                    f"(line {other.line}) and would never match; merge them",
                )
        return rule


def _is_ourselves(target: ForwardTarget, daemon: DaemonSettings) -> bool:
    """Whether ``target`` is the daemon's own listening socket (a certain loop)."""
    if target.port != daemon.port:
        return False
    host = ipaddress.ip_address(target.host.partition("%")[0])
    if daemon.listen is None:
        return host.is_loopback or host.is_unspecified
    return any(ipaddress.ip_address(a.partition("%")[0]) == host for a in daemon.listen) or (
        host.is_unspecified
    )


def _is(value: object, kind: type) -> bool:
    """Whether a TOML value has the type a key wants (an integer is a number too; a
    boolean is neither)."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def parse_config(text: str, filename: str = "<string>") -> Config:
    """Parse and validate a configuration given as text; raise :class:`ConfigError`.

    A leading byte order mark is dropped: editors on Windows write one, and TOML (which
    has none) would call the file's first statement invalid at column 1."""
    text = text.removeprefix(BOM)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if match is not None:
            raise ConfigError(
                filename,
                int(match.group(1)),
                f"TOML syntax: {message[: match.start()]} (column {match.group(2)})",
            ) from None
        line = text.count("\n") + 1 if "end of document" in message else None
        message = re.sub(r"\s*\(at end of document\)$", " at the end of the file", message)
        raise ConfigError(filename, line, f"TOML syntax: {message}") from None
    return _Loader(text, filename).config(document)


def load_config(path: str) -> Config:
    """Read, parse and validate a configuration file; raise :class:`ConfigError`.

    An unreadable file (missing, a directory, no permission) and a file that is not
    UTF-8 are ConfigErrors too, so that callers have one exception to report. So is an
    empty ``path`` (an unset variable), which must not fall back to "no file".
    """
    if not path:
        raise ConfigError("''", None, "the configuration file's name is empty")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(path, line, "not UTF-8 text") from None
    return parse_config(text, path)
