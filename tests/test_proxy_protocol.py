"""The PROXY protocol header (sans-IO) and the embedded server's ``trusted_proxies``: a
header from a trusted forwarder makes claims match the real querier; from anyone else
it is just an invalid query."""

from __future__ import annotations

import asyncio

import pytest

import support
from aioidentd import IdentServer
from aioidentd.proxy_protocol import (
    MAX_V1,
    MAX_V2,
    SIGNATURE_V2,
    InvalidProxyHeader,
    ProxyHeader,
    encode_proxy_header,
    parse_proxy_header,
)

QUERIER = ("192.0.2.7", 41234)
ASKED_AT = ("198.51.100.5", 113)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    ("source", "destination"),
    [(QUERIER, ASKED_AT), (("2001:db8::7", 41234), ("2001:db8::5", 113))],
)
def test_a_header_reads_back_as_written(
    version: str, source: tuple[str, int], destination: tuple[str, int]
) -> None:
    header = encode_proxy_header(version, source, destination)  # type: ignore[arg-type]
    parsed = parse_proxy_header(header + b"6667,40001\r\n")
    assert parsed == ProxyHeader(len(header), source, destination, version)  # type: ignore[arg-type]


def test_v1_is_the_text_line_of_the_specification() -> None:
    assert encode_proxy_header("v1", QUERIER, ASKED_AT) == (
        b"PROXY TCP4 192.0.2.7 198.51.100.5 41234 113\r\n"
    )


def test_v2_is_the_binary_header_of_the_specification() -> None:
    header = encode_proxy_header("v2", QUERIER, ASKED_AT)
    assert header[:12] == SIGNATURE_V2
    assert header[12:16] == b"\x21\x11\x00\x0c"  # version 2 PROXY, TCP over IPv4, 12 octets
    assert header[16:] == bytes([192, 0, 2, 7, 198, 51, 100, 5]) + b"\xa1\x12\x00\x71"


def test_v4_mapped_addresses_are_sent_as_ipv4() -> None:
    header = encode_proxy_header("v1", ("::ffff:192.0.2.7", 1), ("198.51.100.5", 113))
    assert header == b"PROXY TCP4 192.0.2.7 198.51.100.5 1 113\r\n"


def test_mixed_families_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="family"):
        encode_proxy_header("v2", ("2001:db8::1", 1), ("192.0.2.1", 113))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_every_prefix_of_a_header_waits_for_more(version: str) -> None:
    header = encode_proxy_header(version, QUERIER, ASKED_AT)  # type: ignore[arg-type]
    for size in range(1, len(header)):
        assert parse_proxy_header(header[:size]) is None, size


def test_a_plain_query_is_no_header() -> None:
    assert parse_proxy_header(b"6667, 40001\r\n") == ProxyHeader(0)
    assert parse_proxy_header(b"\r\n6667,1\r\n") == ProxyHeader(0)


def test_unknown_and_local_mean_the_connections_own_addresses() -> None:
    assert parse_proxy_header(b"PROXY UNKNOWN\r\nrest") == ProxyHeader(15, version="v1")
    local = SIGNATURE_V2 + b"\x20\x00\x00\x00"
    assert parse_proxy_header(local + b"1,2\r\n") == ProxyHeader(16, version="v2")
    unix = SIGNATURE_V2 + b"\x21\x31\x00\xd8" + bytes(216)
    assert parse_proxy_header(unix) == ProxyHeader(16 + 216, version="v2")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PROXY TCP4 192.0.2.7 198.51.100.5 41234\r\n", "malformed"),
        (b"PROXY TCP4 2001:db8::1 198.51.100.5 1 2\r\n", "does not match"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.5 70000 113\r\n", "out of range"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.5 0113 113\r\n", "invalid port"),
        (b"PROXY TCP4 192.0.2.300 198.51.100.5 1 113\r\n", "invalid address"),
        (b"PROXY " + b"x" * MAX_V1, "longer than"),
        (SIGNATURE_V2 + b"\x11\x11\x00\x0c" + bytes(12), "version 1"),
        (SIGNATURE_V2 + b"\x22\x11\x00\x0c" + bytes(12), "command"),
        (SIGNATURE_V2 + b"\x21\x11\x00\x04" + bytes(4), "too short"),
        (SIGNATURE_V2 + b"\x21\x11\xff\xff", f"at most {MAX_V2}"),
    ],
)
def test_malformed_headers_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidProxyHeader, match=message):
        parse_proxy_header(data)


# --------------------------------------------------------------------------- the server


async def exchange(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    return await support.exchange(port, data, half_close=True, source=source)


async def test_a_trusted_forwarder_makes_claims_match_the_real_querier() -> None:
    async with IdentServer(
        "127.0.0.1", 0, default="fallback", trusted_proxies=["127.0.0.1/32"]
    ) as server:
        port = server.addresses[0][1]
        server.claim((("127.0.0.5", 40001), ("127.0.0.2", 6667)), "claimed")
        for version in ("v1", "v2"):
            header = encode_proxy_header(version, ("127.0.0.2", 5555), ("127.0.0.5", 113))
            assert await exchange(port, header + b"40001,6667\r\n") == (
                b"40001,6667:USERID:UNIX:claimed\r\n"
            )
        # Split anywhere, the header and the query still read the same.
        header = encode_proxy_header("v2", ("127.0.0.2", 5555), ("127.0.0.5", 113))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for octet in header + b"40001,6667\r\n":
            writer.write(bytes([octet]))
            await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 5) == b"40001,6667:USERID:UNIX:claimed\r\n"
        writer.close()
        # Without a header the forwarder is the querier, as for anyone: no claim matches.
        assert await exchange(port, b"40001,6667\r\n") == b"40001,6667:USERID:UNIX:fallback\r\n"


async def test_a_header_from_an_untrusted_address_is_an_invalid_query() -> None:
    async with IdentServer(
        ["127.0.0.1", "127.0.0.3"], 0, default="fallback", trusted_proxies=["127.0.0.3"]
    ) as server:
        port = server.addresses[0][1]
        server.claim((("127.0.0.5", 40001), ("127.0.0.2", 6667)), "claimed")
        header = encode_proxy_header("v1", ("127.0.0.2", 5555), ("127.0.0.5", 113))
        answer = await exchange(port, header + b"40001,6667\r\n", source="127.0.0.4")
        assert answer == b"0,0:ERROR:INVALID-PORT\r\n"


async def test_a_bad_header_from_a_trusted_address_closes_without_an_answer() -> None:
    async with IdentServer(
        "127.0.0.1", 0, default="fallback", trusted_proxies=["127.0.0.1"]
    ) as server:
        port = server.addresses[0][1]
        assert await exchange(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n1,2\r\n") == b""
        # A header cut short by the end of the connection is not a query either.
        assert await exchange(port, encode_proxy_header("v2", QUERIER, ASKED_AT)[:20]) == b""
        # The server is unharmed.
        assert await exchange(port, b"1,2\r\n") == b"1,2:USERID:UNIX:fallback\r\n"


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        IdentServer("127.0.0.1", 0, trusted_proxies=["localhost"])
    with pytest.raises(ValueError, match="trusted_proxies"):
        IdentServer("127.0.0.1", 0, trusted_proxies=["127.0.0.1/8"])


async def test_a_header_alone_in_its_first_segment_is_not_taken_for_a_query() -> None:
    """With ``defer_accept`` the connection is accepted once its first octets are there:
    a v1 header line alone must not be answered as an (invalid) query on the spot."""
    async with IdentServer(
        "127.0.0.1", 0, default="fallback", trusted_proxies=["127.0.0.1"], defer_accept=True
    ) as server:
        port = server.addresses[0][1]
        server.claim((("127.0.0.5", 40001), ("127.0.0.2", 6667)), "claimed")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_proxy_header("v1", ("127.0.0.2", 5555), ("127.0.0.5", 113)))
        await writer.drain()
        await asyncio.sleep(0)  # the header travels alone
        writer.write(b"40001,6667\r\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"40001,6667:USERID:UNIX:claimed\r\n"
        writer.close()
