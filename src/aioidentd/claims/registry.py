"""Claimed connections: the application names the owner of each of its own connections.

Why this exists: an application that embeds an ident server (an IRC bot, a bouncer, a
bridge) knows exactly which of its connections belongs to which identity, and the only
thing it needs from the server is to be asked about *that* connection. Every application
that wrote this matching by hand got one of three things wrong (see the notes on
Heisenbridge, matrix-appservice-irc, Quassel and lurker in the project's landscape notes):

* **The key.** A connection is named by four things: our local address and port, the
  querier's address (RFC 1413: only the other end of a connection may ask about it) and
  the queried remote port. Keying by the local port alone answers strangers and confuses
  two servers reached from the same port number. Addresses are compared in one canonical
  text form (:func:`normalise_host`): ``::ffff:192.0.2.1`` is ``192.0.2.1``, IPv6 is
  compressed lower case, and a link-local address carries its interface index, because
  ``fe80::1`` on two interfaces is two different hosts.
* **The race.** An IRC server asks the moment it accepts, which can be before the
  application's ``connect()`` call has even returned. :func:`connect_claimed` therefore
  binds the socket, claims it and only then connects; and for applications that can only
  claim afterwards, :class:`PendingConnection` lets a query from that one querier wait a
  short, bounded time (never every query, as a global "wait for connections in progress"
  would).
* **The lifetime.** A claim must die with its connection, or a later connection that
  reuses the same ports inherits a stranger's identity, and a long-running bouncer grows
  without bound. A claim holds a weak reference to its socket or transport, is checked
  for being closed on every match, and every new claim sweeps two old ones, so dead
  claims are removed at the rate new ones arrive.

Matching costs one or two dictionary look-ups whatever the number of claims.
Claims and releases may come from any thread (the registry's mutations take a lock; the
event loop's look-ups are single dictionary reads).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import socket
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, TypeAlias

from aioidentd.protocol import (
    Address,
    ErrorReply,
    ReplyStyle,
    UserIdReply,
    check_port,
    encode_reply,
    unmapped,
)

__all__ = [
    "Claim",
    "ClaimRegistry",
    "ClaimTarget",
    "ConnectionKey",
    "PendingConnection",
    "Wait",
    "normalise_host",
    "original_destination",
]

#: What :meth:`IdentServer.claim` accepts: a stream writer, a transport, a socket, or the
#: two ends ``((local_host, local_port), (remote_host, remote_port))`` of a connection.
ClaimTarget: TypeAlias = (
    "asyncio.StreamWriter | asyncio.BaseTransport | socket.socket | tuple[Address, Address]"
)

#: Key of a claim: (local host or None for "any local address", local port,
#: remote host, remote port), hosts in :func:`normalise_host` form.
_Key: TypeAlias = tuple[str | None, int, str, int]

#: Old claims examined per new claim: more than one, so that dead claims are removed
#: faster than they can be added.
_SWEEP_PER_CLAIM: Final = 2
#: Bound of the address normalisation memo (queries come from few distinct addresses).
_MEMO_SIZE: Final = 4096
_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})


def _scope_index(scope: str | int | None) -> int:
    if scope is None or scope == "":
        return 0
    if isinstance(scope, int):
        return scope
    if scope.isdigit():
        return int(scope)
    try:
        return socket.if_nametoindex(scope)
    except OSError:
        raise ValueError(f"unknown network interface {scope!r} in a scoped address") from None


def normalise_host(host: str, scope_id: int | str | None = None) -> str:
    """The canonical text of an IP address, for comparing connection ends.

    IPv4 stays dotted-quad; a v4-mapped IPv6 address becomes its IPv4 address; IPv6 is
    compressed lower case; a link-local IPv6 address gets ``%<interface index>`` when the
    scope is known (from ``fe80::1%eth0``, ``fe80::1%2`` or ``scope_id``, the fourth item of
    a socket address). Raises :class:`ValueError` for anything that is not an IP address:
    claims match addresses, never names.
    """
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    text, _, scope_text = unmapped(host).partition("%")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not an IP address: {host!r}") from None
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.is_link_local:
        index = _scope_index(scope_text or scope_id)
        if index:
            return f"{address.compressed}%{index}"
    return address.compressed


def _unscoped(host: str) -> str:
    return host.partition("%")[0]


def _sockaddr_host(sockaddr: Any) -> str:
    """Normalised host of a socket address tuple (with its IPv6 scope id)."""
    scope = sockaddr[3] if len(sockaddr) >= 4 else None
    return normalise_host(str(sockaddr[0]), scope)


class Claim:
    """One claimed connection: who the server answers for it, until :meth:`release`.

    Returned by :meth:`IdentServer.claim`; also a context manager (``with server.claim(…)``)
    that releases on exit. A claim on a socket or transport also ends, by itself, when that
    socket or transport is closed (or garbage collected): it never answers for a later
    connection that happens to reuse the same ports. A claim on explicit addresses has
    nothing to watch and lasts until released.
    """

    __slots__ = (
        "_key",
        "_lines",
        "_owner",
        "_registry",
        "_released",
        "charset",
        "error",
        "opsys",
        "user_id",
    )

    def __init__(
        self,
        registry: ClaimRegistry | None,
        key: _Key | None,
        owner: Callable[[], object | None] | None,
        user_id: str | bytes | None,
        opsys: str,
        charset: str | None,
        error: str | None,
    ) -> None:
        self._registry = registry
        self._key = key
        self._owner = owner
        self._released = False
        self._lines: dict[str, bytes] = {}
        #: The id answered (``None`` when the claim answers an error).
        self.user_id = user_id
        self.opsys = opsys
        self.charset = charset
        #: The error answered instead of an id (``HIDDEN-USER``, ...), or ``None``.
        self.error = error

    @property
    def local(self) -> tuple[str | None, int] | None:
        """``(host, port)`` of our end, normalised (host ``None``: any local address);
        ``None`` when the socket was already closed."""
        key = self._key
        return None if key is None else (key[0], key[1])

    @property
    def remote(self) -> Address | None:
        """``(host, port)`` of the remote end, normalised; ``None`` when the socket was
        already closed."""
        key = self._key
        return None if key is None else (key[2], key[3])

    @property
    def active(self) -> bool:
        """True while the claim answers: not released, not replaced by a newer claim on
        the same connection, and its socket or transport still open."""
        return (
            not self._released
            and self._registry is not None
            and self._key is not None
            and self._registry._entries.get(self._key) is self
            and self._alive()
        )

    def _alive(self) -> bool:
        owner_ref = self._owner
        if owner_ref is None:
            return True  # explicit addresses: until released
        owner = owner_ref()
        if owner is None:
            return False
        if isinstance(owner, socket.socket):
            return owner.fileno() != -1
        is_closing = getattr(owner, "is_closing", None)
        return is_closing is None or not is_closing()

    def answer_line(self, server_port: int, client_port: int, style: ReplyStyle) -> bytes:
        """The reply line this claim answers to a query about ``server_port, client_port``."""
        line = self._lines.get(style)
        if line is None:
            reply: UserIdReply | ErrorReply
            if self.error is not None:
                reply = ErrorReply(server_port, client_port, self.error)
            else:
                assert self.user_id is not None
                reply = UserIdReply.from_text(
                    server_port, client_port, self.opsys, self.user_id, self.charset
                )
            line = self._lines[style] = encode_reply(reply, style)
        return line

    def release(self) -> None:
        """Stop answering for this connection (queries then go to the handlers, then the
        fallback). Releasing twice, or after the connection closed, does nothing."""
        if self._released:
            return
        self._released = True
        if self._registry is not None:
            self._registry._remove(self)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        answer = f"ERROR {self.error}" if self.error is not None else f"USERID {self.user_id!r}"
        if self.local is None or self.remote is None:
            where = "closed socket"
        else:
            local = f"{self.local[0] or '*'}:{self.local[1]}"
            where = f"{local} -> {self.remote[0]}:{self.remote[1]}"
        state = "active" if self.active else "inactive"
        return f"<Claim {where} {answer} {state}>"


class ConnectionKey(NamedTuple):
    """The connection a query asks about, as plain values the server fills from its
    socket: our address the query came to and the queried port on it, the querier's
    address and its port."""

    local: str
    server_port: int
    peer: str
    client_port: int
    #: The raw socket addresses (IPv6 scope ids included), for link-local addresses.
    sockname: Any = None
    peername: Any = None
    #: The query's pre-NAT destination (``SO_ORIGINAL_DST``) when a firewall redirected it.
    original: str | None = None


class Wait(NamedTuple):
    """No claim yet, but one is being made for this querier: the query may wait for it
    (see :meth:`ClaimRegistry.hold`)."""

    host: str
    keys: tuple[_Key, ...]


class _Waiter:
    """A query held by the bounded wait (see :class:`PendingConnection`)."""

    __slots__ = ("done", "host", "keys", "on_claim", "on_timeout", "timer")

    def __init__(
        self,
        wait: Wait,
        on_claim: Callable[[Claim], None],
        on_timeout: Callable[[], None],
        done: Callable[[], bool],
    ) -> None:
        self.host = wait.host
        self.keys = wait.keys
        self.on_claim = on_claim
        self.on_timeout = on_timeout
        self.done = done
        self.timer: asyncio.TimerHandle | None = None


class ClaimRegistry:
    """Every live claim of one server, by exact connection, plus the pending connections
    that make a query wait (internal: reached through :class:`IdentServer`)."""

    def __init__(self, claim_wait: float) -> None:
        self.claim_wait = claim_wait
        self._entries: dict[_Key, Claim] = {}
        self._wildcards = 0  # entries whose local host is "any"
        self._order: collections.deque[Claim] = collections.deque()
        self._lock = threading.Lock()
        self._memo: dict[str, str] = {}
        self._pending: dict[str, int] = {}
        self._waiters: dict[str, list[_Waiter]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries) or bool(self._pending)

    @property
    def held(self) -> int:
        """Queries held by the bounded wait now."""
        return sum(len(waiters) for waiters in self._waiters.values())

    @property
    def redirectable(self) -> bool:
        """Whether a miss is worth looking up again by the pre-NAT destination (there
        are claims at all)."""
        return bool(self._entries)

    def claims(self) -> list[Claim]:
        """The claims that still answer."""
        return [claim for claim in list(self._entries.values()) if claim._alive()]

    # -- adding and removing ------------------------------------------------------------

    def add(
        self,
        target: object,
        user_id: str | bytes | None,
        *,
        opsys: str = "UNIX",
        charset: str | None = None,
        error: str | None = None,
        remote: tuple[str, int] | None = None,
    ) -> Claim:
        if (user_id is None) == (error is None):
            raise ValueError("claim needs exactly one of user_id and error")
        if error is not None:
            error = ErrorReply(0, 0, error).error  # raises ValueError; NO-USER upper case
        else:
            assert user_id is not None
            UserIdReply.from_text(0, 0, opsys, user_id, charset)  # raises ValueError
        key, owner = self._key_of(target, remote)
        claim = Claim(self, key, owner, user_id, opsys, charset, error)
        if key is None:
            claim._registry = None  # the socket is closed already: never answers
            return claim
        self._insert(claim)
        return claim

    def _insert(self, claim: Claim) -> None:
        key = claim._key
        assert key is not None
        with self._lock:
            old = self._entries.get(key)
            self._entries[key] = claim
            if old is None and key[0] is None:
                self._wildcards += 1
            self._order.append(claim)
            self._sweep(_SWEEP_PER_CLAIM)
        if key[2] in self._waiters:
            self._wake(key[2])

    def _sweep(self, count: int) -> None:
        """Examine the ``count`` oldest claims; drop the dead, requeue the live (lock held)."""
        order = self._order
        for _ in range(min(count, len(order) - 1)):
            claim = order.popleft()
            key = claim._key
            if key is None or self._entries.get(key) is not claim:
                continue  # released or replaced: already out of the table
            if claim._released or not claim._alive():
                self._drop(key)
            else:
                order.append(claim)

    def _drop(self, key: _Key) -> None:
        del self._entries[key]
        if key[0] is None:
            self._wildcards -= 1

    def _remove(self, claim: Claim) -> None:
        key = claim._key
        if key is None:
            return
        with self._lock:
            if self._entries.get(key) is claim:
                self._drop(key)

    def rekey(self, claim: Claim, local_host: str) -> None:
        """Narrow a claim made before connecting ("any local address") to the local
        address the kernel chose. The exact entry exists before the wildcard one goes, so
        there is no moment without a claim."""
        key = claim._key
        if key is None or key[0] is not None or claim._released:
            return
        exact: _Key = (local_host, key[1], key[2], key[3])
        with self._lock:
            if self._entries.get(key) is not claim:
                return
            self._entries[exact] = claim
            claim._key = exact
            self._drop(key)

    # -- keys ---------------------------------------------------------------------------

    def _key_of(
        self, target: object, remote: tuple[str, int] | None
    ) -> tuple[_Key | None, Callable[[], object | None] | None]:
        if isinstance(target, tuple):
            if remote is not None:
                raise TypeError("remote= is for a socket that is not connected yet")
            return _explicit_key(target), None
        owner: object
        if isinstance(target, asyncio.StreamWriter):
            owner = target.transport
        elif isinstance(target, socket.socket | asyncio.BaseTransport) or hasattr(
            target, "get_extra_info"
        ):
            owner = target
        else:
            raise TypeError(
                "claim() takes a StreamWriter, a transport, a socket or "
                f"((local_host, local_port), (remote_host, remote_port)), not {target!r}"
            )
        ref = _weak(owner)
        if isinstance(owner, socket.socket):
            if owner.fileno() == -1:
                return None, ref
            if owner.type != socket.SOCK_STREAM or owner.family not in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                raise ValueError(f"claim() needs a TCP socket, got {owner!r}")
            sockname = owner.getsockname()
            try:
                peername: Any = owner.getpeername()
            except OSError:
                peername = None
        else:
            get = owner.get_extra_info
            is_closing = getattr(owner, "is_closing", None)
            if is_closing is not None and is_closing():
                return None, ref
            sockname, peername = get("sockname"), get("peername")
            if sockname is None:
                raise ValueError(f"claim() needs a TCP transport, got {owner!r}")
        if remote is not None:
            if peername is not None:
                raise ValueError(
                    "remote= is for a socket that is not connected yet; this one is "
                    f"connected to {peername[0]} port {peername[1]}"
                )
            peername = remote
        if peername is None:
            raise ValueError(
                "the socket is not connected: pass remote=(host, port), the address it "
                "will connect to (or use IdentServer.open_connection / connect_socket)"
            )
        local_port = int(sockname[1])
        if local_port == 0:
            raise ValueError("the socket has no local port yet: bind it before claiming")
        local_host = None if sockname[0] in _WILDCARDS else _sockaddr_host(sockname)
        remote_host = _sockaddr_host(peername)
        check_port("remote port", int(peername[1]))
        return (local_host, local_port, remote_host, int(peername[1])), ref

    def _norm(self, host: str) -> str:
        memo = self._memo
        value = memo.get(host)
        if value is None:
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            value = memo[host] = normalise_host(host)
        return value

    # -- answering ----------------------------------------------------------------------

    def _find(self, keys: tuple[_Key, ...]) -> Claim | None:
        entries = self._entries
        for key in keys:
            claim = entries.get(key)
            if claim is not None:
                if claim._alive():
                    return claim
                self._remove(claim)
        return None

    def _keys(self, key: ConnectionKey) -> tuple[str, tuple[_Key, ...]]:
        """The querier's host and the keys that may name the queried connection, most
        exact first."""
        local = self._norm(key.local)
        peer = self._norm(key.peer)
        server_port, client_port = key.server_port, key.client_port
        if peer.startswith("fe80:") or local.startswith("fe80:"):
            # Link-local: the scope (interface) is part of the address, and only the
            # connection's own socket address has it.
            if key.sockname is not None and key.peername is not None:
                local, peer = _sockaddr_host(key.sockname), _sockaddr_host(key.peername)
            keys: list[_Key] = [(local, server_port, peer, client_port)]
            # A claim on explicit addresses written without a scope.
            for lh, ph in ((_unscoped(local), peer), (local, _unscoped(peer))):
                keys.append((lh, server_port, ph, client_port))
            keys.append((_unscoped(local), server_port, _unscoped(peer), client_port))
            keys.append((None, server_port, peer, client_port))
            keys.append((None, server_port, _unscoped(peer), client_port))
            return peer, tuple(dict.fromkeys(keys))
        if self._wildcards:
            return peer, (
                (local, server_port, peer, client_port),
                (None, server_port, peer, client_port),
            )
        return peer, ((local, server_port, peer, client_port),)

    def match(self, key: ConnectionKey, may_wait: bool = True) -> Claim | Wait | None:
        """The claim on the connection ``key`` names; else, when ``may_wait`` and a
        connection to the querier is being made (:class:`PendingConnection`), a
        :class:`Wait` to :meth:`hold` the query with; else None (the handlers decide)."""
        try:
            peer, keys = self._keys(key)
        except ValueError:
            return None  # not an IP connection (a UNIX socket handed to serve_connection)
        claim = self._find(keys)
        if claim is None and self._entries and key.original is not None:
            # A firewall redirect (port 113 to the application's port, as the README
            # shows) rewrote the local address to the interface's primary address, or to
            # the loopback address for a query from this host.
            original = key.original
            redirected = tuple(
                (original, k[1], k[2], k[3]) for k in keys if k[0] is not None and k[0] != original
            )
            if redirected:
                keys += redirected
                claim = self._find(redirected)
        if claim is not None:
            return claim
        if (
            may_wait
            and self.claim_wait > 0
            and (self._pending.get(peer) or self._pending.get(_unscoped(peer)))
        ):
            return Wait(peer, keys)
        return None

    # -- the bounded wait ---------------------------------------------------------------

    def hold(
        self,
        wait: Wait,
        seconds: float,
        on_claim: Callable[[Claim], None],
        on_timeout: Callable[[], None],
        done: Callable[[], bool],
    ) -> None:
        """Wait at most ``seconds`` for a claim matching ``wait``: ``on_claim(claim)`` when
        one is made, else ``on_timeout()``; neither once ``done()`` (answered meanwhile)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        waiter = _Waiter(wait, on_claim, on_timeout, done)
        waiter.timer = loop.call_later(max(0.0, seconds), self._expire, waiter)
        self._waiters.setdefault(waiter.host, []).append(waiter)

    def _expire(self, waiter: _Waiter) -> None:
        waiters = self._waiters.get(waiter.host)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[waiter.host]
        waiter.timer = None
        self._settle(waiter, proceed=True)

    def _settle(self, waiter: _Waiter, proceed: bool) -> bool:
        """Answer a held query from a claim if one exists now; else, if ``proceed``, hand
        it on. Returns True when the waiter is done."""
        if waiter.done():
            return True
        claim = self._find(waiter.keys)
        if claim is not None:
            waiter.on_claim(claim)
            return True
        if proceed:
            waiter.on_timeout()
            return True
        return False

    def _wake(self, host: str) -> None:
        """A claim was made or a pending connection ended for ``host``: let its held
        queries look again (on the event loop's thread, whoever called)."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() != self._loop_thread:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._wake_now, host)
            return
        self._wake_now(host)

    def _wake_now(self, host: str) -> None:
        waiters = self._waiters.pop(host, None)
        if not waiters:
            return
        still_pending = bool(self._pending.get(host))
        keep: list[_Waiter] = []
        for waiter in waiters:
            if self._settle(waiter, proceed=not still_pending):
                if waiter.timer is not None:
                    waiter.timer.cancel()
                    waiter.timer = None
            else:
                keep.append(waiter)
        if keep:
            self._waiters.setdefault(host, []).extend(keep)

    def begin_pending(self, hosts: Sequence[str]) -> None:
        with self._lock:
            for host in hosts:
                self._pending[host] = self._pending.get(host, 0) + 1

    def end_pending(self, hosts: Sequence[str]) -> None:
        ended: list[str] = []
        with self._lock:
            for host in hosts:
                count = self._pending.get(host, 0) - 1
                if count > 0:
                    self._pending[host] = count
                else:
                    self._pending.pop(host, None)
                    ended.append(host)
        for host in ended:
            if host in self._waiters:
                self._wake(host)

    def close(self) -> None:
        """Cancel every held query's timer (the server answers them on close)."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                if waiter.timer is not None:
                    waiter.timer.cancel()
                    waiter.timer = None
        self._waiters.clear()


#: getsockopt() names for the pre-NAT destination of a redirected connection (Linux
#: netfilter: SO_ORIGINAL_DST at SOL_IP, IP6T_SO_ORIGINAL_DST at SOL_IPV6).
_SO_ORIGINAL_DST: Final = 80
_SOL_IP: Final = 0
_SOL_IPV6: Final = 41


def original_destination(sock: Any) -> str | None:
    """The address a redirected ident connection was sent to, or None (not redirected,
    not Linux, no such socket option)."""
    if sock is None:
        return None
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(_SOL_IP, _SO_ORIGINAL_DST, 16)
            return socket.inet_ntop(socket.AF_INET, raw[4:8])
        raw = sock.getsockopt(_SOL_IPV6, _SO_ORIGINAL_DST, 28)
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        scope = int.from_bytes(raw[24:28], "little")
        return normalise_host(host, scope)
    except (OSError, ValueError, AttributeError):
        return None


def _weak(owner: object) -> Callable[[], object | None]:
    try:
        return weakref.ref(owner)
    except TypeError:
        # Not weakly referenceable (some event loops' transports): a strong reference;
        # the sweep still drops the claim once the transport is closed.
        return lambda: owner


def _explicit_key(ends: tuple[Any, ...]) -> _Key:
    try:
        (local_host, local_port), (remote_host, remote_port) = ends
    except (TypeError, ValueError):
        raise TypeError(
            f"a connection is ((local_host, local_port), (remote_host, remote_port)), got {ends!r}"
        ) from None
    check_port("local port", local_port)
    check_port("remote port", remote_port)
    local = None if local_host in _WILDCARDS else normalise_host(local_host)
    return (local, local_port, normalise_host(remote_host), remote_port)


class PendingConnection:
    """The application is connecting to ``host`` and will claim the connection once it
    is made: until this ends, a query from that host that matches no claim waits up to
    the server's ``claim_wait`` for one, instead of going straight to the handlers.

    For applications (and libraries) that cannot claim before the connection exists;
    :meth:`IdentServer.open_connection` needs none of this. Use it as a context manager
    around the connect and the claim, or call :meth:`done`. An IP address registers at
    once (``with``); a host name is resolved first (``async with``).
    """

    def __init__(self, registry: ClaimRegistry, host: str) -> None:
        self._registry = registry
        self._name = host
        self._hosts: list[str] | None = None
        self._done = False
        try:
            hosts = [normalise_host(host)]
        except ValueError:
            return  # a name: resolved by __aenter__ / resolve()
        self._register(hosts)

    def _register(self, hosts: list[str]) -> None:
        self._hosts = hosts
        self._registry.begin_pending(hosts)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The addresses whose queries may wait (empty until a name is resolved)."""
        return tuple(self._hosts or ())

    async def resolve(self) -> None:
        """Resolve the host name and start waiting for its addresses' queries."""
        if self._hosts is not None or self._done:
            return
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self._name, None, type=socket.SOCK_STREAM)
        self.register_addresses([info[4] for info in infos])

    def register_addresses(self, sockaddrs: Sequence[Any]) -> None:
        """Start waiting for these resolved socket addresses (for callers that resolved
        the name themselves, such as the thread controller)."""
        if self._hosts is not None or self._done:
            return
        self._register(list(dict.fromkeys(_sockaddr_host(sa) for sa in sockaddrs)))

    def done(self) -> None:
        """The connection is claimed (or failed): queries from this host wait no more."""
        if self._done:
            return
        self._done = True
        if self._hosts:
            self._registry.end_pending(self._hosts)

    def __enter__(self) -> PendingConnection:
        if self._hosts is None:
            raise ValueError(
                f"{self._name!r} is a host name: use 'async with server.connecting(...)' "
                "so that it is resolved first, or pass its IP address"
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done()

    async def __aenter__(self) -> PendingConnection:
        await self.resolve()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.done()

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        return f"<PendingConnection {self._name} {state}>"
