"""``aioidentd serve`` as the host's identd: real lookups of real connections.

These tests need root (CI runs as root): the daemon drops privileges to its own system
user (``aioidentd``, created by scripts/install-system-deps.sh), and the connections it is
asked about are made by processes of other users (nobody). Without root they are
skipped with the reason, except in CI, where that is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from aioidentd.daemon.privileges import CREATE_SERVICE_USER
from aioidentd.policy.settings import SERVICE_USER
from peers import require_root, unavailable
from support import ENV, ask, run_aioidentd, wait_until, world_readable_dir
from support import serve_process as daemon

NOBODY = 65534


def service_uid() -> int:
    """The uid of the daemon's default user (scripts/install-system-deps.sh creates it)."""
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        unavailable(f"no system user {SERVICE_USER!r}: run scripts/install-system-deps.sh")
        raise


def need_root() -> None:
    require_root("the daemon drops privileges and other users own connections")


@contextmanager
def as_nobody(action: Callable[[], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Run ``action`` in a forked child that has become nobody, and keep the child (and
    so its sockets) alive until the block ends. ``action`` must not import anything: the
    interpreter's files may not be readable by nobody."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = action()
            os.write(write_end, json.dumps(result).encode() + b"\n")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        line = pipe.readline()
    try:
        assert line, "the child running as nobody failed"
        yield json.loads(line)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def connect_from_nobody(host: str, port: int) -> Callable[[], dict[str, Any]]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def action() -> dict[str, Any]:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.connect((host, port))
        _KEEP.append(sock)
        return {"port": sock.getsockname()[1]}

    return action


_KEEP: list[socket.socket] = []  # sockets a nobody child must hold open


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock


# -- real lookups --------------------------------------------------------------------------


def test_answers_the_owner_of_ipv4_connections(listener: socket.socket) -> None:
    need_root()
    lport = listener.getsockname()[1]
    with daemon("--port", "0", "--log-queries") as d:
        port = d.port
        with as_nobody(connect_from_nobody("127.0.0.1", lport)) as child:
            accepted, _ = listener.accept()
            nport = child["port"]
            assert ask(port, b"%d,%d\r\n" % (nport, lport)) == b"%d,%d:USERID:UNIX:nobody\r\n" % (
                nport,
                lport,
            )
            # The other end is ours (root): hidden by default, never "root".
            assert ask(port, b"%d,%d\r\n" % (lport, nport)) == b"%d,%d:ERROR:HIDDEN-USER\r\n" % (
                lport,
                nport,
            )
            accepted.close()
        # No such connection.
        assert ask(port, b"1,2\r\n") == b"1,2:ERROR:NO-USER\r\n"
        line = d.wait_for(rf"asked {nport},{lport}: nobody \(uid 65534\) replied as 'nobody'")
        assert "127.0.0.1:" in line.string
        assert d.stop() == 0


def test_answers_over_ipv6() -> None:
    need_root()
    with socket.socket(socket.AF_INET6) as listener6:
        listener6.bind(("::1", 0))
        listener6.listen()
        lport = listener6.getsockname()[1]
        with (
            daemon("--host", "::1", "--port", "0") as d,
            as_nobody(connect_from_nobody("::1", lport)) as child,
        ):
            port = d.port
            nport = child["port"]
            answer = ask(port, b"%d,%d\r\n" % (nport, lport), host="::1")
            assert answer == b"%d,%d:USERID:UNIX:nobody\r\n" % (nport, lport)


def test_answers_for_v4_mapped_sockets_of_a_dual_stack_listener() -> None:
    need_root()

    def dual_stack_listener() -> dict[str, Any]:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        sock.listen()
        _KEEP.append(sock)
        port = sock.getsockname()[1]

        def accept_forever() -> None:
            while True:
                conn, _ = sock.accept()
                _KEEP.append(conn)

        threading.Thread(target=accept_forever, daemon=True).start()
        return {"port": port}

    with daemon("--port", "0") as d, as_nobody(dual_stack_listener) as child:
        port = d.port
        with socket.create_connection(("127.0.0.1", child["port"])) as client:
            cport = client.getsockname()[1]
            # Asked before the child accepts, the kernel has no owner for it yet.
            wait_until(lambda: _accepted(child["port"], cport), what="the child accepted")
            answer = ask(port, b"%d,%d\r\n" % (child["port"], cport))
            assert answer == b"%d,%d:USERID:UNIX:nobody\r\n" % (child["port"], cport)


def test_time_wait_is_no_user_not_root(listener: socket.socket) -> None:
    need_root()
    lport = listener.getsockname()[1]

    def connect_and_close() -> dict[str, Any]:
        sock = socket.socket()
        sock.connect(("127.0.0.1", lport))
        port = sock.getsockname()[1]
        sock.close()  # the active closer ends in TIME_WAIT
        return {"port": port}

    with daemon("--port", "0") as d, as_nobody(connect_and_close) as child:
        port = d.port
        accepted, _ = listener.accept()
        accepted.recv(1)
        accepted.close()
        nport = child["port"]
        wait_until(lambda: _in_time_wait(nport, lport), what="the socket is in TIME_WAIT")
        assert ask(port, b"%d,%d\r\n" % (nport, lport)) == b"%d,%d:ERROR:NO-USER\r\n" % (
            nport,
            lport,
        )


def _accepted(local_port: int, remote_port: int) -> bool:
    """Whether the connection ``local_port`` <-> ``remote_port`` has been accept()ed: until
    then the kernel's entry has no inode (no file, so no owner)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if (
                fields[1].endswith(f":{local_port:04X}")
                and fields[2].endswith(f":{remote_port:04X}")
                and fields[9] != "0"
            ):
                return True
    return False


def _in_time_wait(local_port: int, remote_port: int) -> bool:
    wanted = f":{local_port:04X} 0100007F:{remote_port:04X} 06 "
    return wanted in Path("/proc/net/tcp").read_text()


def test_only_the_querier_may_ask_about_its_connections() -> None:
    need_root()
    with socket.socket() as far:
        far.bind(("127.0.0.2", 0))
        far.listen()
        fport = far.getsockname()[1]
        with (
            daemon("--port", "0") as d,
            as_nobody(connect_from_nobody("127.0.0.2", fport)) as child,
        ):
            port = d.port
            query = b"%d,%d\r\n" % (child["port"], fport)
            # 127.0.0.1 asks about nobody's connection to 127.0.0.2: not its business.
            assert ask(port, query) == b"%d,%d:ERROR:NO-USER\r\n" % (child["port"], fport)
            # 127.0.0.2, the connection's other end, gets the answer.
            assert ask(port, query, source="127.0.0.2") == b"%d,%d:USERID:UNIX:nobody\r\n" % (
                child["port"],
                fport,
            )


# -- privileges ------------------------------------------------------------------------------


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(field) for field in line.split()[1:]]
    raise AssertionError("no Uid line")


def _status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return line.split()[1]
    raise AssertionError(f"no {field} line")


def test_drops_privileges_after_binding() -> None:
    need_root()
    uid = service_uid()
    with daemon("--port", "0") as d:
        d.port  # noqa: B018 - started
        assert _uids(d.proc.pid) == [uid] * 4
        assert f"dropped privileges to {SERVICE_USER}:" in d.log
        # Nothing it could execute may gain privileges again: no set-uid, no file
        # capabilities (NoNewPrivs), and no capability left to gain (CapBnd).
        assert _status(d.proc.pid, "NoNewPrivs") == "1"
        assert _status(d.proc.pid, "CapBnd") == "0000000000000000"
        assert _status(d.proc.pid, "CapPrm") == "0000000000000000"
        assert "running on without it" not in d.log


def test_another_nobody_process_cannot_signal_the_daemon() -> None:
    """Run as its own user, not as the nobody that many programs share, the daemon
    cannot be stopped (nor traced) by another process running as nobody."""
    need_root()
    with daemon("--port", "0") as d:
        port = d.port
        pid = d.proc.pid

        def kill() -> dict[str, Any]:
            try:
                os.kill(pid, signal.SIGTERM)
            except PermissionError:
                return {"sent": False}
            return {"sent": True}

        with as_nobody(kill) as child:
            assert child == {"sent": False}
        assert ask(port, b"1,2\r\n") == b"1,2:ERROR:NO-USER\r\n"
        assert d.proc.poll() is None
        assert d.stop() == 0


def test_a_missing_default_user_is_a_clear_error_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Started as root without the aioidentd user, the daemon does not fall back to the
    shared nobody: it refuses to start and says how to create the user or choose one."""
    from aioidentd.daemon import Daemon
    from aioidentd.errors import DaemonError
    from aioidentd.policy import Config

    real = pwd.getpwnam

    def getpwnam(name: str) -> pwd.struct_passwd:
        if name == SERVICE_USER:
            raise KeyError(name)
        return real(name)

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # the check runs before anything changes
    with pytest.raises(DaemonError) as info:
        Daemon(Config())._identity()
    assert str(info.value) == (
        f"no such user: '{SERVICE_USER}': the daemon runs as this system user of its own by "
        f"default; create it ({CREATE_SERVICE_USER}), or choose another user with --user "
        f"or [server] user"
    )


def test_refuses_to_run_as_root_unless_allowed() -> None:
    need_root()
    proc = run_aioidentd("serve", "--port", "0", "--user", "root")
    assert proc.returncode == 2  # a configuration refused, as check-config refuses it
    assert "refusing to run as root" in proc.stderr
    assert "Traceback" not in proc.stderr
    with daemon("--port", "0", "--user", "root", "--allow-root") as d:
        d.port  # noqa: B018
        assert _uids(d.proc.pid)[0] == 0


def test_unknown_user_is_a_clear_error() -> None:
    need_root()
    proc = run_aioidentd("serve", "--port", "0", "--user", "no-such-user-x")
    assert proc.returncode == 2
    assert "no such user: 'no-such-user-x'" in proc.stderr


# -- hand-over from a service manager ------------------------------------------------------------

# What systemd does: the listening socket as descriptor 3, LISTEN_PID naming the process
# that runs aioidentd (this wrapper execs into it, so the pid stays the same).
ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1'; "
    "os.execv(sys.executable, [sys.executable, '-m', 'aioidentd', 'serve', *sys.argv[2:]])"
)


def test_systemd_socket_activation(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    fd = listener.fileno()
    proc = subprocess.Popen(
        [sys.executable, "-c", ACTIVATE, str(fd), "--default", "activated"],
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=(fd,),
    )
    try:
        assert ask(port, b"7,8\r\n") == b"7,8:USERID:UNIX:activated\r\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        assert "passed by systemd" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_inetd_mode_serves_the_connection_on_stdin(listener: socket.socket) -> None:
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    with client, accepted:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aioidentd", "serve", "--inetd", "--default", "viainetd"],
            env=ENV,
            stdin=accepted.fileno(),
            stderr=subprocess.PIPE,
            text=True,
        )
        accepted.close()
        try:
            client.settimeout(10)
            client.sendall(b"80, 25\r\n")
            assert client.recv(100) == b"80,25:USERID:UNIX:viainetd\r\n"
            assert client.recv(100) == b""  # one query, then closed
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_inetd_mode_refuses_a_terminal_or_file() -> None:
    proc = run_aioidentd("serve", "--inetd", stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert "inetd mode needs a TCP connection as standard input" in proc.stderr


# -- configuration, reload, stop ------------------------------------------------------------------


@pytest.fixture
def config_dir() -> Iterator[Path]:
    # Readable by nobody: the daemon reads the file again on SIGHUP after dropping root.
    with world_readable_dir("aioidentd-test-") as path:
        yield path


def _fixed(reply: str) -> str:
    return (
        f'[server]\nlisten = "127.0.0.1"\nport = 0\n\n'
        f'[default]\nanswer = "fixed"\nreply = "{reply}"\n'
    )


def test_sighup_reloads_and_a_bad_file_keeps_the_old_policy(
    listener: socket.socket, config_dir: Path
) -> None:
    need_root()
    config = config_dir / "aioidentd.toml"
    config.write_text(_fixed("first"))
    config.chmod(0o644)
    lport = listener.getsockname()[1]
    with (
        daemon("--config", str(config)) as d,
        as_nobody(connect_from_nobody("127.0.0.1", lport)) as child,
    ):
        port = d.port
        query = b"%d,%d\r\n" % (child["port"], lport)
        assert ask(port, query).endswith(b":USERID:UNIX:first\r\n")
        config.write_text(_fixed("second"))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("configuration reloaded")
        assert ask(port, query).endswith(b":USERID:UNIX:second\r\n")
        config.write_text(_fixed("third") + "\n[default]\nbogus = 1\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("keeping the running configuration")
        assert ask(port, query).endswith(b":USERID:UNIX:second\r\n")
        config.write_text(_fixed("fourth").replace("port = 0", "port = 1"))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(r"\[server\] port changed; that takes effect after a restart")
        assert ask(port, query).endswith(b":USERID:UNIX:fourth\r\n")
        assert d.stop() == 0


def test_a_root_only_config_is_said_at_start_and_at_sighup(
    listener: socket.socket, config_dir: Path
) -> None:
    """The daemon re-reads its file as its own user, so a root-only file (0600) cannot be
    reloaded: that is said at start, with the fix, and again at SIGHUP (the running
    policy stays); the fix it names makes the next SIGHUP work."""
    need_root()
    service_uid()
    config = config_dir / "aioidentd.toml"
    config.write_text(_fixed("first"))
    config.chmod(0o600)
    lport = listener.getsockname()[1]
    fix = f"chgrp {SERVICE_USER} {config} && chmod 640 {config}"
    with (
        daemon("--config", str(config)) as d,
        as_nobody(connect_from_nobody("127.0.0.1", lport)) as child,
    ):
        port = d.port
        query = b"%d,%d\r\n" % (child["port"], lport)
        warning = d.wait_for(r"WARNING .*SIGHUP will not be able to re-read .*").group()
        assert warning.endswith(
            f"SIGHUP will not be able to re-read {config} (Permission denied) as "
            f"{SERVICE_USER}: make it readable by that user ({fix}), or restart the "
            f"daemon to apply changes"
        )
        config.write_text(_fixed("second"))
        d.proc.send_signal(signal.SIGHUP)
        line = d.wait_for("SIGHUP: keeping the running configuration: .*").group()
        assert "cannot read: Permission denied" in line and fix in line
        assert ask(port, query).endswith(b":USERID:UNIX:first\r\n")
        subprocess.run(fix, shell=True, check=True)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("configuration reloaded")
        assert ask(port, query).endswith(b":USERID:UNIX:second\r\n")
        assert d.stop() == 0


def test_bad_config_at_start_is_one_line_and_status_2(config_dir: Path) -> None:
    config = config_dir / "bad.toml"
    config.write_text('[server]\nport = 113\nlisen = "*"\n')
    proc = run_aioidentd("serve", "--config", str(config))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"aioidentd: {config}:3: unknown key 'lisen' in [server] (did you mean 'listen'?)"
    )


def test_command_line_wins_over_the_file(config_dir: Path) -> None:
    config = config_dir / "aioidentd.toml"
    config.write_text('[server]\nlisten = "127.0.0.1"\nport = 1\nreply_style = "compact"\n')
    with daemon("--config", str(config), "--port", "0", "--reply-style", "spaced", "--random") as d:
        answer = ask(d.port, b"1,2\r\n")
        assert re.fullmatch(rb"1 , 2 : USERID : UNIX : [a-z0-9]{8}\r\n", answer), answer


def test_sigterm_answers_every_query_already_sent() -> None:
    """Deterministic: the daemon is stopped (as a debugger would stop it) while the
    clients connect and send, so that at SIGTERM some connections are still in the accept
    queue and every query is unread; each must be answered, none reset."""
    with daemon("--port", "0", "--multiple", "--default", "x") as d:
        port = d.port
        clients = []
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(100):  # more than one accept batch (64)
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(b"".join(b"%d,1\r\n" % n for n in range(1, 6)))
                clients.append(sock)
            d.proc.send_signal(signal.SIGTERM)
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
        for sock in clients:
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            sock.close()
            assert data == b"".join(b"%d,1:USERID:UNIX:x\r\n" % n for n in range(1, 6))
        # One SIGTERM is enough: the daemon exits by itself, with status 0 (a second
        # one, sent while it finishes, would find the default action restored).
        assert d.proc.wait(15) == 0


def test_workers_share_the_port_and_stop_together() -> None:
    need_root()
    with daemon("--port", "0", "--workers", "2") as d:
        match = d.wait_for(r"started 2 workers: (\d+), (\d+)")
        workers = [int(match.group(1)), int(match.group(2))]
        port = d.port
        for n in range(1, 41):
            assert ask(port, b"%d,1\r\n" % n) == b"%d,1:ERROR:NO-USER\r\n" % n
        # SIGUSR1 to the supervisor: each worker logs its own counters, which add up.
        d.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: d.count(r"stats: \d+ queries") == 2, what="two stats lines")
        counts = [int(n) for n in re.findall(r"stats: (\d+) queries", d.log)]
        assert sum(counts) == 40, d.log
        uid = service_uid()
        for pid in workers:
            assert _uids(pid) == [uid] * 4
            assert _status(pid, "NoNewPrivs") == "1"
            assert _status(pid, "CapBnd") == "0000000000000000"
        assert _uids(d.proc.pid)[0] == uid  # the supervisor dropped root too
        assert _status(d.proc.pid, "CapBnd") == "0000000000000000"
        # A worker that dies is replaced by an unprivileged one, which still looks up
        # connections, and the port keeps answering.
        os.kill(workers[0], signal.SIGKILL)
        d.wait_for(rf"worker 0 \(pid {workers[0]}\) exited .*restarting")
        d.wait_for(r"serving ident on .*", timeout=10)
        for n in range(1, 41):
            assert ask(port, b"%d,1\r\n" % n) == b"%d,1:ERROR:NO-USER\r\n" % n
        assert d.stop() == 0
        assert "Traceback" not in d.log
        for pid in workers[1:]:
            assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split()[2]


class SlowLookup:
    """A lookup that takes its time (like a /proc scan of a huge table), so that a query
    is still waiting when the daemon is told to stop."""

    blocking = True

    def __init__(self) -> None:
        self.started = threading.Event()

    def owner(self, local: tuple[str, int], remote: tuple[str, int]) -> int | None:
        self.started.set()
        time.sleep(1.0)
        return NOBODY


async def test_sigterm_answers_a_query_still_waiting_for_its_lookup() -> None:
    from aioidentd.daemon import Daemon
    from aioidentd.listener import bind_sockets
    from aioidentd.policy import Config, DaemonSettings

    config = Config(daemon=DaemonSettings(listen=("127.0.0.1",), port=0, response_timeout=10))
    socks = bind_sockets("127.0.0.1", 0)
    port = socks[0].getsockname()[1]
    lookup = SlowLookup()

    serving = asyncio.ensure_future(Daemon(config).serve(socks, None, lookup))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"1,2\r\n")
    assert await asyncio.to_thread(lookup.started.wait, 5)
    os.kill(os.getpid(), signal.SIGTERM)  # the daemon's handler, not pytest's
    answer = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    status = await asyncio.wait_for(serving, 5)
    assert answer == b"1,2:ERROR:HIDDEN-USER\r\n"  # the fallback, not silence
    assert status == 0


def test_runs_on_uvloop_with_real_lookups(listener: socket.socket) -> None:
    need_root()
    lport = listener.getsockname()[1]
    with (
        daemon("--port", "0", "--uvloop") as d,
        as_nobody(connect_from_nobody("127.0.0.1", lport)) as child,
    ):
        port = d.port
        nport = child["port"]
        assert ask(port, b"%d,%d\r\n" % (nport, lport)) == b"%d,%d:USERID:UNIX:nobody\r\n" % (
            nport,
            lport,
        )
        assert d.stop() == 0
        assert "(kernel lookups, uvloop)" in d.log


def test_first_query_timeout_closes_a_silent_connection_early() -> None:
    with daemon("--port", "0", "--default", "x", "--first-query-timeout", "0.3") as d:
        port = d.port
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert sock.recv(100) == b""  # closed without a word
        assert time.monotonic() - started < 5  # not the 60 s idle timeout
        assert ask(port, b"1,2\r\n") == b"1,2:USERID:UNIX:x\r\n"
        assert d.stop() == 0
