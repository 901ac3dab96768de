"""The daemon's TOML configuration: parsed once, validated completely, then frozen.

An administrator who swaps oidentd for aioidentd edits this file rarely and under
pressure, so every mistake is reported with the file name, the line and, for a misspelt
key or value, the closest valid spelling. Nothing is silently ignored: an unknown key is
an error, because a misspelt ``hidden`` that falls back to ``username`` leaks names.

:mod:`tomllib` keeps no positions, so :class:`_Locator` re-reads the raw text to find
the line where each table or key was written; syntax errors already carry a line from
:mod:`tomllib` and are only re-worded. The schema is documented in ``docs/config.md``.
"""

from __future__ import annotations

import codecs
import difflib
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, cast, get_args

from aioidentd.errors import ConfigError
from aioidentd.protocol import check_port, check_seconds, check_token, safe_user_id

__all__ = [
    "ANSWERS",
    "BUILTIN_DEFAULT",
    "BUILTIN_ROOT",
    "Answer",
    "Config",
    "ConfigError",
    "Network",
    "PortRange",
    "ReplyConfig",
    "Rule",
    "ServerConfig",
    "Settings",
    "load_config",
    "merge_settings",
    "parse_config",
]

Answer = Literal["username", "uid", "fixed", "random", "hidden", "no-user"]
#: The answers a policy can give; the strings are the values of ``answer =``.
ANSWERS: Final[tuple[Answer, ...]] = get_args(Answer)
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Path: TypeAlias = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive range of TCP ports; a single port is ``low == high``."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True, slots=True)
class Settings:
    """One table's answer settings; ``None`` means "not set here, ask the next level".

    The same shape serves ``[default]``, ``[user.X]``, ``[group.X]`` and ``[[rule]]``, so
    that an administrator learns one vocabulary and precedence works setting by setting.
    """

    answer: Answer | None = None
    reply: str | None = None
    allow_user_reply: bool | None = None
    allow_spoof_other: bool | None = None
    allow_spoof_privport: bool | None = None
    source: str = "built-in"
    line: int | None = None

    def describe(self) -> str:
        parts: list[str] = []
        if self.answer == "fixed":
            parts.append(f"fixed {self.reply!r}")
        elif self.answer is not None:
            parts.append(self.answer)
        for name, label in (
            ("allow_user_reply", "own reply file"),
            ("allow_spoof_other", "others' names"),
            ("allow_spoof_privport", "own reply to privileged remote ports"),
        ):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{label} {'allowed' if value else 'refused'}")
        return ", ".join(parts) if parts else "(sets nothing; inherits)"


#: What applies when no table says anything: answer the login name, no spoofing.
BUILTIN_DEFAULT: Final = Settings(
    answer="username",
    allow_user_reply=False,
    allow_spoof_other=False,
    allow_spoof_privport=False,
    source="built-in default",
)
#: oidentd 3 hides root by default; so do we, unless ``[user.root]`` sets an answer.
BUILTIN_ROOT: Final = Settings(answer="hidden", source="built-in root rule")


@dataclass(frozen=True, slots=True)
class Rule:
    """A ``[[rule]]``: conditions on the connection and user, then settings.

    An empty condition tuple means "any"; within one condition the items are
    alternatives, and all conditions must hold.
    """

    settings: Settings
    number: int
    line: int | None
    local_ports: tuple[PortRange, ...] = ()
    remote_ports: tuple[PortRange, ...] = ()
    local_addresses: tuple[Network, ...] = ()
    remote_addresses: tuple[Network, ...] = ()
    users: tuple[str | int, ...] = ()
    groups: tuple[str, ...] = ()

    def conditions(self) -> tuple[object, ...]:
        """The conditions as a comparable value; two rules with equal ones are duplicates."""
        return (
            frozenset(self.local_ports),
            frozenset(self.remote_ports),
            frozenset(self.local_addresses),
            frozenset(self.remote_addresses),
            frozenset(self.users),
            frozenset(self.groups),
        )

    def describe(self) -> str:
        parts: list[str] = []
        for label, items in (
            ("local port", self.local_ports),
            ("remote port", self.remote_ports),
            ("local address", self.local_addresses),
            ("remote address", self.remote_addresses),
            ("user", self.users),
            ("group", self.groups),
        ):
            if items:
                parts.append(f"{label} {' or '.join(str(item) for item in items)}")
        return " and ".join(parts)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: how the daemon listens; ``listen`` is ``None`` for every interface."""

    listen: tuple[str, ...] | None = None
    port: int = 113
    multiple: bool = False
    idle_timeout: float = 60.0
    response_timeout: float = 1.0
    reply_style: Literal["compact", "spaced"] = "compact"
    max_connections: int = 1024
    user: str = "nobody"
    group: str | None = None
    allow_root: bool = False
    log_queries: bool = False
    workers: int = 1
    uvloop: bool = False


@dataclass(frozen=True, slots=True)
class ReplyConfig:
    """``[reply]``: what every USERID carries, and whether errors are masked."""

    opsys: str = "UNIX"
    charset: str | None = None
    mask_errors: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, valid configuration. ``users`` is keyed by name or numeric uid."""

    filename: str = "<defaults>"
    server: ServerConfig = field(default_factory=ServerConfig)
    reply: ReplyConfig = field(default_factory=ReplyConfig)
    default: Settings = BUILTIN_DEFAULT
    users: Mapping[str | int, Settings] = field(default_factory=lambda: MappingProxyType({}))
    groups: Mapping[str, Settings] = field(default_factory=lambda: MappingProxyType({}))
    rules: tuple[Rule, ...] = ()

    def describe(self) -> str:
        """The effective policy in plain words, for ``aioidentd check-config``."""
        server, reply = self.server, self.reply
        listen = "every interface" if server.listen is None else ", ".join(server.listen)
        group = server.group or "(the user's primary group)"
        lines = [
            f"{self.filename}: configuration is valid",
            "",
            "server:",
            f"  listen on {listen}, port {server.port}",
            f"  {'many queries' if server.multiple else 'one query'} per connection, "
            f"idle timeout {server.idle_timeout:g} s, response timeout "
            f"{server.response_timeout:g} s, at most {server.max_connections} connections",
            f"  {server.reply_style} replies; run as user {server.user}, group "
            f"{group}{' (root allowed)' if server.allow_root else ''}; "
            f"queries {'logged' if server.log_queries else 'not logged'}; "
            f"{server.workers} worker process{'es' if server.workers > 1 else ''}"
            f"{' on uvloop' if server.uvloop else ''}",
            "replies:",
            f"  opsys {reply.opsys}, "
            + (f"charset {reply.charset}" if reply.charset else "no charset (US-ASCII)")
            + (
                "; every error is sent as UNKNOWN-ERROR"
                if reply.mask_errors
                else "; errors are sent as they are"
            ),
            "policy (each setting from the first that sets it: the first matching rule,",
            "        the user's table, the user's group tables in file order, [default]):",
        ]
        root_set = any(
            key in self.users and self.users[key].answer is not None for key in ("root", 0)
        )
        if not root_set:
            lines.append("  root: hidden (built-in; set answer in [user.root] to change)")
        if self.rules:
            lines.append("  rules:")
            for rule in self.rules:
                where = f" (line {rule.line})" if rule.line else ""
                lines.append(
                    f"    {rule.number}.{where} if {rule.describe()}: {rule.settings.describe()}"
                )
        for label, table in (("user", self.users), ("group", self.groups)):
            for key, settings in table.items():
                lines.append(f"  [{label}.{key}] {settings.describe()}")
        effective = merge_settings(self.default, BUILTIN_DEFAULT)
        lines.append(f"  [default] {effective.describe()}")
        return "\n".join(lines)


def merge_settings(first: Settings, *rest: Settings) -> Settings:
    """Fill ``first``'s unset fields from ``rest`` in order (answer and reply go together)."""
    values: dict[str, Any] = {}
    for settings in (first, *rest):
        if "answer" not in values and settings.answer is not None:
            values["answer"] = settings.answer
            values["reply"] = settings.reply
            values["source"] = settings.source
            values["line"] = settings.line
        for name in ("allow_user_reply", "allow_spoof_other", "allow_spoof_privport"):
            if name not in values and getattr(settings, name) is not None:
                values[name] = getattr(settings, name)
    return Settings(**values)


# --------------------------------------------------------------------------- locating


_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_BLANK: Final = " \t"


def _parse_key(text: str, pos: int) -> tuple[list[str], int] | None:
    """Parse a (dotted) TOML key at ``pos``; return its parts and the position after it."""
    parts: list[str] = []
    while True:
        while pos < len(text) and text[pos] in _BLANK:
            pos += 1
        if pos >= len(text):
            return None
        char = text[pos]
        if char == '"':
            end = pos + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                return None
            try:
                parts.append(tomllib.loads(f"k = {text[pos : end + 1]}")["k"])
            except tomllib.TOMLDecodeError:
                return None
            pos = end + 1
        elif char == "'":
            end = text.find("'", pos + 1)
            if end < 0:
                return None
            parts.append(text[pos + 1 : end])
            pos = end + 1
        else:
            match = _BARE_KEY.match(text, pos)
            if match is None:
                return None
            parts.append(match.group())
            pos = match.end()
        while pos < len(text) and text[pos] in _BLANK:
            pos += 1
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return parts, pos


class _Locator:
    """Maps a path in the parsed document to the line where it was written.

    A line scanner, not a parser: it follows table headers (``[a.b]``, ``[[a]]`` with
    a running index per array), ``key =`` lines (dotted and quoted keys too) and skips
    the inside of multi-line strings, which is all a config file of this schema contains.
    Anything it cannot place is reported at the line of its nearest located parent.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[Path, int] = {}
        arrays: dict[Path, int] = {}
        table: Path = ()
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            stripped = line.lstrip(_BLANK)
            rest = stripped
            if stripped.startswith("[["):
                parsed = _parse_key(stripped, 2)
                if parsed is not None and stripped[parsed[1] :].startswith("]]"):
                    name = tuple(parsed[0])
                    index = arrays.get(name, -1) + 1
                    arrays[name] = index
                    table = (*name, index)
                    self._add(table, number)
                    rest = stripped[parsed[1] + 2 :]
            elif stripped.startswith("["):
                parsed = _parse_key(stripped, 1)
                if parsed is not None and stripped[parsed[1] :].startswith("]"):
                    table = tuple(parsed[0])
                    self._add(table, number)
                    rest = stripped[parsed[1] + 1 :]
            elif stripped and stripped[0] not in "#":
                parsed = _parse_key(stripped, 0)
                if parsed is not None and stripped[parsed[1] :].startswith("="):
                    self._add((*table, *parsed[0]), number)
                    rest = stripped[parsed[1] + 1 :]
            for delimiter in ('"""', "'''"):
                if rest.count(delimiter) % 2 == 1:
                    in_string = delimiter
                    break

    def _add(self, path: Path, number: int) -> None:
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], number)

    def line_of(self, path: Path) -> int | None:
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


# --------------------------------------------------------------------------- validating

_SETTINGS_KEYS: Final = (
    "answer",
    "reply",
    "allow_user_reply",
    "allow_spoof_other",
    "allow_spoof_privport",
)
_RULE_KEYS: Final = (
    *_SETTINGS_KEYS,
    "local_port",
    "remote_port",
    "local_address",
    "remote_address",
    "user",
    "group",
)
_SERVER_KEYS: Final = (
    "listen",
    "port",
    "multiple",
    "idle_timeout",
    "response_timeout",
    "reply_style",
    "max_connections",
    "user",
    "group",
    "allow_root",
    "log_queries",
    "workers",
    "uvloop",
)
_REPLY_KEYS: Final = ("opsys", "charset", "mask_errors")
_TOP_KEYS: Final = ("server", "reply", "default", "user", "group", "rule")
_TOML_TYPES: Final = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "a table",
}


def _show(path: Path) -> str:
    """How a path reads in a message: ``[user.alice]``, ``[[rule]] #2``, ``[server] port``."""
    if not path:
        return "the top level"
    if path[0] == "rule" and len(path) >= 2 and isinstance(path[1], int):
        head = f"[[rule]] #{path[1] + 1}"
        return head if len(path) == 2 else f"'{'.'.join(map(str, path[2:]))}' in {head}"
    return f"[{'.'.join(map(str, path))}]"


def _type_name(value: object) -> str:
    for kind, name in _TOML_TYPES.items():
        if type(value) is kind:
            return name
    return type(value).__name__


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Validator:
    """Turns the parsed document into a :class:`Config`, raising the first error found."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.locator = _Locator(text)

    def error(self, path: Path, message: str) -> ConfigError:
        return ConfigError(self.filename, self.locator.line_of(path), message)

    # -- generic checks

    def table(self, value: object, path: Path) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"{_show(path)} must be a table, not {_type_name(value)}")
        return cast(dict[str, Any], value)

    def known_keys(self, table: Mapping[str, Any], path: Path, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for key in table:
            if key not in allowed:
                raise self.error(
                    (*path, key),
                    f"unknown key '{key}' in {_show(path)}{_suggest(key, allowed)}",
                )

    def typed(self, table: Mapping[str, Any], key: str, path: Path, kind: type) -> Any:
        value = table[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise self.error(
                (*path, key),
                f"'{key}' in {_show(path)} must be {_TOML_TYPES[kind]}, not {_type_name(value)}",
            )
        return value

    def choice(self, table: Mapping[str, Any], key: str, path: Path, choices: Iterable[str]) -> str:
        value: str = self.typed(table, key, path, str)
        choices = tuple(choices)
        if value not in choices:
            listed = ", ".join(f"'{choice}'" for choice in choices)
            raise self.error(
                (*path, key),
                f"'{key}' in {_show(path)} must be one of {listed}, "
                f"got '{value}'{_suggest(value, choices)}",
            )
        return value

    def token(self, table: Mapping[str, Any], key: str, path: Path) -> str:
        value: str = self.typed(table, key, path, str)
        try:
            check_token(f"'{key}' in {_show(path)}", value)
        except ValueError as exc:
            raise self.error((*path, key), str(exc)) from None
        return value

    def user_key(self, text: str, path: Path) -> str | int:
        """A uid when ``text`` is decimal digits, else a name. Only ASCII digits make a
        uid: ``str.isdigit()`` also takes ``²`` and other digits that ``int()`` refuses
        or reads as a number nobody meant."""
        if text.isascii() and text.isdigit():
            return int(text)
        if text.isdigit():
            raise self.error(
                path, f"{_show(path)}: {text!r} is neither a user name nor a uid (digits 0-9)"
            )
        return text

    def one_or_many(self, table: Mapping[str, Any], key: str, path: Path) -> list[Any]:
        value = table[key]
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.error((*path, key), f"'{key}' in {_show(path)} must not be empty")
        return items

    # -- sections

    def config(self, document: dict[str, Any]) -> Config:
        self.known_keys(document, (), _TOP_KEYS)
        server = self.server(self.table(document.get("server", {}), ("server",)))
        reply = self.reply(self.table(document.get("reply", {}), ("reply",)))
        default = self.settings(
            self.table(document.get("default", {}), ("default",)), ("default",), reply, "[default]"
        )
        users: dict[str | int, Settings] = {}
        for key, value in self.table(document.get("user", {}), ("user",)).items():
            path: Path = ("user", key)
            user = self.user_key(key, path)
            if user in users or (user in ("root", 0) and ({"root", 0} & users.keys())):
                raise self.error(path, f"{_show(path)} names a user already configured")
            users[user] = self.settings(self.table(value, path), path, reply, _show(path))
        groups: dict[str, Settings] = {}
        for key, value in self.table(document.get("group", {}), ("group",)).items():
            path = ("group", key)
            groups[key] = self.settings(self.table(value, path), path, reply, _show(path))
        rules_value = document.get("rule", [])
        if not isinstance(rules_value, list):
            raise self.error(("rule",), "'rule' must be written as [[rule]] tables")
        rules: list[Rule] = []
        for index, value in enumerate(rules_value):
            rules.append(self.rule(value, index, reply, rules))
        return Config(
            filename=self.filename,
            server=server,
            reply=reply,
            default=default,
            users=MappingProxyType(users),
            groups=MappingProxyType(groups),
            rules=tuple(rules),
        )

    def server(self, table: dict[str, Any]) -> ServerConfig:
        path: Path = ("server",)
        self.known_keys(table, path, _SERVER_KEYS)
        values: dict[str, Any] = {}
        if "listen" in table:
            listen = self.one_or_many(table, "listen", path)
            if listen == ["*"]:
                values["listen"] = None
            else:
                for item in listen:
                    if not isinstance(item, str):
                        raise self.error(
                            (*path, "listen"),
                            f"'listen' in [server] must list addresses as strings, "
                            f"not {_type_name(item)}",
                        )
                    if item == "*":
                        raise self.error(
                            (*path, "listen"), "'*' (every interface) must be listed alone"
                        )
                    try:
                        ipaddress.ip_address(item)
                    except ValueError:
                        raise self.error(
                            (*path, "listen"), f"'listen' in [server]: not an IP address: {item!r}"
                        ) from None
                values["listen"] = tuple(listen)
        if "port" in table:
            port: int = self.typed(table, "port", path, int)
            try:
                check_port("'port'", port, 0)
            except ValueError as exc:
                raise self.error((*path, "port"), str(exc)) from None
            values["port"] = port
        for key in ("multiple", "log_queries", "allow_root", "uvloop"):
            if key in table:
                values[key] = self.typed(table, key, path, bool)
        for key in ("idle_timeout", "response_timeout"):
            if key in table:
                seconds = self.typed(table, key, path, float)
                try:
                    check_seconds(f"'{key}'", seconds)
                except ValueError as exc:
                    raise self.error((*path, key), str(exc)) from None
                values[key] = float(seconds)
        if "reply_style" in table:
            values["reply_style"] = self.choice(table, "reply_style", path, ("compact", "spaced"))
        if "max_connections" in table:
            count: int = self.typed(table, "max_connections", path, int)
            if count < 1:
                raise self.error(
                    (*path, "max_connections"), f"'max_connections' must be >= 1, got {count}"
                )
            values["max_connections"] = count
        if "workers" in table:
            workers: int = self.typed(table, "workers", path, int)
            if not 1 <= workers <= 256:
                raise self.error((*path, "workers"), f"'workers' must be 1..256, got {workers}")
            values["workers"] = workers
        for key in ("user", "group"):
            if key in table:
                name: str = self.typed(table, key, path, str)
                if not name:
                    raise self.error((*path, key), f"'{key}' in [server] must not be empty")
                values[key] = name
        return ServerConfig(**values)

    def reply(self, table: dict[str, Any]) -> ReplyConfig:
        path: Path = ("reply",)
        self.known_keys(table, path, _REPLY_KEYS)
        values: dict[str, Any] = {}
        if "opsys" in table:
            values["opsys"] = self.token(table, "opsys", path)
        if "charset" in table:
            charset = self.token(table, "charset", path)
            try:
                codecs.lookup(charset)
            except LookupError:
                raise self.error(
                    (*path, "charset"), f"unknown charset {charset!r} (try 'UTF-8')"
                ) from None
            values["charset"] = charset
        if "mask_errors" in table:
            values["mask_errors"] = self.typed(table, "mask_errors", path, bool)
        return ReplyConfig(**values)

    def settings(
        self,
        table: dict[str, Any],
        path: Path,
        reply: ReplyConfig,
        source: str,
        allowed: Iterable[str] = _SETTINGS_KEYS,
    ) -> Settings:
        self.known_keys(table, path, allowed)
        values: dict[str, Any] = {"source": source, "line": self.locator.line_of(path)}
        if "answer" in table:
            values["answer"] = self.choice(table, "answer", path, ANSWERS)
        if "reply" in table:
            text: str = self.typed(table, "reply", path, str)
            if values.get("answer") != "fixed":
                raise self.error(
                    (*path, "reply"), f"'reply' in {_show(path)} needs answer = \"fixed\""
                )
            try:
                safe_user_id(text, reply.charset)
            except ValueError as exc:
                raise self.error((*path, "reply"), f"'reply' in {_show(path)}: {exc}") from None
            values["reply"] = text
        elif values.get("answer") == "fixed":
            raise self.error(
                (*path, "answer"),
                f'answer = "fixed" in {_show(path)} needs reply = "..." (the id to send)',
            )
        for key in ("allow_user_reply", "allow_spoof_other", "allow_spoof_privport"):
            if key in table:
                values[key] = self.typed(table, key, path, bool)
        return Settings(**values)

    def ports(self, table: Mapping[str, Any], key: str, path: Path) -> tuple[PortRange, ...]:
        ranges: list[PortRange] = []
        for item in self.one_or_many(table, key, path):
            if isinstance(item, int) and not isinstance(item, bool):
                low = high = item
            elif isinstance(item, str) and re.fullmatch(r"\s*\d{1,9}\s*(-\s*\d{1,9}\s*)?", item):
                first, _, second = item.partition("-")
                low, high = int(first), int(second or first)
            else:
                raise self.error(
                    (*path, key),
                    f"'{key}' in {_show(path)} must be a port, a range \"LOW-HIGH\" or an "
                    f"array of them, got {item!r}",
                )
            for port in (low, high):
                if not 1 <= port <= 65535:
                    raise self.error(
                        (*path, key),
                        f"'{key}' in {_show(path)}: port {port} is out of range 1..65535",
                    )
            if low > high:
                raise self.error(
                    (*path, key), f"'{key}' in {_show(path)}: range {item!r} is backwards"
                )
            ranges.append(PortRange(low, high))
        return tuple(ranges)

    def networks(self, table: Mapping[str, Any], key: str, path: Path) -> tuple[Network, ...]:
        networks: list[Network] = []
        for item in self.one_or_many(table, key, path):
            if not isinstance(item, str):
                raise self.error(
                    (*path, key),
                    f"'{key}' in {_show(path)} must be an address or network as a string, "
                    f"not {_type_name(item)}",
                )
            try:
                networks.append(ipaddress.ip_network(item.strip()))
            except ValueError as exc:
                raise self.error((*path, key), f"'{key}' in {_show(path)}: {exc}") from None
        return tuple(networks)

    def names(self, table: Mapping[str, Any], key: str, path: Path) -> tuple[str | int, ...]:
        names: list[str | int] = []
        for item in self.one_or_many(table, key, path):
            if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
                names.append(item)
            elif isinstance(item, str) and item:
                names.append(self.user_key(item, (*path, key)))
            else:
                raise self.error(
                    (*path, key),
                    f"'{key}' in {_show(path)} must be a name, a number or an array of them, "
                    f"got {item!r}",
                )
        return tuple(names)

    def rule(self, value: object, index: int, reply: ReplyConfig, earlier: list[Rule]) -> Rule:
        path: Path = ("rule", index)
        table = self.table(value, path)
        settings = self.settings(table, path, reply, _show(path), _RULE_KEYS)
        if not any(key in table for key in _SETTINGS_KEYS):
            raise self.error(path, f"{_show(path)} sets nothing (give it an answer)")
        conditions: dict[str, Any] = {}
        for key, attribute in (
            ("local_port", "local_ports"),
            ("remote_port", "remote_ports"),
        ):
            if key in table:
                conditions[attribute] = self.ports(table, key, path)
        for key, attribute in (
            ("local_address", "local_addresses"),
            ("remote_address", "remote_addresses"),
        ):
            if key in table:
                conditions[attribute] = self.networks(table, key, path)
        if "user" in table:
            conditions["users"] = self.names(table, "user", path)
        if "group" in table:
            conditions["groups"] = tuple(str(name) for name in self.names(table, "group", path))
        if not conditions:
            raise self.error(
                path,
                f"{_show(path)} has no condition and would match everything; "
                f"put settings for everyone in [default]",
            )
        line = self.locator.line_of(path)
        rule = Rule(settings, index + 1, line, **conditions)
        for other in earlier:
            if other.conditions() == rule.conditions():
                raise self.error(
                    path,
                    f"{_show(path)} has the same conditions as [[rule]] #{other.number} "
                    f"(line {other.line}) and would never match; merge them",
                )
        return rule


# --------------------------------------------------------------------------- entry points


def parse_config(text: str, filename: str = "<string>") -> Config:
    """Parse and validate a configuration given as text; raise :class:`ConfigError`."""
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
    return _Validator(text, filename).config(document)


def load_config(path: str) -> Config:
    """Read, parse and validate a configuration file; raise :class:`ConfigError`.

    An unreadable file (missing, a directory, no permission) and a file that is not
    UTF-8 are ConfigErrors too, so that callers have one exception to report.
    """
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
