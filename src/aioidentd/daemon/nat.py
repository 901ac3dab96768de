"""Answering for the machines behind a NAT gateway (``[[nat]]``), like oidentd's ``-m``.

A query about a connection no local socket has may be about a connection this host
translates. Connection tracking (:mod:`aioidentd.lookup.conntrack`) says which inner
machine and port it is; the first ``[[nat]]`` entry whose network holds that machine
says what to answer: a static answer (oidentd_masq.conf's job), or the inner machine's
own identd, asked about the connection *as it sees it* (its port, the server's port),
from this gateway's inner address (the kernel's choice of source for that route), with
the ports of its answer translated back. A forward that fails falls back to the next
matching static entry, else UNKNOWN-ERROR.

Conntrack needs ``CAP_NET_ADMIN``, which the daemon gives up with root. So before it
drops privileges the daemon forks one **NAT keeper** (:func:`start_helper`) for all its
worker processes: it keeps ``CAP_NET_ADMIN`` and nothing else (the daemon's user, the
capability bounding set emptied of every other capability, ``no_new_privs``), and forks
the **helper** that answers fixed-size "which inner connection is this?" requests, one
socket pair per worker slot, and forks it again when it dies. The supervisor holds the
workers' ends of those socket pairs, so a replacement worker finds its helper as the first
one did. The network-facing processes never hold the capability.

Every request carries an identity, and an answer to any other request (a late one, after
a timeout, or one meant for a worker that died) is discarded: a stopped or slow helper
delays answers, it never shifts them onto the next question.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO, Final

from aioidentd._ratelimit import RateLimitedLog
from aioidentd.daemon.privileges import CAP_NET_ADMIN, keep_only_capability
from aioidentd.daemon.supervisor import STABLE, backoff
from aioidentd.errors import SocketLookupError
from aioidentd.lookup.conntrack import ConntrackLookup, Translation
from aioidentd.policy import Decision, Policy
from aioidentd.policy.settings import ForwardTarget, NatRule
from aioidentd.protocol import (
    Address,
    ErrorReply,
    Reply,
    UserIdReply,
    ip_of,
    safe_user_id,
)

__all__ = [
    "ConntrackHelper",
    "HelperKeeper",
    "NatResolver",
    "TranslationSource",
    "start_helper",
]

logger = logging.getLogger(__name__)

_REQUEST: Final = struct.Struct("!I16sH16sH")
_ANSWER: Final = struct.Struct("!IB16sH16sH")
_NONE, _FOUND, _ERROR = 0, 1, 2


class TranslationSource:
    """Anything that finds translations: a :class:`ConntrackLookup` in this process or
    the helper across a socket pair."""

    blocking = True

    def translation(self, outer: Address, server: Address) -> Translation | None:
        raise NotImplementedError


def _pack_address(host: str) -> bytes:
    address = ip_of(host)
    if isinstance(address, ipaddress.IPv4Address):
        return address.packed + b"\0" * 12
    return address.packed


def _unpack_address(raw: bytes, v4: bool) -> str:
    return str(ipaddress.IPv4Address(raw[:4]) if v4 else ipaddress.IPv6Address(raw))


class ConntrackHelper(TranslationSource):
    """A worker's end of its channel to the helper: :meth:`translation` is called from the
    worker's threads (one exchange at a time)."""

    def __init__(self, sock: socket.socket, timeout: float = 1.0) -> None:
        self.timeout = timeout
        self._sock: socket.socket | None = sock
        self._lock = threading.Lock()
        # Identities start anywhere: a replacement worker must not take an answer meant
        # for the worker it replaces (left in the channel when that one died).
        self._id = int.from_bytes(os.urandom(4), "big")

    def translation(self, outer: Address, server: Address) -> Translation | None:
        v4 = ip_of(outer[0]).version == 4
        with self._lock:
            sock = self._sock
            if sock is None:
                raise SocketLookupError("the conntrack helper is not running")
            self._id = ident = (self._id + 1) & 0xFFFFFFFF
            request = _REQUEST.pack(
                ident, _pack_address(outer[0]), outer[1], _pack_address(server[0]), server[1]
            )
            answer = _exchange(sock, request, ident, self.timeout)
        _ident, status, inner, inner_port, seen, seen_port = _ANSWER.unpack_from(answer)
        if status == _ERROR:
            raise SocketLookupError(answer[_ANSWER.size :].decode(errors="replace"))
        if status == _NONE:
            return None
        return Translation(
            (_unpack_address(inner, v4), inner_port), (_unpack_address(seen, v4), seen_port)
        )

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _exchange(sock: socket.socket, request: bytes, ident: int, timeout: float) -> bytes:
    """Send ``request`` and return the answer that carries its identity, discarding
    others; raises SocketLookupError when none comes within ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        sock.settimeout(timeout)
        sock.send(request)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            answer = sock.recv(_ANSWER.size + 512)
            if not answer:
                raise SocketLookupError("the conntrack helper is gone")
            if len(answer) >= _ANSWER.size and _ANSWER.unpack_from(answer)[0] == ident:
                return answer
            # A late answer to an earlier request: that query was answered already.
    except TimeoutError:
        raise SocketLookupError(
            f"the conntrack helper did not answer within {timeout:g} s"
        ) from None
    except OSError as exc:
        raise SocketLookupError(f"conntrack helper: {exc.strerror or exc}") from None


class HelperKeeper:
    """The daemon's handle on the NAT keeper: the workers' channel ends (index = worker
    slot), and the keeper's process, waited for by :meth:`close`."""

    def __init__(self, pid: int, channels: list[socket.socket]) -> None:
        self.pid = pid
        self.channels = channels

    def client(self, index: int) -> ConntrackHelper:
        """What worker ``index`` asks through (its own copy of the channel)."""
        return ConntrackHelper(self.channels[index].dup())

    def close(self, grace: float = 2.0) -> None:
        """Close the channels: the helper reads EOF on all and exits, then the keeper. A
        keeper still there after ``grace`` seconds (its helper stopped, say) is killed
        rather than waited for: the daemon's exit must not hang on it (the helper
        exits by itself at EOF once it runs again)."""
        for sock in self.channels:
            sock.close()
        self.channels = []
        pid, self.pid = self.pid, 0
        if not pid:
            return
        deadline = time.monotonic() + grace
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(pid, os.WNOHANG)[0] == 0:
                if time.monotonic() >= deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    return
                time.sleep(0.01)


def start_helper(
    uid: int, gid: int, channels: int, close: Sequence[socket.socket] = ()
) -> HelperKeeper:
    """Fork the NAT keeper (while root): it becomes ``uid``/``gid`` keeping only
    ``CAP_NET_ADMIN`` and keeps one helper running for ``channels`` worker slots (see the
    module notes). ``close``: the daemon's sockets, which the keeper must not hold."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(channels)]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the keeper process
        status = 1
        try:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                # The daemon's signals are for the daemon; the keeper ends at EOF.
                signal.signal(signum, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            for ours, _theirs in pairs:
                ours.close()
            for sock in close:
                sock.close()
            status = _keep([theirs for _ours, theirs in pairs], uid, gid)
        except BaseException:
            logger.exception("the NAT keeper failed")
        finally:
            os._exit(status)
    for _ours, theirs in pairs:
        theirs.close()
    return HelperKeeper(pid, [ours for ours, _theirs in pairs])


def _keep(channels: list[socket.socket], uid: int, gid: int) -> int:  # pragma: no cover
    """The keeper: least privilege, then one helper at a time, replaced when it dies
    (backing off if it dies again soon), until one exits because the daemon is gone."""
    proc = _open_proc_table()  # while root: the table is root's to read
    problem = keep_only_capability(CAP_NET_ADMIN, uid, gid)
    if problem is not None:
        logger.warning("NAT helper: %s; running on without it", problem)
    log = RateLimitedLog(logger, interval=60.0)
    streak = 0
    while True:
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                _serve(channels, proc)
                status = 0
            except BaseException:
                logger.exception("the conntrack helper failed")
            finally:
                os._exit(status)
        _, raw = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(raw)
        if code == 0:
            return 0  # every worker's channel closed: the daemon is gone
        if time.monotonic() - started >= STABLE:
            streak = 0
        delay = backoff(streak)
        streak += 1
        log.log(
            "helper died",
            logging.WARNING,
            "conntrack helper restarts",
            "the conntrack helper (pid %d) exited with status %d; starting another%s",
            pid,
            code,
            f" in {delay:g} s" if delay else "",
        )
        time.sleep(delay)


def _open_proc_table(path: str = "/proc/net/nf_conntrack") -> BinaryIO | None:
    try:
        return open(path, "rb")  # kept open for the helper's life
    except OSError:
        return None


def _serve(channels: list[socket.socket], proc: BinaryIO | None) -> None:  # pragma: no cover
    """The helper's loop: a request on any worker's channel, its answer on the same,
    until every channel is closed by the daemon."""
    lookup = ConntrackLookup(proc_file=proc)
    open_channels = {sock.fileno(): sock for sock in channels}
    while open_channels:
        ready, _, _ = select.select(list(open_channels), [], [])
        for fd in ready:
            sock = open_channels[fd]
            try:
                request = sock.recv(_REQUEST.size + 1)
            except OSError:
                request = b""
            if not request:
                del open_channels[fd]  # EOF: nobody holds that worker's end any more
                continue
            if len(request) != _REQUEST.size:
                continue  # not ours
            with contextlib.suppress(OSError):  # a worker that died meanwhile
                sock.send(_answer(lookup, request))


def _answer(lookup: ConntrackLookup, request: bytes) -> bytes:  # pragma: no cover
    ident, outer_raw, outer_port, server_raw, server_port = _REQUEST.unpack(request)
    v4 = outer_raw[4:] == b"\0" * 12 and server_raw[4:] == b"\0" * 12
    try:
        outer = (_unpack_address(outer_raw, v4), outer_port)
        server = (_unpack_address(server_raw, v4), server_port)
        found = lookup.translation(outer, server)
    except (OSError, ValueError, SocketLookupError) as exc:
        return _ANSWER.pack(ident, _ERROR, b"", 0, b"", 0) + str(exc).encode()[:512]
    if found is None:
        return _ANSWER.pack(ident, _NONE, b"", 0, b"", 0)
    return _ANSWER.pack(
        ident,
        _FOUND,
        _pack_address(found.inner[0]),
        found.inner[1],
        _pack_address(found.server[0]),
        found.server[1],
    )


class InProcess(TranslationSource):
    """Conntrack in the daemon's own process (it kept root, or has CAP_NET_ADMIN)."""

    def __init__(self) -> None:
        self._lookup = ConntrackLookup()
        self._lock = threading.Lock()

    def translation(self, outer: Address, server: Address) -> Translation | None:
        with self._lock:
            return self._lookup.translation(outer, server)

    def close(self) -> None:
        self._lookup.close()


class NatResolver:
    """Turns a translated connection into a decision (see the module notes)."""

    def __init__(self, source: TranslationSource, policy: Callable[[], Policy]) -> None:
        self.source = source
        self._policy = policy

    @property
    def policy(self) -> Policy:
        return self._policy()  # the responder's, reloaded on SIGHUP

    def rules_for(self, inner: str) -> list[NatRule]:
        """The ``[[nat]]`` entries whose networks hold ``inner``, in file order."""
        try:
            address = ip_of(inner)
        except ValueError:
            return []
        return [
            rule
            for rule in self.policy.config.nat
            if any(address in network for network in rule.networks)
        ]

    async def translate(self, outer: Address, server: Address) -> Translation | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.source.translation, outer, server)

    def static(self, rules: Sequence[NatRule], translation: Translation) -> Decision:
        """The first static answer among ``rules``, else UNKNOWN-ERROR."""
        for rule in rules:
            if rule.answer != "forward":
                return self.policy.nat_decision(rule, translation.inner)
        return self.policy.nat_error(translation.inner, "UNKNOWN-ERROR", "no static [[nat]]")

    def forward_target(self, rule: NatRule, translation: Translation) -> ForwardTarget:
        return ForwardTarget(translation.inner[0], rule.forward_port, rule.forward_proxy)

    def relayed(
        self, rule: NatRule, translation: Translation, reply: Reply
    ) -> tuple[Decision | None, str | None]:
        """The inner identd's answer as this gateway's decision, or why not."""
        if isinstance(reply, ErrorReply):
            decision = self.policy.nat_error(translation.inner, reply.error, _source(rule))
            return decision, None
        assert isinstance(reply, UserIdReply)
        text = reply.user_id
        if not isinstance(text, str):
            return None, "its id is not text in its charset"
        try:
            raw = safe_user_id(text, reply.charset)
        except ValueError as exc:
            return None, f"its id is refused: {exc}"
        return self.policy.nat_user(rule, translation.inner, raw, reply.charset), None


def _source(rule: NatRule) -> str:
    return f"[[nat]] #{rule.number}"
