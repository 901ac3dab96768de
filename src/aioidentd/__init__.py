"""aioidentd: RFC 1413 ident server, client and daemon for asyncio.

The layers, lowest first: :mod:`aioidentd.protocol` (sans-IO parsing and formatting),
:mod:`aioidentd.server` (the embeddable asyncio server), and the command line on top.
"""

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
    "IdentRequest",
    "IdentServer",
    "InvalidQuery",
    "MalformedReply",
    "Query",
    "Reply",
    "UserIdReply",
    "encode_reply",
    "parse_query",
    "parse_reply",
]

__version__ = "0.1.0"
