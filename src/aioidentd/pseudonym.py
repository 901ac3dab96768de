"""Pseudonyms: a user's id that is the same on one network, unrelated across networks, and
traceable only with the key.

``id = encode(BLAKE2b(key; epoch, network, user))``: a keyed MAC (BLAKE2b in its keyed
mode is one), so that nobody without the key can compute an id, link two ids of one user
on two networks, or go back from an id to the user. The same user reaching the same
network in the same epoch gets the same id every time, so a ban on it, or an abuse report
about it, holds; whoever has the key (the host's administrator, ``aioidentd resolve``)
can say which user an id is by trying every user.

What "the same network" is: a named network (a list of address ranges, all of them one
network), else the querier's address cut to a prefix (``/24`` for IPv4, ``/48`` for
IPv6 by default): the servers of one IRC network in several ranges each see another id
unless the network is named.

The ids: :data:`LENGTH` characters (default 10, where IRC servers cut user names), the
first a letter from ``a-z``, the rest from ``a-z0-9``. Lower case only: IRC compares
user names (and ban masks) without case, so ``[A-Za-z0-9]`` would look larger than it is
and two ids differing only in case would be one ban; ngircd accepts only
``[A-Za-z0-9]``; a leading letter, because a user name that is all digits reads as a uid.
:func:`collision_rate` says how likely two users share an id.

No I/O and no clock of its own but the one given (:class:`Pseudonyms` ``clock``):
usable by the daemon's policy and by any application (a bouncer giving each of its users
a stable id per network, with a key of its own).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal, TypeAlias, get_args

from aioidentd.protocol import ip_of

__all__ = [
    "LENGTH",
    "NETWORK_NAME",
    "ROTATIONS",
    "Pseudonyms",
    "Rotation",
    "collision_rate",
    "epoch_of",
    "overlap",
]

#: How often ids change: never, or at the start of each UTC day, ISO week, month or year.
Rotation = Literal["never", "daily", "weekly", "monthly", "yearly"]
ROTATIONS: Final[tuple[Rotation, ...]] = get_args(Rotation)
#: Characters of an id: the first from FIRST, the others from REST.
FIRST: Final = "abcdefghijklmnopqrstuvwxyz"
REST: Final = FIRST + "0123456789"
#: The default length: IRC servers cut user names near 10 (InspIRCd ``maxuser``,
#: Solanum's USERLEN).
LENGTH: Final = 10
#: Lengths allowed: below 6, collisions become likely on a busy host; above 20, no IRC
#: server shows the whole id.
MIN_LENGTH: Final = 6
MAX_LENGTH: Final = 20
#: The shortest key accepted (bytes); BLAKE2b takes at most 64.
MIN_KEY: Final = 16
MAX_KEY: Final = 64
#: Domain separation (BLAKE2b's personalization): the key makes ids of nothing else.
_PERSON: Final = b"aioidentd-pn-v1"
#: What a network's name may be: it is shown in logs and ``explain``.
NETWORK_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Entries of the per-(user, querier) cache before it is emptied.
_CACHE_SIZE: Final = 16384

_Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def collision_rate(accounts: int, length: int = LENGTH) -> float:
    """The probability that at least two of ``accounts`` users share an id on one network
    (the birthday bound over ``26 * 36**(length-1)`` ids)."""
    space = len(FIRST) * len(REST) ** (length - 1)
    pairs = accounts * (accounts - 1) / 2
    return -math.expm1(-pairs / space)


def epoch_of(rotate: Rotation, when: float) -> tuple[str, float, float]:
    """``(label, start, end)`` of the epoch that holds the time ``when`` (seconds since
    1970), in UTC: ``"2026-12"`` monthly, ``"2026-W49"`` weekly (ISO weeks, from
    Monday), ``"2026-12-01"`` daily, ``"2026"`` yearly, ``""`` for never."""
    if rotate == "never":
        return "", -math.inf, math.inf
    day = datetime.fromtimestamp(when, UTC).date()
    if rotate == "daily":
        first, after = day, day + timedelta(days=1)
        label = first.isoformat()
    elif rotate == "weekly":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
        year, week, _ = first.isocalendar()
        label = f"{year:04d}-W{week:02d}"
    elif rotate == "monthly":
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
        label = f"{first.year:04d}-{first.month:02d}"
    else:
        first = day.replace(month=1, day=1)
        after = first.replace(year=first.year + 1)
        label = f"{first.year:04d}"
    return label, _midnight(first), _midnight(after)


def _midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def overlap(named: Mapping[str, Iterable[_Network]]) -> str | None:
    """Why two named networks share an address (an address must be in one network only:
    its id must not depend on which network is looked at first), or None."""
    seen: list[tuple[_Network, str]] = []
    for name, ranges in named.items():
        for network in ranges:
            for other, owner in seen:
                if owner != name and network.overlaps(other):
                    return (
                        f"{network} of network {name!r} overlaps {other} of network "
                        f"{owner!r}: an address must be in one network only"
                    )
            seen.append((network, name))
    return None


def _network(text: str | _Network) -> _Network:
    return text if not isinstance(text, str) else ipaddress.ip_network(text.strip())


#: Octet -> id character, for octets below a multiple of the alphabet's size (the others
#: are dropped, so that every character is as likely as every other).
_REST_TABLE: Final = bytes(
    REST.encode()[octet % len(REST)] if octet < 256 - 256 % len(REST) else 0 for octet in range(256)
)
_REST_DROP: Final = bytes(range(256 - 256 % len(REST), 256))
_FIRST_BELOW: Final = 256 - 256 % len(FIRST)


class Pseudonyms:
    """Per-network ids for users, derived from a secret ``key`` (16-64 random bytes).

    ``networks`` names networks, each a list of address ranges
    (``{"libera": ["192.0.2.0/24", "2001:db8:1::/48"]}``): every querier in one of them
    sees the same id for a user. A querier in none is its own network cut to
    ``ipv4_prefix`` or ``ipv6_prefix`` bits. A range in two named networks is an error
    (ValueError): an id must not depend on the order of a list. ``rotate`` changes every
    id at the start of each epoch (UTC); ``clock`` is the wall clock it is read from.

    An application (a bouncer) keeps its own key and names its users as it likes
    (``of("alice", peer_address)``); the host daemon names a user by uid.
    """

    def __init__(
        self,
        key: bytes,
        *,
        length: int = LENGTH,
        rotate: Rotation = "never",
        networks: Mapping[str, Iterable[str | _Network]] | None = None,
        ipv4_prefix: int = 24,
        ipv6_prefix: int = 48,
    ) -> None:
        if not isinstance(key, bytes) or not MIN_KEY <= len(key) <= MAX_KEY:
            raise ValueError(f"the key must be {MIN_KEY}-{MAX_KEY} bytes")
        if not MIN_LENGTH <= length <= MAX_LENGTH:
            raise ValueError(f"length must be {MIN_LENGTH}..{MAX_LENGTH}, got {length}")
        if rotate not in ROTATIONS:
            raise ValueError(f"rotate must be one of {', '.join(ROTATIONS)}, got {rotate!r}")
        if not 0 <= ipv4_prefix <= 32 or not 0 <= ipv6_prefix <= 128:
            raise ValueError("ipv4_prefix must be 0..32 and ipv6_prefix 0..128")
        self._key = key
        self.length = length
        self.rotate: Rotation = rotate
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        named = {
            name: [_network(item) for item in ranges] for name, ranges in (networks or {}).items()
        }
        for name in named:
            if not NETWORK_NAME.fullmatch(name):
                raise ValueError(
                    f"a network's name is 1-64 of A-Z a-z 0-9 . _ - (a letter or digit "
                    f"first), got {name!r}"
                )
        clash = overlap(named)
        if clash is not None:
            raise ValueError(clash)
        self._named = [(network, name) for name, ranges in named.items() for network in ranges]
        self._networks: dict[str, tuple[str, str]] = {}
        self._ids: dict[tuple[str, str], tuple[str, str, str, float, float]] = {}
        self._epoch: tuple[str, float, float] = ("", math.inf, -math.inf)

    # -- what the id depends on

    def network(self, address: str) -> str:
        """The network ``address`` is in, as an administrator reads it: a name, or the
        address range (``"192.0.2.0/24"``). ``::ffff:a.b.c.d`` is ``a.b.c.d``; a scope
        (``%eth0``) is ignored. ValueError for what is not an IP address."""
        return self._network_of(address)[0]

    def _network_of(self, address: str) -> tuple[str, str]:
        """(as shown, as the MAC takes it: tagged, so that a name is never a range)."""
        found = self._networks.get(address)
        if found is not None:
            return found
        ip = ip_of(address)
        for network, name in self._named:
            if ip.version == network.version and ip in network:
                found = (name, f"name:{name}")
                break
        else:
            bits = self.ipv4_prefix if ip.version == 4 else self.ipv6_prefix
            cut = str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
            found = (cut, f"range:{cut}")
        if len(self._networks) >= _CACHE_SIZE:
            self._networks.clear()
        self._networks[address] = found
        return found

    def epoch(self, when: float | None = None) -> str:
        """The epoch label at ``when`` (default now): ``"2026-12"`` monthly, ``""`` for
        ``rotate = "never"``."""
        return self._epoch_at(time.time() if when is None else when)[0]

    def _epoch_at(self, now: float) -> tuple[str, float, float]:
        epoch = self._epoch
        if not epoch[1] <= now < epoch[2]:
            epoch = self._epoch = epoch_of(self.rotate, now)
        return epoch

    # -- ids

    def derive(self, user: str, network: str, epoch: str) -> str:
        """The id of ``user`` on ``network`` (a name or a range, as :meth:`network` gives
        it) in ``epoch`` (as :meth:`epoch` gives it)."""
        tagged = f"range:{network}" if "/" in network else f"name:{network}"
        return self._derive(user, tagged, epoch)

    def _derive(self, user: str, tagged: str, epoch: str) -> str:
        # Neither the epoch nor the tagged network holds a NUL, so only one (epoch,
        # network, user) gives these octets, whatever the user's name holds.
        message = f"{epoch}\0{tagged}\0{user}".encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(message, key=self._key, person=_PERSON).digest()
        # 64 octets: the first below _FIRST_BELOW makes the letter, and the usable ones
        # after it the rest (each octet is dropped with probability 4/256).
        index = 0
        while digest[index] >= _FIRST_BELOW:
            index += 1
        rest = digest[index + 1 :].translate(_REST_TABLE, _REST_DROP)[: self.length - 1]
        if len(rest) < self.length - 1:  # pragma: no cover - about 1 in 10**20
            raise ValueError("no id from this digest")
        return FIRST[digest[index] % len(FIRST)] + rest.decode("ascii")

    def of(self, user: str, address: str, when: float | None = None) -> str:
        """The id ``user`` has for a querier at ``address``, now (or at ``when``)."""
        return self.lookup(user, address, when)[0]

    def lookup(self, user: str, address: str, when: float | None = None) -> tuple[str, str, str]:
        """``(id, network, epoch)`` for ``user`` and a querier at ``address``: what
        :meth:`of`, :meth:`network` and :meth:`epoch` say, at the cost of one dictionary
        look-up when asked again within the epoch (the daemon asks on every query)."""
        now = time.time() if when is None else when
        cached = self._ids.get((user, address))
        if cached is not None and cached[3] <= now < cached[4]:
            return cached[:3]
        label, start, end = self._epoch_at(now)
        shown, tagged = self._network_of(address)
        found = (self._derive(user, tagged, label), shown, label)
        if len(self._ids) >= _CACHE_SIZE:
            self._ids.clear()
        self._ids[(user, address)] = (*found, start, end)
        return found

    def resolve(
        self, pseudonym: str, address: str, users: Iterable[str], when: float | None = None
    ) -> list[str]:
        """Every user in ``users`` whose id for a querier at ``address`` was ``pseudonym``
        at ``when`` (default now): more than one is a collision. Without case (IRC
        servers compare user names so); an id shorter than :attr:`length` but of at least
        :data:`MIN_LENGTH` characters matches as a prefix (a server that cut it)."""
        wanted = pseudonym.lower()
        label = self.epoch(when)
        tagged = self._network_of(address)[1]
        cut = len(wanted) < self.length and len(wanted) >= MIN_LENGTH
        found = []
        for user in users:
            derived = self._derive(user, tagged, label)
            if derived == wanted or (cut and derived.startswith(wanted)):
                found.append(user)
        return found
