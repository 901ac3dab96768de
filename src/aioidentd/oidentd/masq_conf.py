"""oidentd's NAT file (``/etc/oidentd_masq.conf``), read as oidentd 2.5 reads it,
without any I/O.

One rule per line, ``HOST[/MASK] REPLY OPSYS``, separated by blanks; a line whose first
character is ``#`` and a line of blanks are skipped; the first line whose host (or
network) holds the inner machine answers. A mask is a prefix length 1..31 or a dotted
mask, for IPv4 only (oidentd ignores it on an IPv6 address). Words after the third are
ignored by oidentd. A line oidentd cannot read (no reply, no system type, a bad mask)
ends its search there, so such a file is refused here as a whole, with the line.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from aioidentd.oidentd.system_conf import OidentdSyntaxError

__all__ = ["MasqLine", "parse_masq_file"]

#: oidentd reads lines into a 4096-octet buffer; a longer line ends its search.
_MAX_LINE: Final = 4095


@dataclass(frozen=True, slots=True)
class MasqLine:
    """One rule. ``network`` is None when ``host`` is a name (oidentd resolves it at
    each query); ``mask_problem`` says why a mask cannot be written as a prefix."""

    line: int
    text: str
    host: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    reply: str
    opsys: str
    ignored: tuple[str, ...] = ()
    masked: bool = False
    mask_problem: str | None = None


def parse_masq_file(text: str) -> list[MasqLine]:
    lines: list[MasqLine] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        if len(raw) > _MAX_LINE:
            raise OidentdSyntaxError(number, f"longer than {_MAX_LINE} characters")
        if raw.startswith("#") or not raw.strip(" \t"):
            continue
        line = raw.partition("\r")[0]
        words = line.replace("\t", " ").split()
        if not words:
            continue
        host, slash, mask = words[0].partition("/")
        if len(words) < 2:
            raise OidentdSyntaxError(number, f"{words[0]!r} needs a reply and a system type")
        if len(words) < 3:
            raise OidentdSyntaxError(number, f"{words[0]} {words[1]} needs a system type")
        network, problem = _network(number, host, mask if slash else None)
        lines.append(
            MasqLine(
                number,
                line.strip(),
                host,
                network,
                words[1],
                words[2],
                tuple(words[3:]),
                bool(slash),
                problem,
            )
        )
    return lines


def _network(
    number: int, host: str, mask: str | None
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | None, str | None]:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not host or host.startswith("#"):
            raise OidentdSyntaxError(number, f"not an address: {host!r}") from None
        return None, None  # a host name
    if mask is None or address.version == 6:
        return ipaddress.ip_network(address), None
    if mask.isascii() and mask.isdigit():
        prefix = int(mask)
        if not 1 <= prefix <= 31:
            raise OidentdSyntaxError(number, f"invalid mask /{mask} (oidentd takes 1..31)")
        return ipaddress.ip_network(f"{address}/{prefix}", strict=False), None
    try:
        dotted = ipaddress.IPv4Address(mask)
    except ValueError:
        raise OidentdSyntaxError(number, f"invalid mask: {mask!r}") from None
    bits = int(dotted)
    prefix = bin(bits).count("1")
    if bits != ((1 << 32) - 1) ^ ((1 << (32 - prefix)) - 1):
        host_network = ipaddress.ip_network(address)
        return host_network, f"the mask {mask} is not contiguous"
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False), None
