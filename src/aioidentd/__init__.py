"""aioidentd: RFC 1413 ident server, client and daemon for asyncio.

The layers, lowest first: :mod:`aioidentd.protocol` (sans-IO parsing and formatting),
:mod:`aioidentd.server` (the embeddable server) and :mod:`aioidentd.client` beside it,
:mod:`aioidentd.lookup` (who owns a connection), and the command line on top.
"""

from aioidentd.client import query, query_connection
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
    "Query",
    "Reply",
    "UserIdReply",
    "encode_reply",
    "parse_query",
    "parse_reply",
    "query",
    "query_connection",
]

__version__ = "0.1.0"
