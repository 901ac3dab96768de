"""The daemon's configuration schema: one definition per key.

Every key of the TOML file is one dataclass field here, and its metadata (:func:`key`)
says everything else about it: the TOML type, the rule its value must follow, and, for
``[server]``, the ``serve`` flag that overrides it. The loader (:mod:`._load`), the
command line (:mod:`aioidentd.cli.serve`) and ``docs/config.md`` follow from these
definitions, so that adding a key is one line here and a value is refused by the same
rule wherever it comes from.

The rules for values that go on the wire (ports, seconds, tokens, user ids) live in
:mod:`aioidentd.protocol`; the ones below only say how a file spells them.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, get_args

from aioidentd.protocol import (
    ReplyStyle,
    check_charset,
    check_port,
    check_seconds,
    check_token,
    show_address,
)
from aioidentd.pseudonym import (
    LENGTH,
    MAX_LENGTH,
    MIN_LENGTH,
    NETWORK_NAME,
    ROTATIONS,
    Rotation,
    overlap,
)

__all__ = [
    "ANSWER_KINDS",
    "BUILTIN_DEFAULT",
    "BUILTIN_ROOT",
    "PERMISSION_KEYS",
    "USER_CHOICES",
    "AnswerKind",
    "AnswerSettings",
    "Config",
    "DaemonSettings",
    "ForwardProxy",
    "ForwardTarget",
    "Key",
    "MetricsSettings",
    "NatAnswer",
    "NatRule",
    "Network",
    "PortRange",
    "PseudonymSettings",
    "ReplySettings",
    "Rule",
    "keys_of",
    "parse_listen",
]

#: How a policy shows a user: the values of ``answer =``.
AnswerKind = Literal[
    "username",
    "uid",
    "fixed",
    "random",
    "random-numeric",
    "pseudonym",
    "hidden",
    "no-user",
    "forward",
]
#: How a forwarded query tells the target who really asked: not at all, or with a PROXY
#: protocol header of that version.
ForwardProxy = Literal["none", "v1", "v2"]
ANSWER_KINDS: Final[tuple[AnswerKind, ...]] = get_args(AnswerKind)
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A check gets the key's name as a message should show it (``'port' in [server]``) and
#: the value as TOML typed it; it returns what the field stores or raises ValueError with
#: the whole message.
Check: TypeAlias = Callable[[str, Any], Any]


@dataclass(frozen=True, slots=True)
class Key:
    """How one TOML key becomes one field."""

    #: The TOML type the value must have; ``None`` for "one item or an array of them",
    #: which the check takes apart itself.
    toml: type | None
    #: The rule the value must follow, and what to store.
    check: Check
    #: The key's spelling in the file when it is not the field's name.
    name: str | None = None
    #: ``[server]`` keys only: the help of the ``serve`` flag of the same name, and the
    #: group it is listed in; no help, no flag.
    flag: str | None = None
    group: str = ""
    metavar: str | None = None


_LISTENING: Final = "listening (flags win over the configuration file)"
_PRIVILEGES: Final = "privileges"
_LOGGING: Final = "logging"


def _same(name: str, value: Any) -> Any:
    return value


def key(
    default: Any,
    toml: type | None,
    check: Check = _same,
    *,
    name: str | None = None,
    flag: str | None = None,
    group: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A field that is a key of the file (see :class:`Key`). A callable ``default`` is a
    factory (for values a dataclass may not share)."""
    spec = Key(toml, check, name, flag, group or _LISTENING, metavar)
    if callable(default):
        return field(default_factory=default, metadata={"key": spec})
    return field(default=default, metadata={"key": spec})


def keys_of(cls: type) -> Iterator[tuple[str, str, Key]]:
    """``(spelling in the file, field name, Key)`` for every key field of a section."""
    for item in dataclasses.fields(cls):
        spec = item.metadata.get("key")
        if spec is not None:
            yield spec.name or item.name, item.name, spec


# --------------------------------------------------------------------------- value rules


def _port(name: str, value: int) -> int:
    check_port(name, value, 0)
    return value


def _seconds(name: str, value: float) -> float:
    check_seconds(name, value)
    return float(value)


def _whole(low: int, high: int) -> Check:
    def check(name: str, value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{name} must be {low}..{high}, got {value}")
        return value

    return check


def _choice(choices: tuple[str, ...]) -> Check:
    def check(name: str, value: str) -> str:
        if value not in choices:
            listed = ", ".join(f"'{choice}'" for choice in choices)
            raise ValueError(
                f"{name} must be one of {listed}, got '{value}'{suggest(value, choices)}"
            )
        return value

    return check


def _not_empty(name: str, value: str) -> str:
    if not value:
        raise ValueError(f"{name} must not be empty")
    return value


def _token(name: str, value: str) -> str:
    check_token(name, value)
    return value


def _charset(name: str, value: str) -> str:
    check_charset(name, value)
    return value


def one_or_many(name: str, value: Any) -> list[Any]:
    """The items of a key that takes one value or an array of them."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"{name} must not be empty")
    return items


def _listen(name: str, value: Any) -> tuple[str, ...] | None:
    items = one_or_many(name, value)
    if items == ["*"]:
        return None
    addresses: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{name} must list addresses as strings, not {type_name(item)}")
        if item == "*":
            raise ValueError("'*' (every interface) must be listed alone")
        # "[::1]" as URLs write it; the brackets are no part of the address.
        bare = item[1:-1] if item.startswith("[") and item.endswith("]") else item
        try:
            ipaddress.IPv6Address(bare) if bare != item else ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"{name}: not an IP address: {item!r}") from None
        addresses.append(bare)
    return tuple(addresses)


_PORT_RANGE: Final = re.compile(r"\s*\d{1,9}\s*(-\s*\d{1,9}\s*)?")


def _port_ranges(name: str, value: Any) -> tuple[PortRange, ...]:
    ranges: list[PortRange] = []
    for item in one_or_many(name, value):
        if isinstance(item, int) and not isinstance(item, bool):
            low = high = item
        elif isinstance(item, str) and _PORT_RANGE.fullmatch(item):
            first, _, second = item.partition("-")
            low, high = int(first), int(second or first)
        else:
            raise ValueError(
                f'{name} must be a port, a range "LOW-HIGH" or an array of them, got {item!r}'
            )
        for port in (low, high):
            try:
                check_port("port", port)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if low > high:
            raise ValueError(f"{name}: range {item!r} is backwards")
        ranges.append(PortRange(low, high))
    return tuple(ranges)


def _host_port(name: str, value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[V6]:PORT"`` for IPv6) with an IP address: no name to resolve
    on the way of every query, and no resolver to fail."""
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""
    if not sep or not host or not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f'{name} must be "HOST:PORT" ("[::1]:PORT" for IPv6), got {value!r}')
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        raise ValueError(f"{name}: {host!r} is not an IP address") from None
    port = int(port_text)
    try:
        check_port("port", port)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return host, port


def _socket_path(name: str, value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{name} must be an absolute path, got {value!r}")
    if len(value.encode()) > 107:
        raise ValueError(f"{name}: a Unix socket path is at most 107 octets")
    return value


def _networks(name: str, value: Any) -> tuple[Network, ...]:
    networks: list[Network] = []
    for item in one_or_many(name, value):
        if not isinstance(item, str):
            raise ValueError(
                f"{name} must be an address or network as a string, not {type_name(item)}"
            )
        try:
            networks.append(ipaddress.ip_network(item.strip()))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return tuple(networks)


def user_key(name: str, text: str) -> str | int:
    """A uid when ``text`` is decimal digits, else a user name. Only ASCII digits make a
    uid: ``str.isdigit()`` also takes ``²`` and other digits that ``int()`` refuses or
    reads as a number nobody meant, so those are an error rather than a guess."""
    if text.isascii() and text.isdigit():
        return int(text)
    if text.isdigit():
        raise ValueError(f"{name}: {text!r} is neither a user name nor a uid (digits 0-9)")
    return text


def _names(name: str, value: Any) -> tuple[str | int, ...]:
    names: list[str | int] = []
    for item in one_or_many(name, value):
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            names.append(item)
        elif isinstance(item, str) and item:
            names.append(user_key(name, item))
        else:
            raise ValueError(f"{name} must be a name, a number or an array of them, got {item!r}")
    return tuple(names)


def _groups(name: str, value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in _names(name, value))


#: How a TOML type reads in a message.
TOML_TYPES: Final[Mapping[type, str]] = MappingProxyType(
    {
        str: "a string",
        bool: "true or false",
        int: "an integer",
        float: "a number",
        list: "an array",
        dict: "a table",
    }
)


def type_name(value: object) -> str:
    for kind, name in TOML_TYPES.items():
        if type(value) is kind:
            return name
    return type(value).__name__


def suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid spelling, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive range of TCP ports; a single port is ``low == high``."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


_ANSWER_KIND = _choice(ANSWER_KINDS)


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    """Where ``answer = "forward"`` asks, and whether it sends a PROXY header first."""

    host: str
    port: int
    proxy: ForwardProxy = "none"

    def __str__(self) -> str:
        where = show_address((self.host, self.port))
        return where if self.proxy == "none" else f"{where} (PROXY {self.proxy})"


def _forward(name: str, value: str) -> ForwardTarget:
    return ForwardTarget(*_host_port(name, value))


@dataclass(frozen=True, slots=True)
class AnswerSettings:
    """One table's answer settings; ``None`` means "not set here, ask the next level".

    The same shape serves ``[default]``, ``[user.X]``, ``[group.X]`` and ``[[rule]]``, so
    that an administrator learns one vocabulary and precedence works setting by setting.
    ``reply`` is checked by the loader, which knows the table's ``answer`` and the
    ``[reply]`` charset.
    """

    answer: AnswerKind | None = key(None, str, _ANSWER_KIND)
    reply: str | None = key(None, str)
    allow_user_reply: bool | None = key(None, bool)
    allow_spoof_other: bool | None = key(None, bool)
    allow_spoof_privport: bool | None = key(None, bool)
    #: What else a user's oidentd file may choose, one key per oidentd capability
    #: (``hide``, ``random``, ``random_numeric``, ``numeric``); unset everywhere, each
    #: follows ``allow_user_reply``, as before these keys existed.
    allow_user_hide: bool | None = key(None, bool)
    allow_user_random: bool | None = key(None, bool)
    allow_user_random_numeric: bool | None = key(None, bool)
    allow_user_numeric: bool | None = key(None, bool)
    #: ``answer = "forward"``: the identd to ask (``forward`` and ``forward_proxy`` in the
    #: file, combined by the loader). After merging, ``answer`` is the answer used when
    #: the forward fails: the next layer's.
    forward: ForwardTarget | None = key(None, str, _forward)
    forward_proxy: ForwardProxy | None = key(None, str, _choice(get_args(ForwardProxy)))
    #: Where the settings were written (``[user.alice]``) and the line, for logs.
    source: str = "built-in"
    line: int | None = None

    def allows(self, choice: str) -> bool:
        """Whether a user's oidentd file may say ``choice`` (``reply``, ``hide``,
        ``random``, ``random_numeric``, ``numeric``): its ``allow_*`` key, and where that
        is unset, ``allow_user_reply``."""
        value = getattr(self, USER_CHOICES[choice])
        return bool(self.allow_user_reply if value is None else value)

    def may_choose(self) -> bool:
        """Whether the user may choose anything (a reply file is read at all)."""
        return any(self.allows(choice) for choice in USER_CHOICES)

    def describe(self) -> str:
        parts: list[str] = []
        if self.forward is not None:
            parts.append(f"forward to {self.forward}")
        if self.answer == "fixed":
            parts.append(f"fixed {self.reply!r}")
        elif self.answer is not None and self.answer != "forward":
            parts.append(self.answer if self.forward is None else f"else {self.answer}")
        for name, label in (
            ("allow_user_reply", "own reply file"),
            ("allow_spoof_other", "others' names"),
            ("allow_spoof_privport", "own reply to privileged remote ports"),
            ("allow_user_hide", "hiding in own oidentd file"),
            ("allow_user_random", "random in own oidentd file"),
            ("allow_user_random_numeric", "random_numeric in own oidentd file"),
            ("allow_user_numeric", "numeric in own oidentd file"),
        ):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{label} {'allowed' if value else 'refused'}")
        return ", ".join(parts) if parts else "(sets nothing; inherits)"


#: What a user's oidentd file may choose -> the key that allows it (oidentd's
#: capabilities ``spoof``, ``hide``, ``random``, ``random_numeric``, ``numeric``).
USER_CHOICES: Final = MappingProxyType(
    {
        "reply": "allow_user_reply",
        "hide": "allow_user_hide",
        "random": "allow_user_random",
        "random_numeric": "allow_user_random_numeric",
        "numeric": "allow_user_numeric",
    }
)
#: Every permission key, merged one by one like the others.
PERMISSION_KEYS: Final = (
    "allow_user_reply",
    "allow_spoof_other",
    "allow_spoof_privport",
    "allow_user_hide",
    "allow_user_random",
    "allow_user_random_numeric",
    "allow_user_numeric",
)

#: What applies when no table says anything: answer the login name, no spoofing.
BUILTIN_DEFAULT: Final = AnswerSettings(
    answer="username",
    allow_user_reply=False,
    allow_spoof_other=False,
    allow_spoof_privport=False,
    source="built-in default",
)
#: oidentd 3 hides root by default; so do we, unless ``[user.root]`` sets an answer.
BUILTIN_ROOT: Final = AnswerSettings(answer="hidden", source="built-in root rule")


@dataclass(frozen=True, slots=True)
class Rule:
    """A ``[[rule]]``: conditions on the connection and user, then settings.

    An empty condition tuple means "any"; within one condition the items are
    alternatives, and all conditions must hold.
    """

    settings: AnswerSettings
    number: int
    line: int | None
    local_ports: tuple[PortRange, ...] = key((), None, _port_ranges, name="local_port")
    remote_ports: tuple[PortRange, ...] = key((), None, _port_ranges, name="remote_port")
    local_addresses: tuple[Network, ...] = key((), None, _networks, name="local_address")
    remote_addresses: tuple[Network, ...] = key((), None, _networks, name="remote_address")
    users: tuple[str | int, ...] = key((), None, _names, name="user")
    groups: tuple[str, ...] = key((), None, _groups, name="group")

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


#: What a ``[[nat]]`` entry answers for a connection of a machine behind this gateway.
NatAnswer = Literal["forward", "fixed", "random", "hidden", "no-user"]


def _nat_answer(name: str, value: str) -> str:
    return _choice(get_args(NatAnswer))(name, value)  # type: ignore[no-any-return]


def _forward_port(name: str, value: int) -> int:
    check_port(name, value)
    return value


@dataclass(frozen=True, slots=True)
class NatRule:
    """A ``[[nat]]``: connections this host translates for inner machines in
    ``networks`` (their addresses as the inner side sees them), and what they answer:
    the inner machine's own identd (``forward``, on ``forward_port``) or a static answer
    (oidentd_masq.conf's job)."""

    number: int
    line: int | None
    networks: tuple[Network, ...] = key((), None, _networks, name="network")
    answer: NatAnswer = key("forward", str, _nat_answer)
    reply: str | None = key(None, str)
    forward_port: int = key(113, int, _forward_port)
    forward_proxy: ForwardProxy = key("none", str, _choice(get_args(ForwardProxy)))
    #: The operating-system field of this entry's static USERID answers (an
    #: oidentd_masq.conf line's third word); unset: ``[reply] opsys``.
    opsys: str | None = key(None, str, _token)

    def describe(self) -> str:
        where = " or ".join(str(network) for network in self.networks)
        if self.answer == "forward":
            what = f"forward to the inner host's port {self.forward_port}"
            if self.forward_proxy != "none":
                what += f" (PROXY {self.forward_proxy})"
        elif self.answer == "fixed":
            what = f"fixed {self.reply!r}"
        else:
            what = self.answer
        if self.opsys is not None and self.answer != "forward":
            what += f" (opsys {self.opsys})"
        return f"inner {where}: {what}"


#: The user the daemon runs as unless told otherwise: a system user of its own, so that
#: no other program's process (``nobody`` is shared by many) may signal or trace it. The
#: install instructions create it; without it, a daemon started as root refuses to start
#: and says how to create it.
SERVICE_USER: Final = "aioidentd"


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """``[server]``: how the daemon listens and runs. ``listen`` is ``None`` for every
    interface. (Called the daemon's settings in code so that "server" is never both this
    section and an :class:`~aioidentd.server.IdentServer`.)"""

    listen: tuple[str, ...] | None = key(None, None, _listen)
    port: int = key(
        113,
        int,
        _port,
        flag="TCP port; 113 is the ident port, 0 a free one",
        metavar="P",
    )
    multiple: bool = key(False, bool, flag="answer many queries per connection")
    idle_timeout: float = key(
        60.0,
        float,
        _seconds,
        flag="close a connection idle this long (default 60; RFC 1413 suggests 60-180)",
        metavar="S",
    )
    first_query_timeout: float = key(
        10.0,
        float,
        _seconds,
        flag="close a connection that sent no query this long after connecting (default 10)",
        metavar="S",
    )
    response_timeout: float = key(
        1.0,
        float,
        _seconds,
        flag="deadline for an answer before the fallback goes out (default 1)",
        metavar="S",
    )
    reply_style: ReplyStyle = key(
        "compact",
        str,
        _choice(get_args(ReplyStyle)),
        flag="'compact' (6193,23:USERID:UNIX:x, default) or 'spaced' "
        "(6193 , 23 : USERID : UNIX : x)",
        metavar="{compact,spaced}",
    )
    defer_accept: bool = key(
        True,
        bool,
        flag="let the kernel complete accept() only once the query has arrived "
        "(TCP_DEFER_ACCEPT; default on)",
    )
    max_connections: int = key(
        1024, int, _whole(1, 10**6), flag="open connections at most (default 1024)", metavar="N"
    )
    workers: int = key(
        1,
        int,
        _whole(1, 256),
        flag="processes sharing the port with SO_REUSEPORT (default 1)",
        metavar="N",
    )
    uvloop: bool = key(
        False, bool, flag="run on uvloop (the 'uvloop' extra): about a third more connections/s"
    )
    user: str = key(
        SERVICE_USER,
        str,
        _not_empty,
        flag=f"user to run as after binding (default {SERVICE_USER}, a system user of its own)",
        group=_PRIVILEGES,
        metavar="USER",
    )
    group: str | None = key(
        None,
        str,
        _not_empty,
        flag="group to run as (the user's primary group)",
        group=_PRIVILEGES,
        metavar="GROUP",
    )
    allow_root: bool = key(
        False,
        bool,
        flag="keep running as root if --user is root (refused otherwise)",
        group=_PRIVILEGES,
    )
    log_queries: bool = key(
        False, bool, flag="log every query and its answer at INFO", group=_LOGGING
    )
    #: Addresses or networks allowed to send a PROXY header before their query (the
    #: gateway of a NAT whose daemon forwards with forward_proxy; see docs/config.md).
    trusted_proxies: tuple[Network, ...] = key(
        (),
        None,
        _networks,
        flag="an address or network that may send a PROXY header before its query (this "
        "host's NAT gateway; the file takes an array)",
        metavar="NET",
    )
    claims_socket: str | None = key(
        None,
        str,
        _socket_path,
        flag="Unix socket where local users claim their own connections (off by default; "
        "see aioidentd.HostClaims)",
        metavar="PATH",
    )
    forward_timeout: float = key(
        0.5,
        float,
        _seconds,
        flag='time a forwarded query (answer = "forward") may take in all, connect included; '
        "less than the response timeout (default 0.5)",
        metavar="S",
    )


@dataclass(frozen=True, slots=True)
class ReplySettings:
    """``[reply]``: what every USERID carries, and whether errors are masked."""

    opsys: str = key("UNIX", str, _token)
    charset: str | None = key(None, str, _charset)
    mask_errors: bool = key(False, bool)


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9561`` or ``[::1]:9561`` as (host, port); ValueError says why not."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f'must be "ADDRESS:PORT", got {text!r}')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f'write an IPv6 address as "[ADDRESS]:PORT", got {text!r}')
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        raise ValueError(f"not an IP address: {host!r}") from None
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"not a port number: {port!r}")
    return host, int(port)


def _listen_address(name: str, value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return value


def _path(name: str, value: str) -> str:
    if not value or "\0" in value:
        raise ValueError(f"{name} must be a file name")
    return value


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """``[metrics]``: where the daemon's counters go (nowhere unless asked)."""

    listen: str | None = key(None, str, _listen_address)
    textfile: str | None = key(None, str, _path)
    textfile_interval: float = key(15.0, float, _seconds)


#: Where the pseudonym key is kept unless ``key_file`` says otherwise: the state directory
#: systemd gives the unit (``StateDirectory=aioidentd``).
DEFAULT_KEY_FILE: Final = "/var/lib/aioidentd/pseudonym.key"


def _absolute(name: str, value: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"{name} must be an absolute path, got {value!r}")
    return value


def _named_networks(name: str, value: dict[str, Any]) -> Mapping[str, tuple[Network, ...]]:
    """``{name: [range, ...]}``; a range in two networks is refused (the id would depend
    on which is looked at first)."""
    named: dict[str, tuple[Network, ...]] = {}
    for network, ranges in value.items():
        where = f"'{network}' in {name}"
        if not NETWORK_NAME.fullmatch(network):
            raise ValueError(
                f"{where}: a network's name is 1-64 of A-Z a-z 0-9 . _ - (a letter or digit first)"
            )
        named[network] = _networks(where, ranges)
        clash = overlap(named)
        if clash is not None:
            raise ValueError(f"{name}: {clash}")
    return MappingProxyType(named)


def _no_networks() -> Mapping[str, tuple[Network, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PseudonymSettings:
    """``[pseudonym]``: how ``answer = "pseudonym"`` makes ids (see :mod:`aioidentd.pseudonym`)."""

    key_file: str = key(DEFAULT_KEY_FILE, str, _absolute)
    length: int = key(LENGTH, int, _whole(MIN_LENGTH, MAX_LENGTH))
    rotate: Rotation = key("monthly", str, _choice(ROTATIONS))
    ipv4_prefix: int = key(24, int, _whole(0, 32))
    ipv6_prefix: int = key(48, int, _whole(0, 128))
    networks: Mapping[str, tuple[Network, ...]] = key(_no_networks, dict, _named_networks)


def _no_tables() -> Mapping[Any, AnswerSettings]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, valid configuration. ``users`` is keyed by name or numeric uid.

    The top-level keys: ``[server]`` is :attr:`daemon`, ``[user.X]`` are :attr:`users`,
    ``[group.X]`` :attr:`groups` and ``[[rule]]`` :attr:`rules`.
    """

    filename: str = "<defaults>"
    daemon: DaemonSettings = key(DaemonSettings, dict, name="server")
    reply: ReplySettings = key(ReplySettings, dict)
    metrics: MetricsSettings = key(MetricsSettings, dict)
    pseudonym: PseudonymSettings = key(PseudonymSettings, dict)
    default: AnswerSettings = key(lambda: BUILTIN_DEFAULT, dict)
    users: Mapping[str | int, AnswerSettings] = key(_no_tables, dict, name="user")
    groups: Mapping[str, AnswerSettings] = key(_no_tables, dict, name="group")
    rules: tuple[Rule, ...] = key((), list, name="rule")
    nat: tuple[NatRule, ...] = key((), list)
    #: The line each table and key was written on (the loader's), for the messages of
    #: rules checked after loading (see :mod:`aioidentd.daemon.refusals`).
    lines: Mapping[tuple[str | int, ...], int] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )

    def line_of(self, *path: str | int) -> int | None:
        """The line where ``path`` (``"server", "workers"``), or else its nearest
        parent written in the file, is; None for what the file does not say."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    @property
    def uses_pseudonyms(self) -> bool:
        """Whether any table answers ``"pseudonym"`` (then the daemon needs the key)."""
        tables = [self.default, *self.users.values(), *self.groups.values()]
        return any(t.answer == "pseudonym" for t in (*tables, *(r.settings for r in self.rules)))
