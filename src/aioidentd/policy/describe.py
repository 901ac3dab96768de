"""The effective policy of a configuration in plain words, for ``aioidentd check-config``.

Run before a reload, so it says what the daemon will do, not what the file says: the
built-in root rule when the file does not override it, each table's settings merged as
:func:`~aioidentd.policy.layers.merge_settings` will merge them.
"""

from __future__ import annotations

from aioidentd.policy.layers import merge_settings
from aioidentd.policy.settings import BUILTIN_DEFAULT, Config

__all__ = ["describe"]


def describe(config: Config) -> str:
    """The effective policy in plain words, for ``aioidentd check-config``."""
    daemon, reply = config.daemon, config.reply
    listen = "every interface" if daemon.listen is None else ", ".join(daemon.listen)
    group = daemon.group or "(the user's primary group)"
    lines = [
        f"{config.filename}: configuration is valid",
        "",
        "server:",
        f"  listen on {listen}, port {daemon.port}",
        f"  {'many queries' if daemon.multiple else 'one query'} per connection, "
        f"idle timeout {daemon.idle_timeout:g} s, response timeout "
        f"{daemon.response_timeout:g} s, forward timeout {daemon.forward_timeout:g} s, "
        f"at most {daemon.max_connections} connections",
        f"  {daemon.reply_style} replies; run as user {daemon.user}, group "
        f"{group}{' (root allowed)' if daemon.allow_root else ''}; "
        f"queries {'logged' if daemon.log_queries else 'not logged'}; "
        f"{daemon.workers} worker process{'es' if daemon.workers > 1 else ''}"
        f"{' on uvloop' if daemon.uvloop else ''}",
        *_metrics(config),
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
        key in config.users and config.users[key].answer is not None for key in ("root", 0)
    )
    if not root_set:
        lines.append("  root: hidden (built-in; set answer in [user.root] to change)")
    if config.rules:
        lines.append("  rules:")
        for rule in config.rules:
            where = f" (line {rule.line})" if rule.line else ""
            lines.append(
                f"    {rule.number}.{where} if {rule.describe()}: {rule.settings.describe()}"
            )
    for label, table in (("user", config.users), ("group", config.groups)):
        for key, settings in table.items():
            lines.append(f"  [{label}.{key}] {settings.describe()}")
    effective = merge_settings(config.default, BUILTIN_DEFAULT)
    lines.append(f"  [default] {effective.describe()}")
    if config.uses_pseudonyms:
        lines.extend(_pseudonyms(config))
    if config.nat:
        lines.append("NAT (connections this host translates, found in conntrack; first match):")
        for entry in config.nat:
            where = f" (line {entry.line})" if entry.line else ""
            lines.append(f"  {entry.number}.{where} {entry.describe()}")
    if daemon.trusted_proxies:
        trusted = ", ".join(str(network) for network in daemon.trusted_proxies)
        lines.append(f"PROXY headers accepted from {trusted}")
    if daemon.claims_socket is not None:
        lines.append(
            f"claims socket {daemon.claims_socket}: users allowed to choose may claim their "
            "own connections (aioidentd.HostClaims)"
        )
    tables = [config.default, *config.users.values(), *config.groups.values()]
    if any(table.may_choose() for table in [*tables, *(r.settings for r in config.rules)]):
        lines.append(
            "users allowed to choose: ~/.aioidentd-reply, else ~/.config/oidentd.conf or "
            "~/.oidentd.conf (global and to/fport/from/lport blocks with reply, random, "
            "random_numeric, numeric, hide; check one with --user-file)"
        )
    return "\n".join(lines)


def _metrics(config: Config) -> list[str]:
    metrics = config.metrics
    lines = []
    if metrics.listen is not None:
        lines.append(f"  metrics on http://{metrics.listen}/metrics")
    if metrics.textfile is not None:
        lines.append(
            f"  metrics written to {metrics.textfile} every {metrics.textfile_interval:g} s"
        )
    return lines


def _pseudonyms(config: Config) -> list[str]:
    """What ``answer = "pseudonym"`` sends, in words."""
    settings = config.pseudonym
    rotation = "never rotated" if settings.rotate == "never" else f"rotated {settings.rotate}"
    lines = [
        f"pseudonyms: {settings.length} characters [a-z0-9], {rotation} (UTC), key "
        f"{settings.key_file} (created at the first start if missing)",
    ]
    for name, ranges in settings.networks.items():
        lines.append(f"  network {name}: {', '.join(str(network) for network in ranges)}")
    lines.append(
        f"  any other querier: its /{settings.ipv4_prefix} (IPv4) or /{settings.ipv6_prefix} "
        f"(IPv6) is its network"
    )
    return lines
