"""What a newcomer brings from elsewhere (issue 20): oidentd's flags, a file saved by a
Windows editor, an IPv6 address in brackets, a host name, port 113 without root. Each is
run as the real command in a child process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from aioidentd.daemon.explain import explain
from aioidentd.policy import parse_config
from peers import NOBODY
from support import (
    FakeUserDB,
    ask,
    connection_as_nobody,
    enter_own_network_namespace,
    require_ipv6,
    require_root,
    run_aioidentd,
    serve_process,
    world_readable_dir,
)

# -- an option the command does not know: the command's error, with a hint -------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # oidentd's -p is its port; argparse left it to the top-level parser, which
        # pointed at 'aioidentd --help' and the list of commands.
        (
            ["serve", "-p", "1113"],
            "aioidentd serve: error: unrecognized arguments: -p 1113; did you mean --port? "
            "(-p is oidentd's) (see 'aioidentd serve --help')",
        ),
        (
            ["serve", "--no-config", "-u", "ident"],
            "aioidentd serve: error: unrecognized arguments: -u ident; did you mean --user? "
            "(-u is oidentd's) (see 'aioidentd serve --help')",
        ),
        (
            ["serve", "--prot", "1113"],
            "aioidentd serve: error: unrecognized arguments: --prot 1113; did you mean --port? "
            "(see 'aioidentd serve --help')",
        ),
        (
            ["query", "127.0.0.1", "6193", "23", "--timout=2"],
            "aioidentd query: error: unrecognized arguments: --timout=2; did you mean "
            "--timeout? (see 'aioidentd query --help')",
        ),
        (
            ["query", "127.0.0.1", "6193", "23", "24"],
            "aioidentd query: error: unrecognized arguments: 24 (see 'aioidentd query --help')",
        ),
        # Before the command, it is the top-level parser's own.
        (
            ["-x", "serve", "--no-config"],
            "aioidentd: error: unrecognized arguments: -x (see 'aioidentd --help')",
        ),
    ],
    ids=lambda case: " ".join(case) if isinstance(case, list) else "",
)
def test_an_unknown_option_is_the_commands_error_with_a_hint(
    args: list[str], expected: str
) -> None:
    done = run_aioidentd(*args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", expected + "\n")


# -- a byte order mark at the start of a file (Notepad writes one) --------------------------

BOM = b"\xef\xbb\xbf"


def test_a_configuration_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    # Before: "toml:1: TOML syntax: Invalid statement (column 1)" from every command.
    path = tmp_path / "aioidentd.toml"
    path.write_bytes(BOM + b'[server]\r\nlisten = "127.0.0.1"\r\nport = 0\r\n')
    checked = run_aioidentd("check-config", str(path))
    assert (checked.returncode, checked.stderr) == (0, "")
    assert "configuration is valid" in checked.stdout
    with serve_process("--config", str(path), "--default", "alice") as server:
        assert ask(server.port, b"6193, 23\r\n") == b"6193,23:USERID:UNIX:alice\r\n"
        assert server.stop() == 0
    # Lines are still counted from the first.
    path.write_bytes(BOM + b"[server]\nport = 1113\nprot = 1\n")
    checked = run_aioidentd("check-config", str(path))
    assert checked.returncode == 2
    assert checked.stderr.startswith(f"aioidentd: {path}:3: unknown key 'prot' in [server]")


def test_a_users_oidentd_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    config = tmp_path / "aioidentd.toml"
    config.write_text("[default]\nanswer = 'username'\n")
    user_file = tmp_path / "oidentd.conf"
    user_file.write_bytes(BOM + b'global {\n  reply "zncuser"\n}\n')
    done = run_aioidentd("check-config", str(config), "--user-file", str(user_file))
    assert (done.returncode, done.stderr) == (0, "")
    assert f'{user_file}:\n  line 1: global: reply "zncuser"' in done.stdout


def test_a_reply_file_with_a_byte_order_mark_answers_without_it() -> None:
    # The mark is no part of the id: the answer is 'ghost', not '\ufeffghost'.
    require_root("to make a reply file owned by nobody")
    with world_readable_dir("aioidentd-home-") as home:
        db = FakeUserDB({NOBODY: ("nobody", str(home), ["nogroup"])})
        reply = home / ".aioidentd-reply"
        reply.write_bytes(BOM + b"ghost\r\n")
        os.chown(reply, NOBODY, NOBODY)
        reply.chmod(0o644)
        allowed = parse_config("[user.nobody]\nallow_user_reply = true\n")
        with connection_as_nobody() as (accepted, child_port):
            result = explain(
                allowed, ("127.0.0.1", child_port), accepted.getsockname()[:2], user_db=db
            )
    assert result.answer.endswith(":USERID:UNIX:ghost")


def test_import_oidentd_reads_a_file_with_a_byte_order_mark_as_without(tmp_path: Path) -> None:
    path = tmp_path / "oidentd.conf"
    text = (
        b"default {\n  default {\n    deny spoof\n  }\n}\n"
        b"user root {\n  default {\n    force hide\n  }\n}\n"
    )
    path.write_bytes(text)
    plain = run_aioidentd("import-oidentd", "--config", str(path), "--flags=-S")
    path.write_bytes(BOM + text)
    marked = run_aioidentd("import-oidentd", "--config", str(path), "--flags=-S")
    assert "[user.root]" in plain.stdout and "\\ufeff" not in marked.stderr
    assert (marked.returncode, marked.stdout, marked.stderr) == (
        plain.returncode,
        plain.stdout,
        plain.stderr,
    )


# -- an IPv6 address in brackets, as URLs write it -------------------------------------------


def test_serve_and_query_take_an_ipv6_address_in_brackets() -> None:
    # Before: "cannot listen on '[::1]': Name or service not known", and query alike.
    require_ipv6()
    with serve_process(
        "--no-config", "--host", "[::1]", "--port", "0", "--default", "alice"
    ) as server:
        port = int(server.wait_for(r"serving ident on \[::1\]:(\d+)").group(1))
        done = run_aioidentd("query", "[::1]", "6193", "23", "--port", str(port))
        assert (done.returncode, done.stdout, done.stderr) == (0, "USERID UNIX alice\n", "")
        assert server.stop() == 0


def test_listen_in_the_configuration_takes_brackets_too(tmp_path: Path) -> None:
    require_ipv6()
    path = tmp_path / "aioidentd.toml"
    path.write_text('[server]\nlisten = ["[::1]", "127.0.0.1"]\nport = 0\n')
    with serve_process("--config", str(path), "--default", "alice") as server:
        port = int(server.wait_for(r"serving ident on \[::1\]:(\d+)").group(1))
        assert ask(port, b"6193, 23\r\n", host="::1") == b"6193,23:USERID:UNIX:alice\r\n"
        assert ask(port, b"6193, 23\r\n") == b"6193,23:USERID:UNIX:alice\r\n"
        assert server.stop() == 0
    path.write_text('[server]\nlisten = "[127.0.0.1]"\n')
    done = run_aioidentd("check-config", str(path))
    assert (done.returncode, done.stderr) == (
        2,
        f"aioidentd: {path}:2: 'listen' in [server]: not an IP address: '[127.0.0.1]'\n",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["query", "[::1]:1113", "6193", "23"],
            "'[::1]:1113' has a port: give the address alone, and --port 1113",
        ),
        (
            ["serve", "--host", "[::1]:113"],
            "'[::1]:113' has a port: give the address alone, and --port 113",
        ),
        (["query", "[::1", "6193", "23"], "unbalanced brackets: '[::1'"),
        (
            ["serve", "--host", "[localhost]"],
            "only an IPv6 address goes in brackets, not '[localhost]'",
        ),
        (
            ["serve", "--host", "[127.0.0.1]"],
            "only an IPv6 address goes in brackets, not '[127.0.0.1]'",
        ),
    ],
    ids=lambda case: " ".join(case) if isinstance(case, list) else "",
)
def test_a_wrong_bracketed_address_is_a_one_line_error(args: list[str], message: str) -> None:
    done = run_aioidentd(*args)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"aioidentd {args[0]}: error: argument ") and message in line, line


# -- explain takes a host name, as query does ------------------------------------------------


def test_explain_takes_a_host_name_as_query_does() -> None:
    # Before: "argument REMOTE_HOST: not an IP address: 'localhost'".
    with connection_as_nobody() as (accepted, child_port):
        listener_port = str(accepted.getsockname()[1])
        by_address = run_aioidentd("explain", "--no-config", "127.0.0.1", listener_port)
        by_name = run_aioidentd("explain", "--no-config", "localhost", listener_port)
        asked_by_name = run_aioidentd(
            "explain", "--no-config", "localhost", listener_port, "--from", "localhost"
        )
    assert by_address.returncode == 0, by_address.stderr
    first = f"connection 127.0.0.1:{child_port} <-> 127.0.0.1:{listener_port}, asked by 127.0.0.1"
    assert by_address.stdout.splitlines()[0] == first
    assert by_address.stdout.splitlines()[-1].endswith(
        ":USERID:UNIX:nobody (username, built-in default)"
    )
    assert (by_name.returncode, by_name.stdout, by_name.stderr) == (0, by_address.stdout, "")
    assert (asked_by_name.returncode, asked_by_name.stdout) == (0, by_address.stdout)


def test_explain_says_when_a_name_does_not_resolve() -> None:
    done = run_aioidentd("explain", "--no-config", "no-such-host.invalid", "6667")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("aioidentd explain: cannot resolve 'no-such-host.invalid': ")
    assert len(done.stderr.splitlines()) == 1


# -- port 113 without privilege: the ways to have it, in the one line ------------------------


def test_serve_on_port_113_without_privilege_names_the_ways_out() -> None:
    """``aioidentd serve`` run by nobody on port 113: the command's own main() in a child
    that became nobody (its interpreter may live where nobody cannot run it), in a network
    namespace of its own, where no other server holds 113 and the kernel's default (ports
    below 1024 need privilege) holds whatever the host's setting is."""
    require_root("to become nobody in a child, in a network namespace of its own")
    from aioidentd.cli import main

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 99
        try:
            "localhost".encode("idna")  # loaded lazily, from files nobody may not read
            enter_own_network_namespace()
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.dup2(write_end, 2)
            sys.stderr = open(2, "w", closefd=False)  # not pytest's capture  # noqa: SIM115
            status = main(["serve", "--no-config", "--host", "127.0.0.1", "--port", "113"])
        except BaseException as exc:
            os.write(write_end, f"raised {exc!r}\n".encode())
        finally:
            sys.stderr.flush()
            os.write(write_end, f"status {status}\n".encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        output = pipe.read()
    os.waitpid(pid, 0)
    assert output == (
        "aioidentd: cannot bind 127.0.0.1 port 113: Permission denied: port 113 needs "
        "privilege; start the daemon from systemd's aioidentd.socket (which binds the port "
        "for it), or as root (it drops privileges once bound), or give it the capability "
        "CAP_NET_BIND_SERVICE, or serve a high port (--port 1113) and redirect 113 to it\n"
        "status 1\n"
    )
