"""Claimed connections: the application names the owner of each of its own connections.

:mod:`aioidentd.claims.registry` matches a query's connection (plain values) to a claim,
a bounded wait or nothing; :mod:`aioidentd.claims.connect` connects with the claim already
in place. Neither knows the server: the server asks them.
"""

from aioidentd.claims.registry import (
    Claim,
    ClaimRegistry,
    ClaimTarget,
    ConnectionKey,
    PendingConnection,
    Wait,
    normalise_host,
    original_destination,
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
