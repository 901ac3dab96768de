"""One rule for the characters of an id sent from text, from every place an id comes from:
a user's reply file, a configured ``fixed`` reply, ``serve --default``, the server's
fallback, ``IdentRequest.reply`` in an embedding application's handler.

Each class of refused character is tried from each source: C0 controls, C1 controls
(U+0085 NEL ends a line for Unicode-aware readers, U+009B is the 8-bit CSI that starts
terminal sequences), the Unicode line and paragraph separators, and the bidirectional
controls that make an id display as something it is not.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

import aioidentd
from aioidentd import IdentRequest, IdentServer, UserIdReply
from aioidentd.errors import ConfigError
from aioidentd.policy import REPLY_FILE, Policy, parse_config
from aioidentd.protocol import check_user_id_text, safe_user_id
from support import FakeUserDB, run_aioidentd

#: (id, words of the error) for each refused class; each id is valid UTF-8 and would go out
#: as is with ``charset = "UTF-8"`` if the class were not refused.
REFUSED = [
    pytest.param("ab\x1b[31m", "control characters", id="C0-ESC"),
    pytest.param("ab\x7f", "control characters", id="DEL"),
    pytest.param("al\x85ice", "C1 control characters", id="C1-NEL"),
    pytest.param("ab\x9b31m", "C1 control characters", id="C1-CSI"),
    pytest.param("ab\x80", "C1 control characters", id="C1-first"),
    pytest.param("ab\x9f", "C1 control characters", id="C1-last"),
    pytest.param("al\u2028ice", "line or paragraph separators", id="LS"),
    pytest.param("al\u2029ice", "line or paragraph separators", id="PS"),
    pytest.param("evil\u202egnp.exe", "bidirectional controls", id="RLO"),
    pytest.param("a\u202ab", "bidirectional controls", id="LRE"),
    pytest.param("a\u200eb", "bidirectional controls", id="LRM"),
    pytest.param("a\u200fb", "bidirectional controls", id="RLM"),
    pytest.param("a\u2066b\u2069", "bidirectional controls", id="LRI-PDI"),
    pytest.param("a\u2068b", "bidirectional controls", id="FSI"),
    pytest.param("a\u061cb", "bidirectional controls", id="ALM"),
]

#: Neighbours of the refused classes that stay valid ids.
ACCEPTED = ["jürgen", "a\xa0b", "\u00a1hola", "名前", "a\u2027b", "a\u202fb", "a\u206ab"]


@pytest.mark.parametrize(("text", "words"), REFUSED)
def test_the_rule_names_the_class_and_shows_the_id_escaped(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=f"must not contain {words}") as info:
        check_user_id_text(text)
    assert repr(text) in str(info.value)
    # The message itself carries none of the characters it refuses.
    assert text not in str(info.value)


@pytest.mark.parametrize("text", ACCEPTED)
def test_neighbouring_characters_are_fine(text: str) -> None:
    assert safe_user_id(text, "UTF-8") == text.encode()
    assert UserIdReply.from_text(1, 2, "UNIX", text, "UTF-8").raw == text.encode()


@pytest.mark.parametrize(("text", "words"), REFUSED)
def test_configured_fixed_reply(text: str, words: str) -> None:
    # TOML's \\uXXXX escapes: how an administrator writes (or pastes) such an id.
    escaped = "".join(c if c.isascii() and c.isprintable() else f"\\u{ord(c):04X}" for c in text)
    config = f'[reply]\ncharset = "UTF-8"\n\n[default]\nanswer = "fixed"\nreply = "{escaped}"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(config, "aioidentd.toml")
    assert str(info.value).startswith("aioidentd.toml:6: 'reply' in [default]: ")
    assert f"must not contain {words}" in str(info.value)


@pytest.mark.parametrize(("text", "words"), REFUSED)
def test_serve_default(text: str, words: str) -> None:
    proc = run_aioidentd("serve", "--port", "0", "--default", text)
    assert proc.returncode == 2
    assert f"must not contain {words}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("text", "words"), REFUSED)
def test_server_fallback(text: str, words: str) -> None:
    # The fallback is US-ASCII (it has no charset): the non-ASCII classes are refused as
    # such before their class is looked at.
    expected = f"must not contain {words}" if text.isascii() else "is not US-ASCII"
    with pytest.raises(ValueError, match=expected):
        IdentServer("127.0.0.1", 0, default=text)


@pytest.mark.parametrize(("text", "words"), REFUSED)
async def test_a_handlers_reply(text: str, words: str) -> None:
    """``IdentRequest.reply`` refuses the id, so the querier gets the fallback instead."""
    raised: list[Exception] = []

    def handler(request: IdentRequest) -> None:
        try:
            request.reply("UNIX", text, "UTF-8")
        except ValueError as exc:
            raised.append(exc)

    async with IdentServer("127.0.0.1", 0, handlers=[handler], default="fallback") as server:
        port = server.addresses[0][1]
        reply = await asyncio.wait_for(aioidentd.query("127.0.0.1", 80, 4000, port=port), 5)
    assert reply == UserIdReply(80, 4000, "UNIX", b"fallback")
    assert len(raised) == 1 and f"must not contain {words}" in str(raised[0])


@pytest.mark.parametrize(("text", "words"), REFUSED)
def test_a_users_reply_file(tmp_path: Path, text: str, words: str) -> None:
    owner = 1000 if os.geteuid() == 0 else os.getuid()
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o711)
    path = home / REPLY_FILE
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(path, owner, -1)
    config = textwrap.dedent(
        """
        [reply]
        charset = "UTF-8"

        [default]
        allow_user_reply = true
        """
    )
    db = FakeUserDB({owner: ("alice", str(home), ["alice"])})
    policy = Policy(parse_config(config), user_db=db, geteuid=lambda: 65534)
    decision = policy.decide(owner, ("192.0.2.1", 40000), ("198.51.100.7", 6667))
    assert decision.user_id == b"alice"  # the policy's own answer, not the file's
    assert decision.note is not None
    assert decision.note.startswith("invalid reply: ")
    assert f"must not contain {words}" in decision.note
