"""aioidentd: RFC 1413 ident server, client and daemon for asyncio."""

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
    Query,
    UserIdReply,
    encode_reply,
    parse_query,
    parse_reply,
)

__all__ = [
    "ErrorReply",
    "IdentConnectError",
    "IdentConnectionClosed",
    "IdentError",
    "IdentPortMismatch",
    "IdentProtocolError",
    "IdentTimeout",
    "Query",
    "UserIdReply",
    "encode_reply",
    "parse_query",
    "parse_reply",
    "query",
    "query_connection",
]
