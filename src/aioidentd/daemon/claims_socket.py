"""Claims over a local Unix socket: a process that runs no identd names the answer for
its own connections, and the host daemon checks with the kernel that they are its own.

Why: an unprivileged program (a bot, a bridge) should not need an identd of its own, a
port, or a configuration change by root to answer per connection. The daemon already
knows, for every query, which uid owns the connection; a claim only lets that uid pick
the answer for one exact connection, the way a user's reply file picks it for all.

Authentication is the kernel's: ``SO_PEERCRED`` gives the uid of the process at the
other end of the Unix socket, and a claim is accepted only for a connection the socket
lookup says that uid owns, and only where the policy lets that user choose answers
(``allow_user_reply``, with the same limits on the id as a reply file). A claim ends when
released, when the claiming process closes its control connection (or dies), or when the
claimed connection is gone (checked at every query about it and by a periodic sweep), so
nothing accumulates; every count is bounded.

The wire format is one JSON object per line each way (a request, then its answer), at
most :data:`MAX_REQUEST` octets::

    {"op": "claim", "local": ["192.0.2.1", 40001], "remote": ["198.51.100.7", 6667],
     "user_id": "alice", "opsys": "UNIX", "charset": null, "error": null}
    {"op": "release", "local": [...], "remote": [...]}
    {"op": "connecting", "host": "198.51.100.7"}     (queries from there may wait for a
    {"op": "connected", "host": "198.51.100.7"}       claim until the response deadline, until this)
    -> {"ok": true} | {"ok": false, "error": "why not"}

:class:`aioidentd.HostClaims` is the client.

The socket runs on the daemon's one connection core, as the ident port does: the driver
(:mod:`aioidentd.driver`) does the I/O and a sans-IO
:class:`~aioidentd.daemon.claims_session.ClaimsSession` per connection reads the lines
(bounded, in slices, with its deadlines); this module decides what each request means. Any
local user may connect, so nothing one of them sends can hold the event loop (slices of
:data:`~aioidentd.daemon.claims_session.BUDGET` lines), grow the daemon (answers left
unread stop the reading at :data:`HIGH_WATER`), fill the log (one line per kind per 10 s,
a failure of the daemon's own included, answered as an internal error) or take another
user's slots (:data:`MAX_CONNECTIONS_PER_UID`, eviction within the user's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from aioidentd._ratelimit import RateLimitedLog
from aioidentd.claims import normalise_host
from aioidentd.daemon.claims_session import MAX_REQUEST, ClaimsSession, Malformed, Request
from aioidentd.driver import Channel, Driver
from aioidentd.errors import SocketLookupError
from aioidentd.listener import Listener
from aioidentd.lookup import SocketLookup
from aioidentd.policy import Policy
from aioidentd.protocol import (
    Address,
    ErrorReply,
    UserIdReply,
    check_token,
    encode_user_id,
)

__all__ = [
    "MAX_REQUEST",
    "ClaimsService",
    "HostClaim",
    "bind_claims_socket",
]

logger = logging.getLogger(__name__)

#: Claims one uid may hold at once, and control connections one uid may keep open.
MAX_CLAIMS_PER_UID: Final = 4096
MAX_CONNECTIONS_PER_UID: Final = 64
MAX_CONNECTIONS: Final = 1024
#: Hosts one control connection may have declared "connecting" at once.
MAX_PENDING: Final = 64
#: Seconds between sweeps that drop claims whose connection is gone.
SWEEP_INTERVAL: Final = 30.0
#: A control connection that sends half a line and stops is closed after this long.
PARTIAL_LINE_TIMEOUT: Final = 10.0
#: Answers (at most a little longer than their requests) a control connection may leave
#: unread before the daemon stops reading its requests.
HIGH_WATER: Final = 16 * 1024
_PEERCRED: Final = struct.Struct("3i")
#: The largest interface index the kernel's socket addresses hold.
_MAX_SCOPE: Final = 0xFFFFFFFF

_Key = tuple[str, int, str, int]


def _key(local: Address, remote: Address) -> _Key:
    key = (
        normalise_host(str(local[0])),
        int(local[1]),
        normalise_host(str(remote[0])),
        int(remote[1]),
    )
    for host in (key[0], key[2]):
        scope = host.partition("%")[2]
        if scope and int(scope) > _MAX_SCOPE:
            raise ValueError(f"no network interface has the index {scope}")
    return key


@dataclass(slots=True, eq=False)
class HostClaim:
    """One accepted claim: the answer ``uid`` chose for one of its connections."""

    uid: int
    key: _Key
    user_id: bytes | None
    opsys: str
    charset: str | None
    error: str | None
    owner: _Control = field(repr=False)

    def describe(self) -> str:
        if self.error is not None:
            return f"ERROR {self.error}"
        assert self.user_id is not None
        return repr(self.user_id.decode(self.charset or "ascii", "replace"))


def bind_claims_socket(path: str, mode: int = 0o666) -> socket.socket:
    """The listening Unix socket at ``path`` (a stale socket file there is replaced;
    anything else is an error). Bound before privileges are dropped, so its directory
    may be one only root can write (``/run/aioidentd``). ``mode`` is the file's: every
    local user may connect by default, since the daemon authenticates each one itself."""
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        if not stat.S_ISSOCK(info.st_mode):
            raise OSError(f"{path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        _chmod_socket_file(path, mode)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _chmod_socket_file(path: str, mode: int) -> None:
    """Give the socket file just bound at ``path`` its mode without following a symlink:
    in a directory a user can write, the file may have been replaced by then (a chmod by
    name would follow a symlink to any file of root's). The file is opened without
    following (``O_PATH | O_NOFOLLOW``), must be a socket, and is changed through that
    descriptor, which no rename can redirect."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(f"{path} was replaced by something else than our socket")
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


class ClaimsService:
    """The claims a host's users made over the socket, and the socket's connections."""

    def __init__(
        self,
        lookup: SocketLookup,
        policy: Callable[[], Policy],
    ) -> None:
        self.lookup = lookup
        self._policy = policy
        self._claims: dict[_Key, HostClaim] = {}
        self._per_uid: dict[int, int] = {}
        self._controls: set[_Control] = set()
        self._per_uid_controls: dict[int, int] = {}
        #: (uid, remote host) -> how many control connections declared "connecting".
        self._pending: dict[tuple[int, str], int] = {}
        #: Queries waiting for a claim on their connection.
        self._waiters: dict[_Key, list[asyncio.Future[None]]] = {}
        self._driver: Driver | None = None
        self._listener: Listener | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._log: RateLimitedLog | None = None

    def __len__(self) -> int:
        return len(self._claims)

    @property
    def active(self) -> bool:
        """Whether any claim exists (otherwise queries need not look)."""
        return bool(self._claims)

    # -- serving ------------------------------------------------------------------------

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._log = RateLimitedLog(logger, call_later=loop.call_later)
        self._driver = Driver(
            loop,
            self,
            "claims socket",
            max_connections=MAX_CONNECTIONS,
            high_water=HIGH_WATER,
            low_water=HIGH_WATER // 4,
        )
        self._listener = Listener(loop, sock, self._driver.accept, "claims socket")
        self._listener.start()
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._driver is not None:
            self._driver.close_all()
            self._driver = None
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._claims.clear()
        self._per_uid.clear()
        if self._log is not None:
            self._log.close()

    def _sweep(self) -> None:
        """Drop claims whose connection no longer exists or changed hands (a blocking
        lookup, the /proc scan, asks off the event loop)."""
        loop = asyncio.get_running_loop()
        claims = list(self._claims.values())
        if not self.lookup.blocking:
            self._swept(claims, [self._look_up(claim.key) for claim in claims])
            return
        owners = loop.run_in_executor(None, lambda: [self._look_up(c.key) for c in claims])
        owners.add_done_callback(lambda done: self._swept(claims, done.result()))

    def _swept(self, claims: list[HostClaim], owners: list[int | str | None]) -> None:
        for claim, owner in zip(claims, owners, strict=True):
            if not isinstance(owner, str) and owner != claim.uid:
                self._remove(claim)
        if self._driver is not None:  # still serving
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _look_up(self, key: _Key) -> int | str | None:
        """The uid owning the connection ``key`` names, None when none does, or why it
        cannot be told."""
        try:
            return self.lookup.owner((key[0], key[1]), (key[2], key[3]))
        except (SocketLookupError, ValueError) as exc:
            return f"cannot look the connection up: {exc}"

    # -- what the responder asks --------------------------------------------------------

    def find(self, local: Address, remote: Address, uid: int) -> HostClaim | None:
        """The claim on this connection made by its owner ``uid``; a claim whose
        connection now belongs to someone else (the ports were reused) never answers.
        Safe to call from the responder's worker thread: it only reads."""
        try:
            key = _key(local, remote)
        except ValueError:
            return None
        claim = self._claims.get(key)
        if claim is None or claim.uid != uid:
            return None  # (a stale claim of another uid is the sweep's to drop)
        return claim

    def expecting(self, uid: int, remote_host: str) -> bool:
        """Whether ``uid`` said it is connecting to ``remote_host`` (see wait_for)."""
        return bool(self._pending) and (uid, normalise_host(remote_host)) in self._pending

    async def wait_for(
        self, local: Address, remote: Address, uid: int, budget: float
    ) -> HostClaim | None:
        """``uid``'s claim on the connection: one already made at once (its wake-up has
        gone by), else waiting up to ``budget`` s (what is left before the querier's
        deadline; 0: no wait) for the one its owner said is coming."""
        wait = budget
        claim = self.find(local, remote, uid)
        if claim is not None or wait <= 0:
            return claim
        key = _key(local, remote)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), wait)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
                if not waiters:
                    del self._waiters[key]
        return self.find(local, remote, uid)

    # -- what the control connections ask -----------------------------------------------

    def _add(self, claim: HostClaim) -> str | None:
        old = self._claims.get(claim.key)
        if old is None and self._per_uid.get(claim.uid, 0) >= MAX_CLAIMS_PER_UID:
            return f"too many claims (at most {MAX_CLAIMS_PER_UID} per user)"
        if old is not None:
            self._remove(old)
        self._claims[claim.key] = claim
        self._per_uid[claim.uid] = self._per_uid.get(claim.uid, 0) + 1
        claim.owner.claims.add(claim.key)
        claim.owner.held()
        for waiter in self._waiters.pop(claim.key, ()):
            if not waiter.done():
                waiter.set_result(None)
        return None

    def _remove(self, claim: HostClaim) -> None:
        if self._claims.get(claim.key) is not claim:
            return
        del self._claims[claim.key]
        count = self._per_uid.get(claim.uid, 1) - 1
        if count:
            self._per_uid[claim.uid] = count
        else:
            self._per_uid.pop(claim.uid, None)
        claim.owner.claims.discard(claim.key)
        claim.owner.held()

    def _pending_change(self, uid: int, host: str, delta: int) -> None:
        key = (uid, host)
        count = self._pending.get(key, 0) + delta
        if count > 0:
            self._pending[key] = count
        else:
            self._pending.pop(key, None)

    def handle(self, control: _Control, request: Any) -> str | Awaitable[str | None] | None:
        """Carry out one request; None when it succeeded, else why not (awaited first
        when the socket lookup blocks and must run off the event loop)."""
        if not isinstance(request, dict):
            return "a request is a JSON object"
        op = request.get("op")
        if op == "claim":
            return self._claim(control, request)
        if op == "release":
            try:
                key = _key(*_ends(request))
            except ValueError as exc:
                return str(exc)
            claim = self._claims.get(key)
            if claim is not None and claim.owner is control:
                self._remove(claim)
            return None
        if op in ("connecting", "connected"):
            host = request.get("host")
            if not isinstance(host, str) or not host:
                return "'host' must be an IP address"
            try:
                host = normalise_host(host)
            except ValueError as exc:
                return str(exc)
            if op == "connecting":
                if len(control.pending) >= MAX_PENDING:
                    return f"too many hosts declared connecting (at most {MAX_PENDING})"
                control.pending.append(host)
                self._pending_change(control.uid, host, +1)
            elif host in control.pending:
                control.pending.remove(host)
                self._pending_change(control.uid, host, -1)
            control.held()
            return None
        return f"unknown op {op!r} (claim, release, connecting, connected)"

    def _claim(
        self, control: _Control, request: dict[str, Any]
    ) -> str | Awaitable[str | None] | None:
        try:
            local, remote = _ends(request)
            key = _key(local, remote)
            answer = _answer(request)
        except ValueError as exc:
            return str(exc)
        if self.lookup.blocking:
            return self._claim_off_loop(control, key, answer)
        return self._grant(control, key, answer, self._look_up(key))

    async def _claim_off_loop(self, control: _Control, key: _Key, answer: _Answer) -> str | None:
        owner = await asyncio.get_running_loop().run_in_executor(None, self._look_up, key)
        return self._grant(control, key, answer, owner)

    def _grant(
        self, control: _Control, key: _Key, answer: _Answer, owner: int | str | None
    ) -> str | None:
        """Accept a claim on the connection ``key``, which the lookup says ``owner`` owns."""
        user_id, opsys, charset, error = answer
        uid = control.uid
        if control not in self._controls:
            return "the control connection is closed"
        if isinstance(owner, str):
            return owner
        if owner is None:
            return "no such connection"
        if owner != uid:
            return "that connection is not yours"
        reason = self._policy().claimable(uid, (key[0], key[1]), (key[2], key[3]), user_id)
        if reason is not None:
            return reason
        raw = None if user_id is None else encode_user_id(user_id, charset)
        return self._add(HostClaim(uid, key, raw, opsys, charset, error, control))

    # -- the driver's service -------------------------------------------------------------

    def open(self, channel: Channel, now: float) -> ClaimsSession:
        """A new control connection: who it is (the kernel says), and whether that user
        may have one more."""
        try:
            raw = channel.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            _pid, uid, _gid = _PEERCRED.unpack(raw)
        except (OSError, struct.error):
            uid = -1
        session = ClaimsSession(now, uid, PARTIAL_LINE_TIMEOUT)
        if uid == -1:
            self._refuse(session, "cannot tell who is connecting (SO_PEERCRED)", now)
            return session
        if self._per_uid_controls.get(uid, 0) >= MAX_CONNECTIONS_PER_UID and not self._evict(uid):
            reason = f"too many connections from uid {uid}"
            self._refuse(session, reason, now)
            return session
        control = _Control(uid, session)
        channel.context = control
        self._controls.add(control)
        self._per_uid_controls[uid] = self._per_uid_controls.get(uid, 0) + 1
        return session

    def _evict(self, uid: int) -> bool:
        """Make room for one more connection of ``uid`` at its limit: close its connection
        silent longest that holds no claim (a user's limit never costs another user, nor
        any claim); False when every one holds claims."""
        if self._driver is None:
            return False
        for channel in self._driver.channels:  # silent longest first
            control = channel.context
            if isinstance(control, _Control) and control.uid == uid and control.idle:
                self.log(
                    "evicted",
                    "claims socket: uid %d has %d connections; closing its connection "
                    "silent longest",
                    uid,
                    MAX_CONNECTIONS_PER_UID,
                )
                channel.abort()
                return True
        return False

    def _refuse(self, session: ClaimsSession, reason: str, now: float) -> None:
        self.log("admit", "claims socket: refused uid %d: %s", session.uid, reason)
        session.refuse(reason, now)

    def events(self, channel: Channel, events: Iterable[Any]) -> None:
        control = channel.context
        assert isinstance(control, _Control)
        control.backlog.extend(events)
        self._serve(channel, control)

    def _serve(self, channel: Channel, control: _Control) -> None:
        """Answer the requests read, in order; one carried out off the event loop (a
        blocking lookup) holds the rest, and the reading, until its answer is in."""
        session = control.session
        while control.backlog and control.busy is None:
            event = control.backlog.pop(0)
            if isinstance(event, Malformed):
                message = (
                    "claims socket: uid %d sent an over-long line"
                    if event.kind == "huge"
                    else "claims socket: uid %d sent a line that is not JSON"
                )
                self.log(event.kind, message, control.uid)
                session.reply(event.reason)
                continue
            try:
                outcome = self.handle(control, event.value)
            except Exception:
                outcome = self._failed(control)
            if outcome is None or isinstance(outcome, str):
                self._answered(control, outcome)
                continue
            busy = control.busy = asyncio.ensure_future(outcome)
            busy.add_done_callback(lambda done: self._done(channel, control, done))
            session.hold()

    def _done(self, channel: Channel, control: _Control, busy: asyncio.Future[str | None]) -> None:
        control.busy = None
        if busy.cancelled() or channel.closed:
            return
        try:
            reason = busy.result()
        except Exception:
            reason = self._failed(control)
        self._answered(control, reason)
        self._serve(channel, control)
        if control.busy is None:
            control.session.release()
        channel.update()

    def _answered(self, control: _Control, reason: str | None) -> None:
        if reason is not None:
            self.log("refused", "claims socket: uid %d refused: %s", control.uid, reason)
        control.session.reply(reason)

    def _failed(self, control: _Control) -> str:
        """A bug, not the user's fault: a clear answer, and the first traceback of each
        10 s in the log."""
        if self._log is not None:
            self._log.log(
                "unexpected",
                logging.ERROR,
                "unexpected failures of claims requests",
                "claims socket: unexpected failure of a request from uid %d",
                control.uid,
                exc_info=True,
            )
        return "internal error (the daemon's log says more)"

    def closed(self, channel: Channel) -> None:
        control = channel.context
        if not isinstance(control, _Control):
            return
        channel.context = None
        if control.busy is not None:
            control.busy.cancel()
        control.backlog.clear()
        self._controls.discard(control)
        count = self._per_uid_controls.get(control.uid, 1) - 1
        if count:
            self._per_uid_controls[control.uid] = count
        else:
            self._per_uid_controls.pop(control.uid, None)
        for key in list(control.claims):
            claim = self._claims.get(key)
            if claim is not None:
                self._remove(claim)
        for host in control.pending:
            self._pending_change(control.uid, host, -1)
        control.pending.clear()

    def log(self, kind: str, message: str, *args: object) -> None:
        if self._log is not None:
            self._log.log(kind, logging.INFO, "claims socket refusals", message, *args)


def _ends(request: dict[str, Any]) -> tuple[Address, Address]:
    ends = []
    for name in ("local", "remote"):
        value = request.get(name)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], str)
            or not isinstance(value[1], int)
            or isinstance(value[1], bool)
            or not 1 <= value[1] <= 65535
        ):
            raise ValueError(f"'{name}' must be [\"ADDRESS\", PORT]")
        ends.append((value[0], value[1]))
    return ends[0], ends[1]


#: What a claim answers: user id, opsys, charset, error.
_Answer = tuple[str | None, str, str | None, str | None]


def _answer(request: dict[str, Any]) -> _Answer:
    user_id, error = request.get("user_id"), request.get("error")
    opsys, charset = request.get("opsys", "UNIX"), request.get("charset")
    if (user_id is None) == (error is None):
        raise ValueError("give exactly one of 'user_id' and 'error'")
    for name, value in (("opsys", opsys), ("charset", charset)):
        if value is not None:
            if not isinstance(value, str):
                raise ValueError(f"'{name}' must be a string")
            check_token(name, value)
    if user_id is not None:
        if not isinstance(user_id, str):
            raise ValueError("'user_id' must be a string")
        UserIdReply.from_text(1, 1, opsys or "UNIX", user_id, charset)
    else:
        if not isinstance(error, str):
            raise ValueError("'error' must be a string")
        error = ErrorReply(1, 1, error).error
    return user_id, opsys or "UNIX", charset, error


class _Control:
    """One client of the claims socket as the service sees it: its uid, its claims, the
    hosts it declared connecting (its protocol is the session's)."""

    __slots__ = ("backlog", "busy", "claims", "pending", "session", "uid")

    def __init__(self, uid: int, session: ClaimsSession) -> None:
        self.uid = uid
        self.session = session
        self.claims: set[_Key] = set()
        self.pending: list[str] = []
        #: A request carried out off the event loop, and the requests read after it,
        #: which wait for its answer (answers go out in order).
        self.busy: asyncio.Future[str | None] | None = None
        self.backlog: list[Request | Malformed] = []

    @property
    def idle(self) -> bool:
        """Whether closing it would cost nothing: no claim, no declared connection."""
        return not self.claims and not self.pending

    def held(self) -> None:
        """Its claims changed: one that holds any is never closed to make room."""
        self.session.evictable = self.idle
