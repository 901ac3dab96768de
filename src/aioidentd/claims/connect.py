"""Connecting with the claim already in place: bind, claim, then connect.

Why: an IRC server asks the moment it accepts, which can be before ``connect()`` has
returned in the application; a socket bound and claimed before its SYN leaves cannot be
asked about too early. :meth:`IdentServer.open_connection`, ``connect_socket`` and the
thread controller's ``create_connection`` are built on these; they need only the claim
registry, never the server.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any, NamedTuple

from aioidentd.claims.registry import Claim, ClaimRegistry, _sockaddr_host

__all__ = ["Answer", "bind_claimed", "connect_claimed", "create_connection_sync", "settle_claim"]


class Answer(NamedTuple):
    """What a claim answers (the keyword arguments of :meth:`IdentServer.claim`)."""

    user_id: str | bytes | None
    opsys: str = "UNIX"
    charset: str | None = None
    error: str | None = None


def bind_claimed(
    registry: ClaimRegistry, sockaddr: Any, family: int, answer: Answer, local_addr: Any | None
) -> tuple[socket.socket, Claim]:
    """A TCP socket bound (to the resolved socket address ``local_addr``, or any address
    and a fresh port) and claimed for the connection it is about to make to
    ``sockaddr``; not connected yet."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if local_addr is not None:
            sock.bind(local_addr)
        else:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        claim = registry.add(
            sock,
            answer.user_id,
            opsys=answer.opsys,
            charset=answer.charset,
            error=answer.error,
            remote=(str(sockaddr[0]) + _scope_suffix(sockaddr), int(sockaddr[1])),
        )
    except BaseException:
        sock.close()
        raise
    return sock, claim


def _scope_suffix(sockaddr: Any) -> str:
    if len(sockaddr) >= 4 and sockaddr[3]:
        return f"%{sockaddr[3]}"
    return ""


def settle_claim(registry: ClaimRegistry, claim: Claim, sock: socket.socket) -> None:
    """After connecting: narrow the claim to the local address the kernel picked."""
    try:
        local_host = _sockaddr_host(sock.getsockname())
    except OSError:
        return
    registry.rekey(claim, local_host)


def _candidates(
    remote_infos: Sequence[Any], local_infos: Sequence[Any] | None
) -> list[tuple[int, Any, Any | None]]:
    """``(family, remote sockaddr, local sockaddr or None)`` to try in turn. The local
    address is resolved like the remote one (a 2-tuple cannot carry an IPv6 scope), and
    only remote addresses of a family the local address has can be reached from it."""
    if local_infos is None:
        return [(info[0], info[4], None) for info in remote_infos]
    local_of: dict[int, Any] = {}
    for info in local_infos:
        local_of.setdefault(info[0], info[4])
    return [(info[0], info[4], local_of[info[0]]) for info in remote_infos if info[0] in local_of]


def _discard(sock: socket.socket, claim: Claim) -> None:
    claim.release()
    sock.close()


def _no_connection(host: str, port: int, errors: list[OSError]) -> OSError:
    if not errors:
        return OSError(f"{host!r} resolved to no address to connect to")
    if len(errors) == 1:
        return errors[0]
    return OSError(f"cannot connect to {host} port {port}: " + "; ".join(map(str, errors)))


async def connect_claimed(
    registry: ClaimRegistry,
    host: str,
    port: int,
    answer: Answer,
    *,
    family: int = 0,
    local_addr: tuple[str, int] | None = None,
) -> tuple[socket.socket, Claim]:
    """Resolve, bind, claim, then connect: the claim exists before the SYN leaves.

    Tries each resolved address in turn (as ``socket.create_connection`` does); raises
    the last :class:`OSError` when none connects, with no socket or claim left over.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    local_infos = None
    if local_addr is not None:
        local_infos = await loop.getaddrinfo(*local_addr, family=family, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for af, sockaddr, local in _candidates(infos, local_infos):
        sock, claim = bind_claimed(registry, sockaddr, af, answer, local)
        try:
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            _discard(sock, claim)
            errors.append(exc)
            continue
        except BaseException:
            _discard(sock, claim)
            raise
        settle_claim(registry, claim, sock)
        return sock, claim
    raise _no_connection(host, port, errors)


def create_connection_sync(
    registry: ClaimRegistry,
    address: tuple[str, int],
    answer: Answer,
    *,
    timeout: float | None = None,
    source_address: tuple[str, int] | None = None,
) -> socket.socket:
    """:func:`connect_claimed` for blocking code, shaped like ``socket.create_connection``
    (used by the thread controller; runs in the caller's thread)."""
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    local_infos = None
    if source_address is not None:
        local_infos = socket.getaddrinfo(*source_address, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for af, sockaddr, local in _candidates(infos, local_infos):
        sock, claim = bind_claimed(registry, sockaddr, af, answer, local)
        try:
            sock.setblocking(True)
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except OSError as exc:
            _discard(sock, claim)
            errors.append(exc)
            continue
        except BaseException:
            _discard(sock, claim)
            raise
        settle_claim(registry, claim, sock)
        return sock
    raise _no_connection(host, port, errors)
