"""Claims on the host's identd: ``aioidentd serve`` answers for a program's connections
the way an embedded :class:`~aioidentd.server.IdentServer` would, with no identd, no port
and no privilege in the program.

The same calls as the embedded server's claims (``claim(target, user_id)``,
``connecting(host)``, ``open_connection(...)``), so that an application can switch
between embedding a server and running under the host daemon by changing one object.
The difference that cannot be hidden: the daemon checks with the kernel that the
connection is the caller's own, so a claim needs a connection that exists (a connected
socket or transport, or the addresses of one); ``open_connection`` declares the
connection first so that a query racing the claim waits for it.

The daemon must run with ``[server] claims_socket`` set; its policy decides whether the
user may choose answers at all (``allow_user_reply``). A refusal raises
:class:`HostClaimError` with the daemon's reason.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from types import TracebackType
from typing import Any, Final

from aioidentd.errors import AioidentdError

__all__ = ["DEFAULT_CLAIMS_SOCKET", "HostClaim", "HostClaimError", "HostClaims"]

#: Where the Debian-style unit puts the daemon's claims socket (``claims_socket``).
DEFAULT_CLAIMS_SOCKET: Final = "/run/aioidentd/claims.sock"
_MAX_ANSWER: Final = 4096


class HostClaimError(AioidentdError):
    """The host daemon refused a request, or could not be reached (the message says)."""


def _host(sockaddr: Any) -> str:
    host = str(sockaddr[0])
    if len(sockaddr) == 4 and sockaddr[3] and "%" not in host:
        host = f"{host}%{sockaddr[3]}"
    return host


def _ends(target: object) -> tuple[tuple[str, int], tuple[str, int]]:
    """``((local host, port), (remote host, port))`` of a connection."""
    if isinstance(target, tuple):
        if len(target) != 2:
            raise TypeError("give ((local_host, local_port), (remote_host, remote_port))")
        (lh, lp), (rh, rp) = target
        return (str(lh), int(lp)), (str(rh), int(rp))
    owner: Any = target.transport if isinstance(target, asyncio.StreamWriter) else target
    if isinstance(owner, socket.socket):
        try:
            sockname, peername = owner.getsockname(), owner.getpeername()
        except OSError:
            raise ValueError(
                "the socket is not connected: the host daemon only accepts claims on "
                "connections that exist (use HostClaims.open_connection)"
            ) from None
    elif hasattr(owner, "get_extra_info"):
        sockname, peername = owner.get_extra_info("sockname"), owner.get_extra_info("peername")
        if sockname is None or peername is None:
            raise ValueError("the transport has no TCP/IP addresses (closed, or not TCP)")
    else:
        raise TypeError(
            "claim() takes a StreamWriter, a transport, a connected socket or "
            f"((local_host, local_port), (remote_host, remote_port)), not {target!r}"
        )
    return (_host(sockname), int(sockname[1])), (_host(peername), int(peername[1]))


class HostClaim:
    """One claim held by the host daemon, until :meth:`release` (or the ``with`` block),
    the end of the :class:`HostClaims` connection, or the end of the claimed connection."""

    def __init__(
        self,
        owner: HostClaims,
        local: tuple[str, int],
        remote: tuple[str, int],
        user_id: str | None,
        error: str | None,
    ) -> None:
        self._owner = owner
        self._released = False
        self.local = local
        self.remote = remote
        self.user_id = user_id
        self.error = error

    @property
    def active(self) -> bool:
        """True until released (the daemon also drops it when the connection ends)."""
        return not self._released and self._owner._sock is not None

    def release(self) -> None:
        """Stop answering for the connection; releasing twice does nothing."""
        if self._released:
            return
        self._released = True
        if self._owner._sock is not None:
            self._owner._request(
                {"op": "release", "local": list(self.local), "remote": list(self.remote)}
            )

    def __enter__(self) -> HostClaim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        answer = f"ERROR {self.error}" if self.error else f"USERID {self.user_id!r}"
        return f"<HostClaim {self.local} -> {self.remote} {answer}>"


class _Connecting:
    """What :meth:`HostClaims.connecting` returns: ``with``, ``async with`` or done()."""

    def __init__(self, owner: HostClaims, host: str) -> None:
        self._owner = owner
        self.hosts: list[str] = []
        self._done = False
        self._host = host

    def _declare(self, hosts: list[str]) -> None:
        for host in dict.fromkeys(hosts):
            self._owner._request({"op": "connecting", "host": host})
            self.hosts.append(host)

    def done(self) -> None:
        if self._done:
            return
        self._done = True
        if self._owner._sock is not None:
            for host in self.hosts:
                self._owner._request({"op": "connected", "host": host})

    def __enter__(self) -> _Connecting:
        infos = socket.getaddrinfo(self._host, None, type=socket.SOCK_STREAM)
        self._declare([_host(info[4]) for info in infos])
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done()

    async def __aenter__(self) -> _Connecting:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self._host, None, type=socket.SOCK_STREAM)
        await loop.run_in_executor(None, self._declare, [_host(info[4]) for info in infos])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.done)


class HostClaims:
    """A connection to the host daemon's claims socket (``[server] claims_socket``).

    Usable from any thread; each call is one short exchange with the daemon on a local
    socket, bounded by ``timeout`` seconds. Claims last while this object is open: closing
    it (or the process ending) releases them all.

    Nothing is connected until the first call, so making one never fails: a daemon that
    is not running, or runs without ``claims_socket``, is reported by that call.

    :param path: the daemon's ``[server] claims_socket``. The default is the path the
        configuration and systemd pages set it to (with ``RuntimeDirectory=aioidentd``).
    :param timeout: seconds each exchange may take. The daemon answers in well under a
        millisecond; the bound is there so that a stopped daemon fails the call instead
        of hanging a program's connect.
    """

    def __init__(self, path: str = DEFAULT_CLAIMS_SOCKET, *, timeout: float = 1.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._lock = threading.Lock()

    # -- the exchange -------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                raise HostClaimError(
                    f"cannot reach the host identd's claims socket {self.path}: "
                    f"{exc.strerror or exc}"
                ) from None
            self._sock = sock
        return self._sock

    def _request(self, request: dict[str, Any]) -> None:
        with self._lock:
            sock = self._connect()
            try:
                sock.sendall(json.dumps(request).encode() + b"\n")
                while b"\n" not in self._buffer:
                    chunk = sock.recv(_MAX_ANSWER)
                    if not chunk:
                        raise OSError("the daemon closed the claims socket")
                    self._buffer += chunk
                    if len(self._buffer) > _MAX_ANSWER:
                        raise OSError("over-long answer")
            except OSError as exc:
                self._drop()
                raise HostClaimError(f"claims socket {self.path}: {exc}") from None
            line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            answer = json.loads(line)
        except ValueError:
            raise HostClaimError(f"claims socket {self.path}: malformed answer") from None
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            reason = answer.get("error") if isinstance(answer, dict) else None
            raise HostClaimError(f"the host identd refused: {reason or 'no reason given'}")

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        self._buffer = b""
        if sock is not None:
            sock.close()

    # -- the embedded server's calls ----------------------------------------------------

    def claim(
        self,
        target: object,
        user_id: str | None = None,
        *,
        opsys: str = "UNIX",
        charset: str | None = None,
        error: str | None = None,
    ) -> HostClaim:
        """Answer ``user_id`` (or ``error``) for one of this process's connections.

        :param target: the connection: a :class:`asyncio.StreamWriter`, a transport, a
            connected socket, or ``((local_host, local_port), (remote_host,
            remote_port))``. It must exist: the daemon asks the kernel whose it is.
        :param user_id: the id to answer.
        :param opsys: the answer's operating system field.
        :param charset: the id's charset, for an id that is not US-ASCII.
        :param error: an error to answer instead of an id (``HIDDEN-USER``,
            ``NO-USER``).
        :returns: the claim, to :meth:`HostClaim.release` (or use as a ``with`` block).
        :raises HostClaimError: the daemon refused (not this user's connection, the
            policy does not let this user choose, an invalid id) or cannot be reached;
            the message says which.
        :raises ValueError: neither or both of ``user_id`` and ``error``, or a socket
            or transport that is not connected.
        :raises TypeError: a ``target`` that is not a connection.
        """
        if (user_id is None) == (error is None):
            raise ValueError("give exactly one of user_id and error")
        local, remote = _ends(target)
        self._request(
            {
                "op": "claim",
                "local": list(local),
                "remote": list(remote),
                "user_id": user_id,
                "opsys": opsys,
                "charset": charset,
                "error": error,
            }
        )
        return HostClaim(self, local, remote, user_id, error)

    def connecting(self, host: str) -> _Connecting:
        """Declare a connection to ``host`` about to be made and claimed: until ``done()``
        (or the end of the ``with`` / ``async with`` block) a query from ``host`` about
        one of this user's connections that has no claim yet waits briefly for one."""
        return _Connecting(self, host)

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        user_id: str | None = None,
        opsys: str = "UNIX",
        charset: str | None = None,
        error: str | None = None,
        ssl: Any = None,
        local_addr: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """:func:`asyncio.open_connection`, claimed for ``user_id`` (or ``error``) on the
        host daemon before the TLS handshake, with the server's query held meanwhile."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        family, kind, proto, _, address = infos[0]
        async with self.connecting(_host(address)):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                if local_addr is not None:
                    sock.bind(local_addr)
                await loop.sock_connect(sock, address)
                await loop.run_in_executor(
                    None,
                    lambda: self.claim(sock, user_id, opsys=opsys, charset=charset, error=error),
                )
            except BaseException:
                sock.close()
                raise
        if ssl:
            kwargs.setdefault("server_hostname", host)
        return await asyncio.open_connection(sock=sock, ssl=ssl, **kwargs)

    # -- life cycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection to the daemon: every claim made through it ends."""
        with self._lock:
            self._drop()

    def __enter__(self) -> HostClaims:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self._sock is not None else "not connected"
        return f"<HostClaims {self.path} {state}>"
