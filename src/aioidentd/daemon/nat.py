"""Answering for the machines behind a NAT gateway (``[[nat]]``), like oidentd's ``-m``.

A query about a connection no local socket has may be about a connection this host
translates. Connection tracking (:mod:`aioidentd.lookup.conntrack`) says which inner
machine and port it is; the first ``[[nat]]`` entry whose network holds that machine
says what to answer: a static answer (oidentd_masq.conf's job), or the inner machine's
own identd, asked about the connection *as it sees it* (its port, the server's port),
from this gateway's inner address (the kernel's choice of source for that route), with
the ports of its answer translated back. A forward that fails falls back to the next
matching static entry, else UNKNOWN-ERROR.

Conntrack needs ``CAP_NET_ADMIN``, which the daemon gives up with root. So the daemon
forks :class:`ConntrackHelper` before dropping privileges: a process that keeps root and
does nothing but answer fixed-size "which inner connection is this?" requests over a
socket pair. The network-facing process never holds the capability.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Final

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

__all__ = ["ConntrackHelper", "NatResolver", "TranslationSource"]

logger = logging.getLogger(__name__)

_REQUEST: Final = struct.Struct("!16sH16sH")
_ANSWER: Final = struct.Struct("!B16sH16sH")
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
    """The privileged helper: :meth:`start` forks it (while still root); the daemon then
    calls :meth:`translation` from its worker threads (one exchange at a time)."""

    def __init__(self, timeout: float = 1.0) -> None:
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def start(self, close: Sequence[socket.socket] = ()) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the helper process
            status = 0
            try:
                ours.close()
                for sock in close:
                    sock.close()
                _serve(theirs)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        theirs.close()
        ours.settimeout(self.timeout)
        self._sock, self._pid = ours, pid

    def translation(self, outer: Address, server: Address) -> Translation | None:
        v4 = ip_of(outer[0]).version == 4
        request = _REQUEST.pack(
            _pack_address(outer[0]), outer[1], _pack_address(server[0]), server[1]
        )
        with self._lock:
            sock = self._sock
            if sock is None:
                raise SocketLookupError("the conntrack helper is not running")
            try:
                sock.send(request)
                answer = sock.recv(_ANSWER.size + 512)
            except OSError as exc:
                raise SocketLookupError(f"conntrack helper: {exc}") from None
        if len(answer) < _ANSWER.size:
            raise SocketLookupError("conntrack helper gave no answer")
        status, inner, inner_port, seen, seen_port = _ANSWER.unpack_from(answer)
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
            sock.close()  # the helper reads EOF and exits
        if self._pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            self._pid = 0


def _serve(sock: socket.socket) -> None:  # pragma: no cover - runs in the helper
    """The helper's loop: one request, one answer, until the daemon closes its end."""
    lookup = ConntrackLookup()
    while True:
        request = sock.recv(_REQUEST.size + 1)
        if len(request) != _REQUEST.size:
            return  # EOF (the daemon is gone) or a message not ours
        outer_raw, outer_port, server_raw, server_port = _REQUEST.unpack(request)
        v4 = outer_raw[4:] == b"\0" * 12 and server_raw[4:] == b"\0" * 12
        try:
            outer = (_unpack_address(outer_raw, v4), outer_port)
            server = (_unpack_address(server_raw, v4), server_port)
            found = lookup.translation(outer, server)
        except (OSError, ValueError) as exc:
            sock.send(_ANSWER.pack(_ERROR, b"", 0, b"", 0) + str(exc).encode()[:512])
            continue
        if found is None:
            sock.send(_ANSWER.pack(_NONE, b"", 0, b"", 0))
        else:
            sock.send(
                _ANSWER.pack(
                    _FOUND,
                    _pack_address(found.inner[0]),
                    found.inner[1],
                    _pack_address(found.server[0]),
                    found.server[1],
                )
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
