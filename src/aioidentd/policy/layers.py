"""Which settings apply to a connection: the layers of the configuration, merged.

Each setting comes from the first layer that sets it: the first matching ``[[rule]]``,
the user's ``[user.X]`` tables, the user's ``[group.X]`` tables in file order,
``[default]``, the built-in default. Root has a layer of its own (hidden) unless a table
of its own sets an answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from typing import Any

from aioidentd.policy.settings import (
    BUILTIN_DEFAULT,
    BUILTIN_ROOT,
    PERMISSION_KEYS,
    AnswerSettings,
    Config,
    Network,
    Rule,
)
from aioidentd.policy.trail import SILENT, Trail
from aioidentd.policy.users import UserDB
from aioidentd.protocol import Address, ip_of

__all__ = ["Layers", "address_in", "merge_settings"]

#: The settings whose origin the trail names besides ``answer``.
_TRAIL_SETTINGS = PERMISSION_KEYS


def merge_settings(first: AnswerSettings, *rest: AnswerSettings) -> AnswerSettings:
    """Fill ``first``'s unset fields from ``rest`` in order (answer and reply go together).

    ``answer = "forward"`` sets :attr:`AnswerSettings.forward` and leaves ``answer`` to
    the next layer that sets one: what the user gets when the forward fails.
    """
    values: dict[str, Any] = {}
    for settings in (first, *rest):
        if settings.answer == "forward":
            # The first forward wins; the answer used when it fails is the next layer's.
            if "answer" not in values and "forward" not in values:
                values["forward"] = settings.forward
        elif "answer" not in values and settings.answer is not None:
            values["answer"] = settings.answer
            values["reply"] = settings.reply
            values["source"] = settings.source
            values["line"] = settings.line
        for name in _TRAIL_SETTINGS:
            if name not in values and getattr(settings, name) is not None:
                values[name] = getattr(settings, name)
    return AnswerSettings(**values)


def address_in(address: str, networks: Sequence[Network]) -> bool:
    """Whether an address is in any network, seeing ``::ffff:a.b.c.d`` and ``a.b.c.d``
    as the same host (a dual-stack socket reports IPv4 peers in the mapped form)."""
    try:
        ip = ip_of(address)
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv4Address):
        # A network written in the mapped form (::ffff:0:0/96) still matches.
        candidates.append(ipaddress.IPv6Address(f"::ffff:{ip}"))
    return any(candidate in network for candidate in candidates for network in networks)


class Layers:
    """The configuration's tables in precedence order, and their merge for one user and
    connection. The configuration is frozen, so what is the same for every query (root's
    settings, a user's with no table of its own under the built-in policy) is merged once.
    """

    def __init__(self, config: Config, user_db: UserDB) -> None:
        self.config = config
        self.user_db = user_db
        self._needs_groups = bool(config.groups) or any(rule.groups for rule in config.rules)
        #: What settings_for() merges for a user with no table of its own when there are
        #: no rules and no group tables (the built-in policy): the same every time.
        self._plain: AnswerSettings | None = None
        if not config.rules and not config.groups:
            self._plain = merge_settings(config.default, BUILTIN_DEFAULT)
        #: What settings_for() gives root when no table of its own sets an answer.
        self._root = merge_settings(BUILTIN_ROOT, BUILTIN_DEFAULT)

    def settings_for(
        self,
        uid: int,
        name: str | None,
        local: Address,
        remote: Address,
        trail: Trail = SILENT,
    ) -> AnswerSettings:
        """The effective settings: each one from the first layer that sets it.

        ``trail`` receives each step in words: which tables applied, which rules did not
        match and why, and where each setting came from.
        """
        config = self.config
        user_tables = [
            config.users[key] for key in (uid, name) if key is not None and key in config.users
        ]
        if uid == 0 and not any(table.answer is not None for table in user_tables):
            trail.add(
                "uid 0 is root and no [user.root] or [user.0] table sets an answer: "
                "the built-in root rule hides it"
            )
            return self._root
        if self._plain is not None and not user_tables:
            trail.add("no [user.X] table for this user; no [group.X] or [[rule]] tables")
            trail.extend(_origins, (), self._plain, config.default)
            return self._plain
        groups: Sequence[str] = self.user_db.groups_of(uid) if self._needs_groups else ()
        layers: list[AnswerSettings] = []
        for rule in config.rules:
            miss = mismatch(rule, uid, name, groups, local, remote)
            if miss is None:
                layers.append(rule.settings)
                trail.extend(_matches, rule)
                break
            trail.extend(_does_not_match, rule, miss)
        layers.extend(user_tables)
        member = set(groups)
        group_tables = [table for key, table in config.groups.items() if key in member]
        layers.extend(group_tables)
        merged = merge_settings(*layers, config.default, BUILTIN_DEFAULT)
        trail.extend(_applied, user_tables, group_tables)
        trail.extend(_origins, layers, merged, config.default)
        return merged


def mismatch(
    rule: Rule,
    uid: int,
    name: str | None,
    groups: Sequence[str],
    local: Address,
    remote: Address,
) -> str | None:
    """Why ``rule`` does not apply to this connection and user, or None when it does."""
    if rule.local_ports and not any(local[1] in ports for ports in rule.local_ports):
        return f"local port {local[1]} is not {_any_of(rule.local_ports)}"
    if rule.remote_ports and not any(remote[1] in ports for ports in rule.remote_ports):
        return f"remote port {remote[1]} is not {_any_of(rule.remote_ports)}"
    if rule.local_addresses and not address_in(local[0], rule.local_addresses):
        return f"local address {local[0]} is not in {_any_of(rule.local_addresses)}"
    if rule.remote_addresses and not address_in(remote[0], rule.remote_addresses):
        return f"remote address {remote[0]} is not in {_any_of(rule.remote_addresses)}"
    if rule.users and uid not in rule.users and (name is None or name not in rule.users):
        return f"the user is not {_any_of(rule.users)}"
    if rule.groups and not any(group in rule.groups for group in groups):
        return f"the user is in none of the groups {_any_of(rule.groups)}"
    return None


def table_name(settings: AnswerSettings) -> str:
    """Where settings were written, as the trail names it: ``[user.alice] (line 4)``."""
    return settings.source if settings.line is None else f"{settings.source} (line {settings.line})"


def _any_of(items: Sequence[object]) -> str:
    return " or ".join(str(item) for item in items)


def _matches(rule: Rule) -> Iterator[str]:
    yield f"{table_name(rule.settings)} matches ({rule.describe() or 'any'})"


def _does_not_match(rule: Rule, miss: str) -> Iterator[str]:
    yield f"{table_name(rule.settings)} does not match: {miss}"


def _applied(
    user_tables: Sequence[AnswerSettings], group_tables: Sequence[AnswerSettings]
) -> Iterator[str]:
    for table in user_tables:
        yield f"{table_name(table)} applies"
    for table in group_tables:
        yield f"{table_name(table)} applies (a group of the user)"


def _origins(
    layers: Sequence[AnswerSettings], merged: AnswerSettings, default: AnswerSettings
) -> Iterator[str]:
    """Where each effective setting came from, by :func:`merge_settings`'s rule: the
    first layer that sets it (``answer`` carries its own source)."""
    answer = f'"{merged.answer}"'
    if merged.answer == "fixed":
        answer += f", reply = {merged.reply!r}"
    yield f"answer = {answer} from {table_name(merged)}"
    for setting in _TRAIL_SETTINGS:
        value = getattr(merged, setting)
        origin = next(
            (layer for layer in (*layers, default) if getattr(layer, setting) is not None),
            BUILTIN_DEFAULT,
        )
        if value or origin is not BUILTIN_DEFAULT:
            yield f"{setting} = {str(value).lower()} from {table_name(origin)}"
