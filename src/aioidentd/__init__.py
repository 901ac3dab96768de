"""aioidentd: RFC 1413 ident server, client and daemon for asyncio."""
