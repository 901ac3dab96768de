"""aioidentd: RFC 1413 ident server, client and daemon for asyncio.

The layers, lowest first: :mod:`aioidentd.protocol` (sans-IO parsing and formatting),
:mod:`aioidentd.server` (the embeddable server, with :mod:`aioidentd.claims` for the
application's own connections and :mod:`aioidentd.controller` to run it in a thread) and
:mod:`aioidentd.client` beside it,
:mod:`aioidentd.lookup` (who owns a connection), and the command line on top.
"""

from aioidentd.claims import Claim, PendingConnection
from aioidentd.client import query, query_connection
from aioidentd.controller import Controller, serving
from aioidentd.errors import (
    IdentConnectError,
    IdentConnectionClosed,
    IdentError,
    IdentPortMismatch,
    IdentProtocolError,
    IdentTimeout,
)
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
from aioidentd.server import Handler, IdentRequest, IdentServer

__all__ = [
    "Claim",
    "Controller",
    "ErrorReply",
    "Handler",
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
    "Query",
    "Reply",
    "UserIdReply",
    "encode_reply",
    "parse_query",
    "parse_reply",
    "query",
    "query_connection",
    "serving",
]

__version__ = "0.1.0"
