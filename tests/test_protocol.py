"""The sans-IO core: what goes over the wire, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioidentd.protocol import (
    MAX_TOKEN,
    WHITESPACE,
    ErrorReply,
    InvalidQuery,
    MalformedReply,
    Query,
    UserIdReply,
    check_charset,
    check_user_id_octets,
    encode_reply,
    parse_query,
    parse_reply,
    split_lines,
    unmapped,
)

# -- queries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"80,25",
        b"80, 25",
        b"80 , 25",
        b"80 ,25",
        b"  80\t,\t 25  ",
        b"80,25\r",
        b"80,25\r\n",
        b"80,25\n",
        b"80,\r25",  # the seed took a stray CR as whitespace
        b"\x0b80,25\x0c",  # VT and FF, as the seed (Perl's \s) did
        b"00080,025",
    ],
)
def test_query_forms_clients_send_are_accepted(line: bytes) -> None:
    assert parse_query(line) == Query(80, 25)


@pytest.mark.parametrize(
    ("line", "echo"),
    [
        (b"Garbage", (0, 0)),
        (b"", (0, 0)),
        (b"   ", (0, 0)),
        (b"1 2,3", (0, 0)),
        (b"1;2", (0, 0)),
        (b"-1,5", (0, 0)),
        (b"+80,25", (0, 0)),
        (b"80, 25 : foo", (0, 0)),
        (b"\xa080,25", (0, 0)),  # NBSP is not whitespace
        (b"80,25,26", (0, 0)),
        ("٨٠,25".encode(), (0, 0)),  # non-ASCII digits
        (b"0,5", (0, 5)),
        (b"5,0", (5, 0)),
        (b"70000,5", (70000, 5)),
        (b"65536,65535", (65536, 65535)),
        (b"99999999999999999999,1", (0, 0)),
    ],
)
def test_bad_queries_give_invalid_port_with_rfc_pair(line: bytes, echo: tuple[int, int]) -> None:
    with pytest.raises(InvalidQuery) as info:
        parse_query(line)
    assert (info.value.server_port, info.value.client_port) == echo
    assert encode_reply(info.value.reply) == b"%d,%d:ERROR:INVALID-PORT\r\n" % echo


def test_port_bounds() -> None:
    assert parse_query(b"1,65535") == Query(1, 65535)
    with pytest.raises(ValueError):
        Query(0, 1)
    with pytest.raises(ValueError):
        Query(1, 65536)


# -- sending ---------------------------------------------------------------------------------


def test_compact_and_spaced_styles() -> None:
    reply = UserIdReply.from_text(6193, 23, "UNIX", "stjohns")
    assert encode_reply(reply) == b"6193,23:USERID:UNIX:stjohns\r\n"
    assert encode_reply(reply, "spaced") == b"6193 , 23 : USERID : UNIX : stjohns\r\n"
    error = ErrorReply(6195, 23, "NO-USER")
    assert encode_reply(error) == b"6195,23:ERROR:NO-USER\r\n"
    assert encode_reply(error, "spaced") == b"6195 , 23 : ERROR : NO-USER\r\n"


def test_charset_is_written_after_opsys() -> None:
    reply = UserIdReply.from_text(1, 2, "UNIX", "jürgen", charset="UTF-8")
    assert encode_reply(reply) == "1,2:USERID:UNIX,UTF-8:jürgen\r\n".encode()
    assert encode_reply(reply, "spaced") == "1 , 2 : USERID : UNIX , UTF-8 : jürgen\r\n".encode()


def test_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="style"):
        encode_reply(ErrorReply(1, 2, "NO-USER"), "fancy")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("user_id", "message"),
    [
        ("alice\r\n6193,23:USERID:UNIX:root", "CR, LF or NUL"),
        ("al\nice", "CR, LF or NUL"),
        ("al\0ice", "CR, LF or NUL"),
        ("", "1-512 octets"),
        ("x" * 513, "1-512 octets"),
        ("jürgen", "charset='UTF-8'"),
    ],
)
def test_user_ids_that_would_corrupt_the_wire_are_refused(user_id: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UserIdReply.from_text(1, 2, "UNIX", user_id)


def test_user_id_limits_and_content() -> None:
    assert UserIdReply.from_text(1, 2, "OTHER", "x" * 512).raw == b"x" * 512
    # Colons and leading spaces are part of a user id (everything after the opsys colon).
    reply = UserIdReply.from_text(1, 2, "OTHER", " a:b")
    assert encode_reply(reply) == b"1,2:USERID:OTHER:  a:b\r\n"  # separator + the id's space
    assert parse_reply(encode_reply(reply)) == reply


@pytest.mark.parametrize("opsys", ["", "UN:IX", "UNIX,UTF-8", "UN IX", "x" * 65, "ÜNIX"])
def test_bad_opsys_is_refused(opsys: str) -> None:
    with pytest.raises(ValueError, match="opsys"):
        UserIdReply.from_text(1, 2, opsys, "alice")


def test_an_id_from_text_never_sends_a_control_octet() -> None:
    """The rule holds for the octets: "e" is 0x85 in EBCDIC, NEL to everyone else."""
    with pytest.raises(ValueError, match="charset 'cp037' cannot be sent"):
        UserIdReply.from_text(1, 2, "UNIX", "e", charset="cp037")
    assert UserIdReply.from_text(1, 2, "UNIX", "\u0105", charset="utf8").raw == b"\xc4\x85"
    check_user_id_octets(b"\xc4\x85", "UTF-8")  # a continuation octet, not NEL
    for raw, charset in [(b"\x85", "UTF-8"), (b"\x85", "ISO-8859-1"), (b"a\x1b", None)]:
        with pytest.raises(ValueError, match="control octet"):
            check_user_id_octets(raw, charset)
    assert check_charset("charset", "latin1") == "iso8859-1"


def test_bad_charset_is_refused() -> None:
    with pytest.raises(ValueError, match="charset"):
        UserIdReply.from_text(1, 2, "UNIX", b"alice", charset="UTF:8")
    with pytest.raises(ValueError, match="unknown charset"):
        UserIdReply.from_text(1, 2, "UNIX", "alice", charset="NO-SUCH-CHARSET")


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("NO-USER", "NO-USER"),
        ("no-user", "NO-USER"),
        ("Hidden-User", "HIDDEN-USER"),
        ("INVALID-PORT", "INVALID-PORT"),
        ("UNKNOWN-ERROR", "UNKNOWN-ERROR"),
        ("X-BUSY", "X-BUSY"),
        ("X" + "y" * 63, "X" + "y" * 63),
    ],
)
def test_error_tokens(given: str, sent: str) -> None:
    assert ErrorReply(1, 2, given).error == sent


@pytest.mark.parametrize("token", ["NOPE", "x-lower", "X", "X" + "y" * 64, "X:Y", "X-A\r\nB", ""])
def test_bad_error_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match="X-token"):
        ErrorReply(1, 2, token)


# -- receiving -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"6193,23:USERID:UNIX:stjohns\r\n",
        b"6193 , 23 : USERID : UNIX : stjohns\r\n",
        b"  6193 ,\t23 :  userid :UNIX : stjohns\n",
        b"6193,23:USERID:UNIX:stjohns",
    ],
)
def test_parse_userid_forms(line: bytes) -> None:
    assert parse_reply(line) == UserIdReply(6193, 23, "UNIX", b"stjohns")


def test_parse_userid_takes_the_id_verbatim_after_one_space() -> None:
    reply = parse_reply(b"1 , 2 : USERID : OTHER :  two spaces:and colon \r\n")
    assert isinstance(reply, UserIdReply)
    assert reply.raw == b" two spaces:and colon "
    reply = parse_reply(b"1,2:USERID:UNIX , UTF-8:j\xc3\xbcrgen\r\n")
    assert isinstance(reply, UserIdReply)
    assert (reply.opsys, reply.charset, reply.user_id) == ("UNIX", "UTF-8", "jürgen")


def test_undecodable_user_id_is_kept_as_bytes_and_shown_in_hex() -> None:
    reply = parse_reply(b"1,2:USERID:UNIX:\xff\xfe\r\n")
    assert isinstance(reply, UserIdReply)
    assert reply.user_id == b"\xff\xfe"
    assert str(reply) == "USERID UNIX 0xfffe"


def test_parse_errors() -> None:
    assert parse_reply(b"6195 , 23 : ERROR : NO-USER\r\n") == ErrorReply(6195, 23, "NO-USER")
    assert parse_reply(b"1,2:error:x-lowercase-token\n").error == "x-lowercase-token"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"garbage",
        b"1,2:USERID:UNIX",
        b"1,2:USERID::alice",
        b"1,2:USERID:UNIX:",
        b"1,2:WHAT:EVER",
        b"1,2:ERROR:",
        b"1,2:ERROR:NO USER",
        b"123456,2:ERROR:NO-USER",
        b"1,2:ERROR:\xff",
        b"1,2:USERID:\xff:x",
    ],
)
def test_malformed_replies(line: bytes) -> None:
    with pytest.raises(MalformedReply):
        parse_reply(line)


def test_split_lines_keeps_the_partial_tail() -> None:
    assert split_lines(b"1,2\r\n3,4\n5,") == ([b"1,2\r", b"3,4"], b"5,")
    assert split_lines(b"") == ([], b"")


# -- properties ------------------------------------------------------------------------------

ports = st.integers(min_value=1, max_value=65535)
tokens = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":,"),
    min_size=1,
    max_size=64,
)
user_ids = st.binary(min_size=1, max_size=512).filter(lambda b: not ({0, 10, 13} & set(b)))
styles = st.sampled_from(["compact", "spaced"])


@given(ports, ports, tokens, user_ids, st.none() | tokens, styles)
def test_userid_round_trip(
    sp: int, cp: int, opsys: str, raw: bytes, charset: str | None, style: str
) -> None:
    reply = UserIdReply(sp, cp, opsys, raw, charset)
    assert parse_reply(encode_reply(reply, style)) == reply  # type: ignore[arg-type]


@given(
    ports,
    ports,
    st.sampled_from(["INVALID-PORT", "NO-USER", "HIDDEN-USER", "UNKNOWN-ERROR"])
    | st.builds(lambda t: "X" + t[:63], tokens),
    styles,
)
def test_error_round_trip(sp: int, cp: int, error: str, style: str) -> None:
    reply = ErrorReply(sp, cp, error)
    assert parse_reply(encode_reply(reply, style)) == reply  # type: ignore[arg-type]


@given(ports, ports)
def test_query_round_trip(sp: int, cp: int) -> None:
    assert parse_query(Query(sp, cp).encode()) == Query(sp, cp)


@given(st.binary(max_size=1100))
def test_query_parser_raises_only_its_own_error(data: bytes) -> None:
    try:
        query = parse_query(data)
    except InvalidQuery as exc:
        encode_reply(exc.reply)  # the error it carries is always sendable
    else:
        assert 1 <= query.server_port <= 65535 and 1 <= query.client_port <= 65535


@given(st.binary(max_size=1100))
def test_reply_parser_raises_only_its_own_error(data: bytes) -> None:
    try:
        reply = parse_reply(data)
    except MalformedReply:
        pass
    else:
        # The spaced form writes " : " before the id, so a leading space survives.
        assert parse_reply(encode_reply(reply, "spaced")) == reply


# -- the value rules, each defined once ----------------------------------------------------


def test_every_token_is_bounded_by_max_token() -> None:
    """opsys, charset, X-tokens and the non-standard error names a client keeps all stop at
    MAX_TOKEN characters (the limit is the constant, not a 64 repeated in each pattern)."""
    longest, too_long = "A" * MAX_TOKEN, "A" * (MAX_TOKEN + 1)
    assert UserIdReply(1, 2, longest, b"x", longest).opsys == longest
    with pytest.raises(ValueError, match=f"1-{MAX_TOKEN} printable"):
        UserIdReply(1, 2, too_long, b"x")
    with pytest.raises(ValueError, match=f"1-{MAX_TOKEN} printable"):
        UserIdReply(1, 2, "UNIX", b"x", too_long)
    assert ErrorReply(1, 2, "X" + longest[1:]).error == "X" + longest[1:]
    with pytest.raises(ValueError):
        ErrorReply(1, 2, "X" + too_long[1:])
    assert parse_reply(b"1,2:ERROR:" + longest.encode()) == ErrorReply._received(1, 2, longest)
    with pytest.raises(MalformedReply):
        parse_reply(b"1,2:ERROR:" + too_long.encode())


def test_a_non_standard_error_name_from_a_peer_is_kept_and_shown() -> None:
    reply = parse_reply(b"1,2:ERROR:NO-SUCH-THING\r\n")
    assert isinstance(reply, ErrorReply) and reply.error == "NO-SUCH-THING"
    assert repr(reply) == "ErrorReply(server_port=1, client_port=2, error='NO-SUCH-THING')"
    assert encode_reply(reply) == b"1,2:ERROR:NO-SUCH-THING\r\n"


@pytest.mark.parametrize("blank", [bytes([char]) for char in WHITESPACE])
def test_every_whitespace_octet_is_accepted_around_tokens(blank: bytes) -> None:
    assert parse_query(blank + b"80" + blank + b"," + blank + b"25" + blank) == Query(80, 25)
    assert parse_reply(b"80,25:" + blank + b"ERROR" + blank + b":NO-USER" + blank) == (
        ErrorReply(80, 25, "NO-USER")
    )


@pytest.mark.parametrize(
    ("host", "plain"),
    [
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("::FFFF:c000:0207", "192.0.2.7"),
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("fe80::1%lo", "fe80::1%lo"),
        ("localhost", "localhost"),
    ],
)
def test_v4_mapped_addresses_are_plain_ipv4(host: str, plain: str) -> None:
    assert unmapped(host) == plain


def test_the_version_is_said_once() -> None:
    """The installed metadata's version is the package's own ``__version__``."""
    import importlib.metadata

    import aioidentd

    assert importlib.metadata.version("aioidentd") == aioidentd.__version__
