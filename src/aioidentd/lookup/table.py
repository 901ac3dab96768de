"""The whole TCP socket table of a network namespace, read from ``/proc/net/tcp`` and
``tcp6``: for diagnosis (``aioidentd explain``: which connections are *near* the one that
was not found), never for answering queries, which ask the kernel for one exact 4-tuple.

Reading the whole table costs O(sockets on the host); that is fine for a command run by
hand and would not be for the daemon's hot path.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Final, NamedTuple

from aioidentd.lookup._endpoints import normalise_packed, owned
from aioidentd.protocol import Address

__all__ = ["STATE_NAMES", "TableEntry", "read_table"]

#: Linux TCP states (include/net/tcp_states.h) as ``ss`` names them.
STATE_NAMES: Final = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}


class TableEntry(NamedTuple):
    """One socket; addresses as text, v4-mapped ones as plain IPv4."""

    local: Address
    remote: Address
    state: int
    uid: int
    inode: int

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, f"state {self.state}")

    @property
    def owned(self) -> bool:
        """Whether a lookup would report an owner (:func:`owned`)."""
        return owned(self.state, self.uid, self.inode)


def _address(text: str) -> Address:
    """``0100007F:1F90`` (each 32-bit word in host order) to ``("127.0.0.1", 8080)``."""
    hexaddr, _, hexport = text.partition(":")
    # Each word was printed with %08X of the host-order integer: undo that per word.
    packed = normalise_packed(
        b"".join(struct.pack("=I", int(hexaddr[i : i + 8], 16)) for i in range(0, len(hexaddr), 8))
    )
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed), int(hexport, 16)


def _parse(data: str) -> list[TableEntry]:
    entries: list[TableEntry] = []
    for line in data.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            entries.append(
                TableEntry(
                    _address(fields[1]),
                    _address(fields[2]),
                    int(fields[3], 16),
                    int(fields[7]),
                    int(fields[9]),
                )
            )
        except (ValueError, struct.error, OSError):
            continue  # a line of an unknown layout: this is a diagnosis, not an answer
    return entries


def read_table(proc_net: str = "/proc/net") -> list[TableEntry]:
    """Every TCP socket of the network namespace that ``proc_net`` shows (``/proc/net``
    is our own, ``/proc/PID/net`` that of process PID). Raises :class:`OSError` when
    ``tcp`` cannot be read; a missing ``tcp6`` (IPv6 disabled) is an empty table."""
    entries: list[TableEntry] = []
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc_net, name), encoding="ascii", errors="replace") as f:
                entries.extend(_parse(f.read()))
        except FileNotFoundError:
            if name == "tcp":
                raise
    return entries
