"""aioidentd: RFC 1413 ident server, client and daemon for asyncio.

This module is the public API, with :mod:`aioidentd.protocol` and :mod:`aioidentd.errors`;
every other module is internal. The layers, lowest first: :mod:`aioidentd.messages`
(the query and reply values and their rules), :mod:`aioidentd.errors`,
:mod:`aioidentd.protocol` (sans-IO parsing and formatting, and every name of messages),
:mod:`aioidentd.server` (the embeddable server, with :mod:`aioidentd.claims` for the
application's own connections, :mod:`aioidentd.controller` to run it in a thread and
:mod:`aioidentd.stats` for its counters) and
:mod:`aioidentd.client` beside it, :mod:`aioidentd.pseudonym` (per-network ids from a
key, for applications and the daemon), :mod:`aioidentd.lookup` (who owns a connection),
:mod:`aioidentd.policy` (the daemon's answers), :mod:`aioidentd.daemon` and the command
line on top.
"""

from aioidentd.claims import Claim, PendingConnection
from aioidentd.client import IDENT_PORT, query, query_connection
from aioidentd.controller import Controller, serving
from aioidentd.errors import (
    AioidentdError,
    IdentConnectError,
    IdentConnectionClosed,
    IdentError,
    IdentPortMismatch,
    IdentProtocolError,
    IdentTimeout,
)
from aioidentd.host_claims import HostClaim, HostClaimError, HostClaims
from aioidentd.protocol import (
    ErrorReply,
    InvalidQuery,
    MalformedReply,
    Query,
    Reply,
    UserIdReply,
    encode_reply,
    parse_query,
    parse_reply,
)
from aioidentd.pseudonym import Pseudonyms
from aioidentd.server import Handler, IdentRequest, IdentServer
from aioidentd.stats import ServerStats

__all__ = [
    "IDENT_PORT",
    "AioidentdError",
    "Claim",
    "Controller",
    "ErrorReply",
    "Handler",
    "HostClaim",
    "HostClaimError",
    "HostClaims",
    "IdentConnectError",
    "IdentConnectionClosed",
    "IdentError",
    "IdentPortMismatch",
    "IdentProtocolError",
    "IdentRequest",
    "IdentServer",
    "IdentTimeout",
    "InvalidQuery",
    "MalformedReply",
    "PendingConnection",
    "Pseudonyms",
    "Query",
    "Reply",
    "ServerStats",
    "UserIdReply",
    "encode_reply",
    "parse_query",
    "parse_reply",
    "query",
    "query_connection",
    "serving",
]

__version__ = "0.1.0"
