"""Who owns a connection, read from ``/proc/net/tcp`` and ``tcp6``: the fallback for
kernels or sandboxes that refuse netlink. It costs O(table size) per query, so callers must
run it off the event loop (``blocking`` is True)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

from aioidentd.errors import SocketLookupError
from aioidentd.lookup._endpoints import TCP_CLOSE, TCP_LISTEN, TCP_TIME_WAIT, owned, query_pair
from aioidentd.protocol import V4_MAPPED_PREFIX, Address, show_address

__all__ = ["ProcNetLookup", "scan_proc_table"]


def _proc_hex(packed: bytes) -> bytes:
    """Render an address the way /proc/net/tcp prints it: each 32-bit word in host order, %08X."""
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return b"".join(b"%08X" % w for w in words)


def scan_proc_table(table: bytes, local: bytes, remote: bytes) -> int | None:
    """Owner of the connection whose ``ADDR:PORT`` columns equal ``local`` and ``remote``.

    ``local`` and ``remote`` are already in the table's own hex spelling, so matching is a byte
    search instead of parsing every line: the scan is still O(table) but runs at memchr speed.
    A live entry wins over a dead one with the same 4-tuple (a TIME_WAIT remnant can coexist with
    its successor).
    """
    for state, uid, inode in _entries(table, local, remote):
        if owned(state, uid, inode):
            return uid
    return None


def _entries(table: bytes, local: bytes, remote: bytes) -> Iterator[tuple[int, int, int]]:
    """(state, uid, inode) of each line whose ``ADDR:PORT`` columns are these."""
    needle = b" " + local + b" " + remote + b" "
    pos = table.find(needle)
    while pos >= 0:
        start = table.rfind(b"\n", 0, pos) + 1
        stop = table.find(b"\n", pos)
        fields = table[start : stop if stop >= 0 else len(table)].split()
        try:
            yield int(fields[3], 16), int(fields[7]), int(fields[9])
        except (IndexError, ValueError):
            raise SocketLookupError(f"malformed /proc/net/tcp line: {fields!r}") from None
        pos = table.find(needle, pos + 1)


def _column(packed: bytes, port: int) -> bytes:
    return _proc_hex(packed) + b":%04X" % port


class ProcNetLookup:
    """Scan ``/proc/net/tcp`` and ``/proc/net/tcp6``: the fallback when netlink is refused.

    Reads the whole table per query because the kernel regenerates it on every read anyway; the
    cost is proportional to the number of sockets on the host, hence ``blocking``.
    """

    blocking: bool = True

    def __init__(self, root: str | os.PathLike[str] = "/proc") -> None:
        self._tcp = os.path.join(root, "net", "tcp")
        self._tcp6 = os.path.join(root, "net", "tcp6")

    def owner(self, local: Address, remote: Address) -> int | None:
        pair = query_pair(local, remote)
        if pair is None:
            return None
        lo, re = pair
        if lo.family == socket.AF_INET6:
            return self._search(self._tcp6, lo.packed, lo.port, re.packed, re.port, required=False)
        uid = self._search(self._tcp, lo.packed, lo.port, re.packed, re.port, required=True)
        if uid is None:
            uid = self._search(
                self._tcp6,
                V4_MAPPED_PREFIX + lo.packed,
                lo.port,
                V4_MAPPED_PREFIX + re.packed,
                re.port,
                required=False,
            )
        return uid

    def server_owner(self, local: Address, remote: Address) -> int | None:
        """As :meth:`NetlinkLookup.server_owner
        <aioidentd.lookup.NetlinkLookup.server_owner>` does, from the tables: /proc shows a
        connection a listener still holds with the listener's uid, but with uid 0 when
        that is root's, so the listener is looked up too."""
        pair = query_pair(local, remote)
        if pair is None:
            return None
        lo, re = pair
        # The tables and spellings to look in, as the kernel does: IPv4 first, then the
        # v4-mapped form on a dual-stack IPv6 socket.
        forms = [(self._tcp6 if lo.family == socket.AF_INET6 else self._tcp, b"")]
        if lo.family == socket.AF_INET:
            forms.append((self._tcp6, V4_MAPPED_PREFIX))
        tables = [self._read(path, required=path == self._tcp) for path, _ in forms]
        found: list[tuple[int, int, int]] = []
        for table, (_, prefix) in zip(tables, forms, strict=True):
            ours = _column(prefix + lo.packed, lo.port)
            found = list(_entries(table, ours, _column(prefix + re.packed, re.port)))
            if found:
                break
        else:
            return None
        live = [entry for entry in found if entry[0] not in (TCP_TIME_WAIT, TCP_CLOSE)]
        for state, uid, inode in live:
            if owned(state, uid, inode):
                return uid
        if not live:
            raise SocketLookupError(f"the connection to {show_address(local)} is closing")
        # Not accepted yet: the listener it waits on. The kernel prefers a listener bound
        # to the address over one bound to every address, an IPv4 one over an IPv6 one.
        for table, (_, prefix) in zip(tables, forms, strict=True):
            width = len(prefix + lo.packed)
            anyone = _column(bytes(width), 0)
            for address in (prefix + lo.packed, bytes(width)):
                for state, uid, _inode in _entries(table, _column(address, lo.port), anyone):
                    if state == TCP_LISTEN:
                        return uid
        raise SocketLookupError(
            f"no listening socket on {show_address(local)} for a connection waiting there"
        )

    def _read(self, path: str, *, required: bool) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError as exc:
            if not required:
                return b""  # IPv6 disabled: no tcp6 table, so no such socket either
            raise SocketLookupError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc
        except OSError as exc:
            raise SocketLookupError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc

    def _search(
        self, path: str, laddr: bytes, lport: int, raddr: bytes, rport: int, *, required: bool
    ) -> int | None:
        table = self._read(path, required=required)
        return scan_proc_table(table, _column(laddr, lport), _column(raddr, rport))
