"""From oidentd's configuration (system file, NAT file, command line) to one
``aioidentd.toml`` that gives the same answers, without any I/O.

How oidentd's evaluation becomes the policy's (see :mod:`.system_conf` for the facts):

* each range that can apply becomes a ``[[rule]]`` that sets *every* answer setting
  (``answer`` and each ``allow_*``), so that nothing is merged in from another table,
  as oidentd takes one range's capabilities whole;
* a block's ranges go out last-written first (oidentd's order), a user's before the
  ``default`` block's, with ``user = NAME`` on a user's; a range another one shadows
  (same filters written later, or anything before a ``default`` range) never applies in
  oidentd either and is a comment;
* the ``default`` block's ``default`` range is ``[default]``;
* capabilities are ``allow_*`` keys, ``force`` an ``answer``.

Every part of the output is commented with the oidentd line it came from. What cannot
be said is a :class:`Problem` (``refused``: the exit status is 1), and a comment marked
``NOT CONVERTED`` where it would have gone; notes explain faithful conversions that a
reader could mistake for a change (root, shadowed ranges, oidentd's own defects).
"""

from __future__ import annotations

import codecs
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from aioidentd.errors import ConfigError
from aioidentd.oidentd.flags import Flag, FlagError, parse_flags
from aioidentd.oidentd.masq_conf import MasqLine, parse_masq_file
from aioidentd.oidentd.system_conf import (
    Block,
    OidentdSyntaxError,
    Range,
    SystemFile,
    parse_port_range,
    parse_system_file,
)
from aioidentd.policy import parse_config
from aioidentd.protocol import check_token, safe_user_id

__all__ = [
    "DEFAULT_MASQ",
    "DEFAULT_SYSTEM",
    "Conversion",
    "OidentdInputError",
    "Problem",
    "convert",
    "system_path",
]

#: Where Debian's oidentd keeps its files (``-C`` names another system file).
DEFAULT_SYSTEM: Final = "/etc/oidentd.conf"
DEFAULT_MASQ: Final = "/etc/oidentd_masq.conf"

#: capability -> the setting that grants it.
PERMISSIONS: Final = (
    ("spoof", "allow_user_reply"),
    ("spoof_all", "allow_spoof_other"),
    ("spoof_privport", "allow_spoof_privport"),
    ("hide", "allow_user_hide"),
    ("random", "allow_user_random"),
    ("random_numeric", "allow_user_random_numeric"),
    ("numeric", "allow_user_numeric"),
)
#: ``force CAPABILITY`` -> the answer.
_FORCED: Final = {
    "hide": "hidden",
    "random": "random",
    "numeric": "uid",
    "random_numeric": "random-numeric",
    "spoof": "username",
    "spoof_all": "username",
    "spoof_privport": "username",
}
_ROOT: Final = ("root", "0")


class OidentdInputError(ValueError):
    """Input oidentd itself would refuse, or that cannot be read: ``file: line N: why``."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the reader must know: ``refused`` (not converted; exit status 1) or a
    note about a faithful conversion."""

    where: str
    message: str
    refused: bool = True

    def __str__(self) -> str:
        label = "not converted" if self.refused else "note"
        return f"{self.where}: {label}: {self.message}"


@dataclass(frozen=True, slots=True)
class Conversion:
    toml: str
    problems: tuple[Problem, ...] = ()

    @property
    def status(self) -> int:
        """0 when everything was converted, 1 when something was refused."""
        return 1 if any(problem.refused for problem in self.problems) else 0


def _str(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return _str(str(value))


@dataclass
class _Writer:
    """The output, part by part, and the problems met on the way."""

    sections: list[list[str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def part(
        self, header: str | None, comments: Sequence[str], keys: Sequence[tuple[str, object]]
    ) -> None:
        lines = [f"# {comment}" for comment in comments]
        if header is not None:
            lines.append(header)
        lines.extend(f"{name} = {_toml_value(value)}" for name, value in keys)
        self.sections.append(lines)

    def refuse(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))
        self.sections.append([f"# NOT CONVERTED: {where}: {message}"])

    def note(self, where: str, message: str, comment: bool = True) -> None:
        self.problems.append(Problem(where, message, refused=False))
        if comment:
            self.sections.append([f"# note: {where}: {message}"])

    def text(self) -> str:
        return "\n\n".join("\n".join(lines) for lines in self.sections if lines) + "\n"


def system_path(flags: str | None) -> str:
    """The system file oidentd reads with these flags (``-C FILE``, else Debian's)."""
    path = DEFAULT_SYSTEM
    for flag in _flags(flags):
        if flag.letter == "C" and flag.value:
            path = flag.value
    return path


def _flags(flags: str | None) -> list[Flag]:
    if not flags:
        return []
    try:
        return parse_flags(flags)
    except FlagError as exc:
        raise OidentdInputError(f"flags: {exc}") from None


def convert(
    system: str | None,
    *,
    system_name: str = DEFAULT_SYSTEM,
    masq: str | None = None,
    masq_name: str = DEFAULT_MASQ,
    flags: str | None = None,
) -> Conversion:
    """The aioidentd configuration for oidentd's ``system`` file text (None: no file),
    ``masq`` file text and ``flags``. Raises :class:`OidentdInputError` for input oidentd
    would refuse."""
    parsed_flags = _flags(flags)
    try:
        parsed = parse_system_file(system) if system is not None else SystemFile()
    except OidentdSyntaxError as exc:
        raise OidentdInputError(f"{system_name}: {exc}") from None
    try:
        masq_lines = parse_masq_file(masq) if masq is not None else []
    except OidentdSyntaxError as exc:
        raise OidentdInputError(f"{masq_name}: {exc}") from None
    out = _Writer()
    sources = [system_name if system is not None else f"no {system_name} (oidentd's defaults)"]
    if masq is not None:
        sources.append(masq_name)
    if flags:
        sources.append(f"flags {flags.strip()!r}")
    out.sections.append(
        [
            "# Converted from oidentd by 'aioidentd import-oidentd': " + ", ".join(sources),
            "# Each part names the oidentd line it came from; see aioidentd.toml(5).",
        ]
    )
    charset, listen_port = _server(out, parsed_flags)
    _policy(out, parsed, system_name, charset, listen_port)
    _nat(out, parsed_flags, masq_lines, masq_name, masq is not None, flags is not None, charset)
    text = out.text()
    try:
        parse_config(text, "<import-oidentd>")
    except ConfigError as exc:  # pragma: no cover - a converter bug, said plainly
        raise RuntimeError(f"the converted configuration does not load: {exc}") from exc
    return Conversion(text, tuple(out.problems))


# --------------------------------------------------------------------------- flags


def _server(out: _Writer, flags: list[Flag]) -> tuple[str | None, int]:
    """``[server]`` and ``[reply]`` from the flags; returns the charset (``-c``) and the
    port it listens on."""
    server: list[tuple[str, object]] = []
    server_notes: list[str] = []
    reply: list[tuple[str, object]] = []
    reply_notes: list[str] = []
    listen: list[str] = []
    charset: str | None = None
    listen_port = 113
    for index, flag in enumerate(flags):
        where = f"flag {flag.text}"
        letter, value = flag.letter, flag.value or ""
        if letter == "":
            earlier = flags[index - 1] if index else None
            hint = ""
            if earlier is not None and earlier.letter in ("f", "o") and earlier.value is None:
                hint = (
                    f" (-{earlier.letter} takes its argument only attached: "
                    f"-{earlier.letter}{value})"
                )
            out.note(f"flags word {value!r}", f"not an option; oidentd ignores it{hint}")
        elif letter == "a":
            try:
                listen.append(str(ipaddress.ip_address(value)))
                server_notes.append(f"{flag.text}")
            except ValueError:
                out.refuse(
                    where,
                    f"{value!r} is not an IP address (names are not resolved; write the address)",
                )
        elif letter == "p":
            ports = parse_port_range(value)
            if ports is None or ports[0] != ports[1]:
                out.refuse(where, f"{value!r} is not a port")
            else:
                listen_port = ports[0]
                server.append(("port", ports[0]))
                server_notes.append(flag.text)
        elif letter == "u" and value in ("root", "0"):
            out.note(
                where,
                "oidentd keeps root only for its NAT lookups; aioidentd does "
                "those in a small root helper and runs as its own user, so [server] "
                "user is left at its default",
            )
        elif letter in ("u", "g"):
            server.append(("user" if letter == "u" else "group", value))
            server_notes.append(flag.text)
        elif letter == "l":
            if not (value.isascii() and value.isdigit()):
                out.refuse(where, f"{value!r} is not a number")
            elif int(value) == 0:
                out.note(
                    where,
                    "0 means no limit in oidentd; aioidentd keeps its default "
                    "max_connections (1024)",
                )
            else:
                server.append(("max_connections", min(int(value), 10**6)))
                server_notes.append(
                    f"{flag.text} (oidentd refuses connections over the limit; aioidentd "
                    f"closes the one idle longest to make room)"
                )
        elif letter == "t":
            if not (value.isascii() and value.isdigit()) or int(value) == 0:
                out.refuse(where, f"{value!r} is not a number of seconds above 0")
            else:
                server.append(("first_query_timeout", int(value)))
                server_notes.append(f"{flag.text} (seconds a connection may stay silent)")
        elif letter == "e":
            reply.append(("mask_errors", True))
            reply_notes.append(flag.text)
        elif letter == "o":
            opsys = value or "OTHER"
            try:
                check_token("opsys", opsys)
            except ValueError as exc:
                out.refuse(where, str(exc))
            else:
                reply.append(("opsys", opsys))
                reply_notes.append(flag.text)
        elif letter == "c":
            try:
                check_token("charset", value)
                codecs.lookup(value)
            except (ValueError, LookupError):
                out.refuse(where, f"{value!r} is not a charset Python knows")
            else:
                charset = value
                reply.append(("charset", value))
                reply_notes.append(flag.text)
        elif letter in ("m", "f", "M", "0", "C"):
            pass  # the NAT part and the system file's path
        elif letter == "q":
            out.note(where, "aioidentd logs no queries unless log_queries = true", False)
        elif letter == "S":
            out.note(where, "aioidentd always logs to standard error (the journal)", False)
        elif letter == "i":
            out.note(where, "aioidentd serve never forks into the background", False)
        elif letter == "I":
            out.note(
                where,
                "run 'aioidentd serve --inetd' from inetd (one connection on standard input)",
                False,
            )
        elif letter == "d":
            out.note(where, "use 'aioidentd serve --log-level debug'", False)
        elif letter == "r":
            out.refuse(
                where,
                f"answering USERID {value!r} when no connection matches would "
                f"name a user for a connection nobody has; aioidentd answers NO-USER "
                f"(RFC 1413)",
            )
        elif letter == "R":
            out.refuse(
                where,
                f"a static answer for every query is not a configuration-file "
                f"setting: run 'aioidentd serve --default {value}' (no lookups, no "
                f"policy), as oidentd -R reads no files either",
            )
        elif letter == "P":
            out.refuse(
                where,
                f"oidentd -P trusts {value} to ask about any connection by its "
                f"ports alone; aioidentd trusts a gateway only with a PROXY header "
                f'naming the real querier: [server] trusted_proxies = ["{value}"] '
                f'with an aioidentd gateway (forward_proxy = "v2")',
            )
        elif letter == "U":
            out.refuse(where, "libudb lookups are not supported")
        else:  # h, v
            out.refuse(where, "not an option a daemon runs with")
    if listen:
        server.insert(0, ("listen", listen))
    if server:
        out.part("[server]", ["from oidentd's flags: " + ", ".join(server_notes)], server)
    if reply:
        out.part("[reply]", ["from oidentd's flags: " + ", ".join(reply_notes)], reply)
    return charset, listen_port


# --------------------------------------------------------------------------- the system file


def _policy(
    out: _Writer, parsed: SystemFile, name: str, charset: str | None, listen_port: int
) -> None:
    for line in parsed.replaced:
        out.note(f"{name} line {line}", "a later 'default' block replaces this one (as in oidentd)")
    default_settings: list[tuple[str, object]] = [("answer", "username")] + [
        (setting, False) for _, setting in PERMISSIONS
    ]
    default_comment = [
        f"{name}: no 'default' block: oidentd's built-in default, the user's "
        f"name and no capabilities"
    ]
    rules: list[tuple[list[str], list[tuple[str, object]]]] = []
    blocks = [*parsed.users, *([parsed.default] if parsed.default is not None else [])]
    for block in blocks:
        who = "default" if block.user is None else f"user {block.user}"
        effective = _effective(out, block, name)
        for rng in effective:
            comments = [
                f"{name} line {rng.line}: {who} {{ {rng.head} {{ "
                + "; ".join(text for _, text in rng.statements)
                + " } }"
            ]
            settings = _settings(out, rng, f"{name} line {rng.line}", charset, listen_port)
            if settings is None:
                continue
            if block.user is None and rng.is_default:
                default_settings, default_comment = settings, comments
                continue
            conditions = _conditions(out, rng, block, f"{name} line {rng.line}")
            if conditions is None:
                continue
            rules.append((comments, conditions + settings))
        if block.user is None and not any(rng.is_default for rng in block.ranges):
            out.note(
                f"{name} line {block.line}",
                "the 'default' block has no 'default' "
                "range: oidentd 2.5 sends no answer at all for a connection none of its "
                "ranges matches (its child process dies); aioidentd answers the user's "
                "name",
            )
    out.part("[default]", default_comment, default_settings)
    if any(block.user in _ROOT for block in parsed.users):
        out.part(
            "[user.root]",
            [
                "aioidentd hides root unless [user.root] sets an answer; this one lets the "
                "rules for root (and the 'default' block) apply, as oidentd does"
            ],
            default_settings,
        )
    else:
        out.note(
            name,
            "oidentd 2.5 answers root's name like any user's; aioidentd hides "
            "root (HIDDEN-USER) unless a [user.root] table sets an answer (add "
            "'[user.root]' with 'answer = \"username\"' to keep oidentd's answer)",
        )
    for comments, keys in rules:
        out.part("[[rule]]", comments, keys)


def _effective(out: _Writer, block: Block, name: str) -> list[Range]:
    """The ranges of ``block`` that can apply, in the order oidentd tries them (last
    written first); the others are notes."""
    chosen: list[Range] = []
    seen: dict[object, Range] = {}
    catch_all: Range | None = None
    for rng in reversed(block.ranges):
        where = f"{name} line {rng.line}"
        if catch_all is not None:
            out.note(
                where,
                f"never applies: the 'default' range of line {catch_all.line}, "
                f"written after it, matches every connection first (as in oidentd)",
            )
            continue
        key = rng.filters()
        if key in seen:
            out.note(
                where,
                f"never applies: line {seen[key].line} has the same filters and "
                f"oidentd uses the later one",
            )
            continue
        seen[key] = rng
        chosen.append(rng)
        if rng.is_default:
            catch_all = rng
    return chosen


def _settings(
    out: _Writer, rng: Range, where: str, charset: str | None, listen_port: int
) -> list[tuple[str, object]] | None:
    off = [(setting, False) for _, setting in PERMISSIONS]
    force = rng.force
    if force is None:
        if "forward" in rng.caps:
            out.refuse(
                where,
                "allow forward: aioidentd does not read 'forward' in users' "
                "files (such a user gets their name, as when oidentd's forward fails "
                "without 'hide'); the rest of the range is converted",
            )
        return [("answer", "username")] + [
            (setting, capability in rng.caps) for capability, setting in PERMISSIONS
        ]
    if force.kind in _FORCED:
        return [("answer", _FORCED[force.kind]), *off]
    if force.kind == "reply":
        replies = list(force.replies)
        for reply in replies:
            try:
                safe_user_id(reply, charset)
            except ValueError as exc:
                out.refuse(where, f"force reply {reply!r}: {exc}; the range is left out")
                return None
        if len(replies) > 1:
            out.refuse(
                where,
                f"force reply with {len(replies)} replies: aioidentd answers one "
                f"fixed id; the first, {replies[0]!r}, is used",
            )
        return [("answer", "fixed"), ("reply", replies[0]), *off]
    assert force.forward is not None
    host, port_text = force.forward
    port = parse_port_range(port_text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        out.refuse(
            where,
            f"force forward {host}: names are not resolved; write the address "
            f"(the range is left out)",
        )
        return None
    assert port is not None
    if address.is_loopback and port[0] == listen_port:
        out.refuse(
            where,
            f"force forward {host} {port_text} asks this host's own identd "
            f"port (a loop); the range is left out",
        )
        return None
    target = f"[{address}]:{port[0]}" if address.version == 6 else f"{address}:{port[0]}"
    return [("answer", "forward"), ("forward", target), *off]


def _conditions(
    out: _Writer, rng: Range, block: Block, where: str
) -> list[tuple[str, object]] | None:
    keys: list[tuple[str, object]] = []
    for word, value, key in (
        ("to", rng.to, "remote_address"),
        ("from", rng.source, "local_address"),
    ):
        if value is None:
            continue
        try:
            keys.append((key, str(ipaddress.ip_address(value))))
        except ValueError:
            out.refuse(
                where,
                f"{word} {value}: host names are not resolved (oidentd resolves "
                f"them once at start); write the address. The range is left out",
            )
            return None
    for ports, key in ((rng.fport, "remote_port"), (rng.lport, "local_port")):
        if ports is not None:
            keys.append((key, ports[0] if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"))
    if block.user is not None:
        keys.insert(0, ("user", block.user))
    return keys


# --------------------------------------------------------------------------- NAT


def _nat(
    out: _Writer,
    flags: list[Flag],
    lines: list[MasqLine],
    name: str,
    have_file: bool,
    have_flags: bool,
    charset: str | None,
) -> None:
    letters = {flag.letter for flag in flags}
    forward = next((flag for flag in flags if flag.letter == "f"), None)
    first = next((flag for flag in flags if flag.letter in ("M", "0")), None)
    masq_on = bool(letters & {"m", "f", "M", "0"}) or (have_file and not have_flags)
    if have_file and not masq_on:
        out.note(
            name,
            "oidentd reads this file only with -m (or -f, -M), which the flags do "
            "not give: nothing converted from it",
        )
        return
    if masq_on:
        out.note(
            "flags" if have_flags else name,
            "oidentd's NAT support also answers for a local user's connection that was "
            "port-translated on this host itself (DNAT or REDIRECT between local ports); "
            "aioidentd's [[nat]] answers for inner machines only, so such a query gets "
            "NO-USER",
            comment=False,
        )
    static: list[tuple[list[str], list[tuple[str, object]]]] = []
    narrowest: MasqLine | None = None
    for line in lines:
        where = f"{name} line {line.line}"
        if line.network is None:
            out.refuse(where, f"{line.host}: host names are not resolved; write the address")
            continue
        if line.mask_problem is not None:
            out.refuse(where, f"{line.mask_problem}; write the network as a prefix")
            continue
        if line.network.version == 6:
            out.note(
                where,
                "oidentd 2.5 answers NAT queries for IPv4 only, so it never uses "
                "this line; left out, as aioidentd would use it",
            )
            continue
        if line.ignored:
            out.note(
                where, f"oidentd ignores the words after the system type: {' '.join(line.ignored)}"
            )
        if narrowest is not None and narrowest.network is not None and not line.masked:
            out.note(
                where,
                f"oidentd 2.5 compares this line with the host already masked by "
                f"line {narrowest.line} (a defect), so it can miss hosts it names; "
                f"aioidentd compares every line with the host itself",
            )
        if line.masked and narrowest is None:
            narrowest = line
        try:
            safe_user_id(line.reply, charset)
            check_token("opsys", line.opsys)
        except ValueError as exc:
            out.refuse(where, f"{exc}; the line is left out")
            continue
        static.append(
            (
                [f"{name} line {line.line}: {line.text}"],
                [
                    ("network", str(line.network)),
                    ("answer", "fixed"),
                    ("reply", line.reply),
                    ("opsys", line.opsys),
                ],
            )
        )
    forwards: list[tuple[list[str], list[tuple[str, object]]]] = []
    if forward is not None or first is not None:
        port_text = forward.value if forward is not None and forward.value else "113"
        ports = parse_port_range(port_text)
        shown = " ".join(flag.text for flag in (forward, first) if flag is not None)
        if ports is None or ports[0] != ports[1]:
            out.refuse(f"flag {shown}", f"{port_text!r} is not a port")
        else:
            forwards.append(
                (
                    [
                        f"from oidentd's flags: {shown} (forward to the inner host's identd; "
                        f"oidentd does this for IPv4 only)"
                    ],
                    [("network", "0.0.0.0/0"), ("answer", "forward"), ("forward_port", ports[0])],
                )
            )
    order = [*static, *forwards] if first is not None else [*forwards, *static]
    for comments, keys in order:
        out.part("[[nat]]", comments, keys)
