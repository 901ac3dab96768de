"""``aioidentd query``: output, exit statuses and argument checking, against scripted
servers running in a thread (the command runs its own event loop)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from aioidentd.cli import main
from scripted import close_at_once, identd_in_thread, send, silent
from support import ENV


def cli(*args: str) -> int:
    return main(["query", *args])


def test_userid(capsys: pytest.CaptureFixture[str]) -> None:
    with identd_in_thread(send(b"%d , %d : USERID : UNIX : alice\r\n")) as identd:
        status = cli("127.0.0.1", "6191", "23", "--port", str(identd.port))
    assert status == 0
    assert capsys.readouterr() == ("USERID UNIX alice\n", "")
    assert identd.lines == [b"6191, 23\r\n"]


def test_error(capsys: pytest.CaptureFixture[str]) -> None:
    with identd_in_thread(send(b"%d,%d:ERROR:NO-USER\r\n")) as identd:
        status = cli("127.0.0.1", "6191", "23", "--port", str(identd.port))
    assert status == 1
    assert capsys.readouterr() == ("ERROR NO-USER\n", "")


def test_json_userid(capsys: pytest.CaptureFixture[str]) -> None:
    with identd_in_thread(send(b"%d,%d:USERID:UNIX,UTF-8:jos\xc3\xa9\r\n")) as identd:
        status = cli("127.0.0.1", "6191", "23", "--port", str(identd.port), "--json")
    assert status == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out) == {
        "type": "USERID",
        "server_port": 6191,
        "client_port": 23,
        "opsys": "UNIX",
        "charset": "UTF-8",
        "user_id": "josé",
        "user_id_hex": "6a6f73c3a9",
    }


def test_json_undecodable(capsys: pytest.CaptureFixture[str]) -> None:
    with identd_in_thread(send(b"%d,%d:USERID:UNIX:al\xffice\r\n")) as identd:
        status = cli("127.0.0.1", "6191", "23", "--port", str(identd.port), "--json")
    assert status == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["user_id"] is None
    assert answer["user_id_hex"] == "616cff696365"
    assert answer["charset"] is None


def test_undecodable_and_control_characters_are_shown_in_hex(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with identd_in_thread(send(b"%d,%d:USERID:UNIX:al\xffice\r\n")) as identd:
        cli("127.0.0.1", "6191", "23", "--port", str(identd.port))
    assert capsys.readouterr().out == "USERID UNIX 0x616cff696365\n"
    with identd_in_thread(send(b"%d,%d:USERID:UNIX:\x1b[2Jx\r\n")) as identd:
        cli("127.0.0.1", "6191", "23", "--port", str(identd.port))
    assert capsys.readouterr().out == "USERID UNIX 0x1b5b324a78\n"


def test_json_error(capsys: pytest.CaptureFixture[str]) -> None:
    with identd_in_thread(send(b"%d,%d:ERROR:X-GO-AWAY\r\n")) as identd:
        status = cli("127.0.0.1", "6191", "23", "--port", str(identd.port), "--json")
    assert status == 1
    assert json.loads(capsys.readouterr().out) == {
        "type": "ERROR",
        "server_port": 6191,
        "client_port": 23,
        "error": "X-GO-AWAY",
    }


def test_refused_is_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        status = cli("127.0.0.1", "6191", "23", "--port", str(port))
    assert status == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"aioidentd query: ident server 127.0.0.1:{port} refused the connection\n"


@pytest.mark.parametrize(
    ("respond", "message"),
    [
        (silent, "no answer from ident server"),
        (close_at_once, "closed the connection without a complete answer"),
        (send(b"garbage\r\n"), "malformed answer"),
        (send(b"1,2:ERROR:NO-USER\r\n"), "answered about ports 1, 2 instead of 6191, 23"),
    ],
    ids=["timeout", "closed", "garbage", "mismatch"],
)
def test_failed_exchange(respond: object, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with identd_in_thread(respond) as identd:  # type: ignore[arg-type]
        status = cli("127.0.0.1", "6191", "23", "--port", str(identd.port), "--timeout", "0.3")
    assert status == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["127.0.0.1", "0", "23"],
        ["127.0.0.1", "70000", "23"],
        ["127.0.0.1", "6191", "-1"],
        ["127.0.0.1", "6191", "x"],
        ["127.0.0.1", "6191", "23", "--port", "0"],
        ["127.0.0.1", "6191", "23", "--port", "65536"],
        ["127.0.0.1", "6191", "23", "--timeout", "-1"],
        ["127.0.0.1", "6191", "23", "--timeout", "0"],
        ["127.0.0.1", "6191", "23", "--timeout", "nan"],
        ["127.0.0.1", "6191"],
    ],
)
def test_bad_arguments(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli(*args)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "error:" in err


def test_as_a_process_no_traceback() -> None:
    """The real entry path: status 2 and one stderr line, nothing else."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from aioidentd.cli import main; sys.exit(main())",
                "query",
                "127.0.0.1",
                "6191",
                "23",
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,
        )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"aioidentd query: ident server 127.0.0.1:{port} refused the connection\n"
