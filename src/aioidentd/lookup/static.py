"""Owners from a table instead of the kernel: the test double of the server and daemon,
and the tool of applications that know their own connections."""

from __future__ import annotations

from collections.abc import Mapping

from aioidentd.lookup._endpoints import endpoint
from aioidentd.protocol import Address

__all__ = ["StaticLookup"]


def _static_key(addr: Address) -> tuple[bytes, int]:
    ep = endpoint(addr)
    return ep.packed, ep.port


class StaticLookup:
    """A fixed table of connections and their owners.

    Meant as a test double for the server and daemon, and for embedding applications that know
    their own outgoing connections and want to answer without asking the kernel. Addresses are
    normalised like the kernel back ends do, so ``::ffff:1.2.3.4`` and ``1.2.3.4`` are the same.
    """

    blocking: bool = False

    def __init__(self, mapping: Mapping[tuple[Address, Address], int] | None = None) -> None:
        self._table: dict[tuple[tuple[bytes, int], tuple[bytes, int]], int] = {}
        for (local, remote), uid in (mapping or {}).items():
            self.add(local, remote, uid)

    def add(self, local: Address, remote: Address, uid: int) -> None:
        """Record (or replace) the owner of a connection."""
        self._table[_static_key(local), _static_key(remote)] = uid

    def remove(self, local: Address, remote: Address) -> None:
        """Forget a connection; forgetting an unknown one is not an error."""
        self._table.pop((_static_key(local), _static_key(remote)), None)

    def owner(self, local: Address, remote: Address) -> int | None:
        return self._table.get((_static_key(local), _static_key(remote)))

    def server_owner(self, local: Address, remote: Address) -> int | None:
        """:meth:`owner`: the table is all this lookup knows (None: not on this host)."""
        return self.owner(local, remote)
