"""Who owns a connection, read from ``/proc/net/tcp`` and ``tcp6``: the fallback for
kernels or sandboxes that refuse netlink. It costs O(table size) per query, so callers must
run it off the event loop (``blocking`` is True)."""

from __future__ import annotations

import os
import socket
import struct

from aioidentd.errors import SocketLookupError
from aioidentd.lookup._endpoints import owned, query_pair
from aioidentd.protocol import V4_MAPPED_PREFIX, Address

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
    needle = b" " + local + b" " + remote + b" "
    pos = table.find(needle)
    while pos >= 0:
        start = table.rfind(b"\n", 0, pos) + 1
        stop = table.find(b"\n", pos)
        fields = table[start : stop if stop >= 0 else len(table)].split()
        try:
            state, uid, inode = int(fields[3], 16), int(fields[7]), int(fields[9])
        except (IndexError, ValueError):
            raise SocketLookupError(f"malformed /proc/net/tcp line: {fields!r}") from None
        if owned(state, uid, inode):
            return uid
        pos = table.find(needle, pos + 1)
    return None


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

    def _search(
        self, path: str, laddr: bytes, lport: int, raddr: bytes, rport: int, *, required: bool
    ) -> int | None:
        try:
            with open(path, "rb") as f:
                table = f.read()
        except FileNotFoundError as exc:
            if not required:
                return None  # IPv6 disabled: no tcp6 table, so no such socket either
            raise SocketLookupError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc
        except OSError as exc:
            raise SocketLookupError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc
        local = _proc_hex(laddr) + b":%04X" % lport
        remote = _proc_hex(raddr) + b":%04X" % rport
        return scan_proc_table(table, local, remote)
