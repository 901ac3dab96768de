"""Claims over the daemon's local Unix socket (``[server] claims_socket``) and the
``HostClaims`` client: real sockets, the kernel's socket table (netlink) saying who owns
what, the real policy; an identd answering through KernelResponder as the daemon does.

The client's calls are blocking exchanges with the daemon, so the tests make them from a
worker thread while the service runs on the test's event loop."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pwd
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import aioidentd
from aioidentd import HostClaimError, HostClaims, IdentServer
from aioidentd.daemon import KernelResponder
from aioidentd.daemon.claims_socket import MAX_REQUEST, ClaimsService, bind_claims_socket
from aioidentd.lookup import ProcNetLookup, default_lookup
from aioidentd.policy import ConfigError, Policy, parse_config
from aioidentd.protocol import SENDABLE_CHARSETS, UserIdReply
from support import both_loops, needs_root, wait_until_async

ME = pwd.getpwuid(os.getuid()).pw_name
ALLOWED = f'[user."{ME}"]\nanswer = "username"\nallow_user_reply = true\n'


@asynccontextmanager
async def host(
    tmp_path: Path, config: str = ALLOWED
) -> AsyncIterator[tuple[int, str, ClaimsService]]:
    """An identd on a free port answering like the daemon, and its claims socket."""
    lookup = default_lookup()
    responder = KernelResponder(lookup, Policy(parse_config(textwrap.dedent(config), "t")))
    path = str(tmp_path / "claims.sock")
    service = ClaimsService(lookup, lambda: responder.policy)
    await service.start(bind_claims_socket(path))
    responder.claims = service
    try:
        async with IdentServer("127.0.0.1", 0, handlers=[responder]) as server:
            yield server.addresses[0][1], path, service
    finally:
        await service.close()


@pytest.fixture
def connection() -> Any:
    """A loopback connection of this process: (client socket, server's accepted one)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    yield client, accepted
    client.close()
    accepted.close()


async def ask(port: int, client: socket.socket) -> str:
    """What the identd says about ``client``'s connection, asked from its peer's side."""
    ours, theirs = client.getsockname()[1], client.getpeername()[1]
    return str(await aioidentd.query("127.0.0.1", ours, theirs, port=port, timeout=5))


def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return asyncio.to_thread(function, *args, **kwargs)


@both_loops
async def test_a_claim_answers_for_its_connection_until_released(
    tmp_path: Path, connection: Any
) -> None:
    client, _ = connection
    async with host(tmp_path) as (port, path, service):
        claims = HostClaims(path)
        assert await ask(port, client) == f"USERID UNIX {ME}"
        claim = await call(claims.claim, client, "chosen")
        assert await ask(port, client) == "USERID UNIX chosen"
        assert len(service) == 1
        await call(claim.release)
        assert await ask(port, client) == f"USERID UNIX {ME}"
        await call(claims.claim, client, error="HIDDEN-USER")
        assert await ask(port, client) == "ERROR HIDDEN-USER"
        await call(claims.close)
        # Closing the claims connection ends its claims.
        await wait_until_async(lambda: len(service) == 0, what="claims dropped")
        assert await ask(port, client) == f"USERID UNIX {ME}"


async def test_a_claim_on_a_connection_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    async with host(tmp_path) as (_, path, service):
        with (
            HostClaims(path) as claims,
            pytest.raises(HostClaimError, match="refused: no such connection"),
        ):
            await call(claims.claim, (("127.0.0.1", 1), ("127.0.0.1", 2)), "x")
        assert len(service) == 0


async def test_the_policy_decides_whether_a_user_may_claim(tmp_path: Path, connection: Any) -> None:
    client, _ = connection
    async with host(tmp_path, f'[user."{ME}"]\nanswer = "username"\n') as (port, path, _s):
        with (
            HostClaims(path) as claims,
            pytest.raises(HostClaimError, match=r"does not let .* choose answers"),
        ):
            await call(claims.claim, client, "chosen")
    async with host(tmp_path, ALLOWED + "\n[user.bob]\n") as (port, path, _s):
        with HostClaims(path) as claims:
            with pytest.raises(HostClaimError, match="invalid reply"):
                await call(claims.claim, client, "a b ")
            with pytest.raises(HostClaimError, match="name of another user"):
                await call(claims.claim, client, "root" if ME != "root" else "daemon")
            assert await ask(port, client) == f"USERID UNIX {ME}"


def sample_id(charset: str) -> str:
    """``e`` and the first two letters above US-ASCII that ``charset`` has (UTF-8: two
    whose octets include 0x80-0x9F, continuation octets that a Latin-1 reader would take
    for C1 controls)."""
    if charset == "ascii":
        return "e"
    if charset == "utf-8":
        return "e\u0105\u20ac"  # ą (C4 85), € (E2 82 AC)
    letters = [c for c in bytes(range(0xA0, 0x100)).decode(charset, "ignore") if c.isalpha()]
    return "e" + "".join(letters[:2])


@pytest.mark.parametrize("charset", sorted(SENDABLE_CHARSETS))
async def test_a_claim_in_each_accepted_charset_sends_no_control_octet(
    tmp_path: Path, connection: Any, charset: str
) -> None:
    client, _ = connection
    text = sample_id(charset)
    # The policy checks a claimed id as it checks a reply file's, by [reply] charset.
    config = '[reply]\ncharset = "UTF-8"\n' + ALLOWED
    async with host(tmp_path, config) as (port, path, _service):
        with HostClaims(path) as claims:
            await call(claims.claim, client, text, charset=charset.upper())
            ours, theirs = client.getsockname()[1], client.getpeername()[1]
            reply = await aioidentd.query("127.0.0.1", ours, theirs, port=port, timeout=5)
    assert isinstance(reply, UserIdReply)
    assert (reply.charset, reply.raw) == (charset.upper(), text.encode(charset))
    assert reply.user_id == text
    assert not re.search(b"[\\x00-\\x1f\\x7f]", reply.raw)
    if charset != "utf-8":
        assert not re.search(b"[\\x80-\\x9f]", reply.raw)


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("cp037", "e"),  # EBCDIC: 0x85, NEL to everyone else
        ("cp500", "e"),
        ("UTF-16", "e"),
        ("UTF-7", "e"),
        ("cp1252", "\u2026"),  # the ellipsis: 0x85 again
        ("KOI8-R", "\u2500"),  # a box-drawing line: 0x80
        ("unicode_escape", "e"),
    ],
)
async def test_a_claim_in_a_charset_that_can_send_control_octets_is_refused(
    tmp_path: Path, connection: Any, charset: str, text: str
) -> None:
    client, _ = connection
    async with host(tmp_path) as (port, path, service):
        with (
            HostClaims(path) as claims,
            pytest.raises(HostClaimError, match=f"charset '{charset}' cannot be sent"),
        ):
            await call(claims.claim, client, text, charset=charset)
        assert len(service) == 0
        assert await ask(port, client) == f"USERID UNIX {ME}"


async def test_a_claim_once_the_connection_is_gone_never_answers(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    ours, theirs = client.getsockname()[1], client.getpeername()[1]
    async with host(tmp_path) as (port, path, service):
        with HostClaims(path) as claims:
            await call(claims.claim, client, "chosen")
            for sock in (client, accepted, listener):
                sock.close()
            reply = await aioidentd.query("127.0.0.1", ours, theirs, port=port, timeout=5)
            assert str(reply) == "ERROR NO-USER"
            service._sweep()
            assert len(service) == 0


async def test_a_query_waits_for_a_claim_being_made(tmp_path: Path, connection: Any) -> None:
    client, _ = connection
    async with host(tmp_path) as (port, path, service):
        with HostClaims(path) as claims:
            pending = claims.connecting("127.0.0.1")
            await call(pending.__enter__)
            asking = asyncio.ensure_future(ask(port, client))
            await wait_until_async(lambda: bool(service._waiters), what="the query waits")
            await call(claims.claim, client, "late")
            assert await asking == "USERID UNIX late"
            await call(pending.done)
            assert not service._pending


class HeldPolicy:
    """The real policy, its decision held in the lookup's thread until released: a
    lookup slowed by load, long enough for the owner to claim and say "connected"."""

    def __init__(self, real: Policy) -> None:
        self.real = real
        self.deciding = threading.Event()
        self.release = threading.Event()

    @property
    def reads_files(self) -> bool:
        return True  # (the decision in a worker thread, as with users' reply files)

    def decide(self, *args: Any, **kwargs: Any) -> Any:
        self.deciding.set()
        self.release.wait(10)
        return self.real.decide(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_a_claim_made_while_the_lookup_runs_is_the_answer(
    tmp_path: Path, connection: Any
) -> None:
    """The query's lookup found no claim; before its decision reached the loop the owner
    claimed the connection and ended its "connecting": the claim answers, not the real
    user (CI saw ngircd get the real user so)."""
    client, _ = connection
    lookup = default_lookup()
    policy = Policy(parse_config(textwrap.dedent(ALLOWED), "t"))
    held = HeldPolicy(policy)
    responder = KernelResponder(lookup, held)  # type: ignore[arg-type]
    path = str(tmp_path / "claims.sock")
    service = ClaimsService(lookup, lambda: policy)
    await service.start(bind_claims_socket(path))
    responder.claims = service
    async with IdentServer("127.0.0.1", 0, handlers=[responder]) as server:
        port = server.addresses[0][1]
        with HostClaims(path) as claims:
            pending = claims.connecting("127.0.0.1")
            await call(pending.__enter__)
            asking = asyncio.ensure_future(ask(port, client))
            await wait_until_async(held.deciding.is_set, what="the lookup decides")
            await call(claims.claim, client, "late")
            await call(pending.done)
            held.release.set()
            assert await asking == "USERID UNIX late"
    await service.close()


def raw_exchange(path: str, data: bytes) -> list[dict[str, Any]]:
    """Send ``data`` on a fresh connection and read every answer until it closes or
    goes quiet."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return [json.loads(line) for line in received.splitlines()]


@both_loops
async def test_bad_requests_get_a_clear_refusal_and_harm_nothing(
    tmp_path: Path, connection: Any
) -> None:
    client, _ = connection
    async with host(tmp_path) as (port, path, service):
        good = json.dumps(
            {
                "op": "claim",
                "local": ["127.0.0.1", client.getsockname()[1]],
                "remote": ["127.0.0.1", client.getpeername()[1]],
                "user_id": "good",
            }
        ).encode()
        answers = await call(
            raw_exchange,
            path,
            b"garbage\n[1, 2]\n"
            b'{"op": "steal"}\n'
            b'{"op": "claim", "local": ["x", 1], "remote": ["127.0.0.1", 2], "user_id": "a"}\n'
            b'{"op": "claim", "local": ["127.0.0.1", 1], "remote": ["127.0.0.1", 2]}\n'
            b'{"op": "claim", "local": ["127.0.0.1", 70000], "remote": ["127.0.0.1", 2]}\n'
            + good
            + b"\n",
        )
        assert answers == [
            {"ok": False, "error": "not a JSON object"},
            {"ok": False, "error": "a request is a JSON object"},
            {
                "ok": False,
                "error": "unknown op 'steal' (claim, release, connecting, connected)",
            },
            {"ok": False, "error": "not an IP address: 'x'"},
            {"ok": False, "error": "give exactly one of 'user_id' and 'error'"},
            {"ok": False, "error": "'local' must be [\"ADDRESS\", PORT]"},
            {"ok": True},
        ]
        # That connection is closed now: its claim ended with it.
        await wait_until_async(lambda: len(service) == 0, what="claim dropped")
        huge = await call(raw_exchange, path, b"x" * (MAX_REQUEST + 10))
        assert huge == [{"ok": False, "error": f"request longer than {MAX_REQUEST} octets"}]
        assert await ask(port, client) == f"USERID UNIX {ME}"


@needs_root
async def test_another_users_connection_cannot_be_claimed(tmp_path: Path, connection: Any) -> None:
    """nobody asks to claim root's connection: the kernel says it is not theirs."""
    client, _ = connection
    config = ALLOWED + "\n[user.nobody]\nallow_user_reply = true\n"
    # A directory nobody can reach (pytest's own are root's alone).
    reachable = Path(tempfile.mkdtemp(prefix="claims-"))
    reachable.chmod(0o755)
    async with host(reachable, config) as (port, path, _service):
        request = json.dumps(
            {
                "op": "claim",
                "local": ["127.0.0.1", client.getsockname()[1]],
                "remote": ["127.0.0.1", client.getpeername()[1]],
                "user_id": "stolen",
            }
        ).encode()

        def as_nobody() -> bytes:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                try:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                    with socket.socket(socket.AF_UNIX) as sock:
                        sock.settimeout(5)
                        sock.connect(path)
                        sock.sendall(request + b"\n")
                        os.write(write_end, sock.recv(4096))
                finally:
                    os._exit(0)
            os.close(write_end)
            with os.fdopen(read_end, "rb") as pipe:
                data = pipe.read()
            os.waitpid(pid, 0)
            return data

        answer = await call(as_nobody)
        assert json.loads(answer) == {"ok": False, "error": "that connection is not yours"}
        assert await ask(port, client) == f"USERID UNIX {ME}"
    shutil.rmtree(reachable)


def test_a_claim_needs_an_existing_connection() -> None:
    claims = HostClaims("/nonexistent/claims.sock")
    with socket.socket() as sock, pytest.raises(ValueError, match="not connected"):
        claims.claim(sock, "x")
    with pytest.raises(HostClaimError, match="cannot reach the host identd's claims socket"):
        claims.claim((("127.0.0.1", 1), ("127.0.0.1", 2)), "x")


def test_check_config_names_the_claims_socket() -> None:
    from aioidentd.policy import describe

    config = parse_config('[server]\nclaims_socket = "/run/aioidentd/claims.sock"\n', "t")
    assert "claims socket /run/aioidentd/claims.sock: users allowed to choose" in describe(config)
    with pytest.raises(
        ConfigError, match="t:2: 'claims_socket' in \\[server\\] must be an absolute"
    ):
        parse_config('[server]\nclaims_socket = "claims.sock"\n', "t")


async def test_half_a_line_left_hanging_closes_that_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aioidentd.daemon.claims_socket as claims_socket

    monkeypatch.setattr(claims_socket, "PARTIAL_LINE_TIMEOUT", 0.2)
    async with host(tmp_path) as (_port, path, service):
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b'{"op": "conn')
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the daemon
        writer.close()
        await wait_until_async(lambda: not service._controls, what="control connection gone")


async def test_claims_per_user_are_bounded(
    tmp_path: Path, connection: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aioidentd.daemon.claims_socket as claims_socket

    monkeypatch.setattr(claims_socket, "MAX_CLAIMS_PER_UID", 1)
    client, accepted = connection
    async with host(tmp_path) as (port, path, service):
        with HostClaims(path) as claims:
            await call(claims.claim, client, "first")
            # Claiming the same connection again replaces the claim: still one.
            await call(claims.claim, client, "again")
            with pytest.raises(HostClaimError, match="too many claims"):
                await call(claims.claim, accepted, "second")
            assert len(service) == 1
            assert await ask(port, client) == "USERID UNIX again"


async def test_connecting_takes_a_host_name(tmp_path: Path) -> None:
    """``connecting("localhost")`` declares the addresses the name resolves to."""
    async with host(tmp_path) as (_port, path, service):
        with HostClaims(path) as claims:
            pending = claims.connecting("localhost")
            await call(pending.__enter__)
            assert "127.0.0.1" in pending.hosts
            assert service.expecting(os.getuid(), "127.0.0.1")
            await call(pending.done)
            assert not service.expecting(os.getuid(), "127.0.0.1")


#: Run as root in a child interpreter (its audit hook dies with it): binds the claims
#: socket in a directory anyone can write while a real attacker process, running as
#: nobody, replaces the fresh socket file with a symlink to a file of root's at the
#: worst moment: right after bind, before the file is given its mode.
RACE = """
import os, sys
from aioidentd.daemon.claims_socket import bind_claims_socket

path, victim = sys.argv[1], sys.argv[2]
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        os.read(go_r, 1)
        os.symlink(victim, path + ".new")
        os.rename(path + ".new", path)
    finally:
        os.write(done_w, b"x")
        os._exit(0)
state = {"bound": False, "raced": False}

def hook(event, args):
    if event == "socket.bind" and args[1] == path:
        state["bound"] = True
    elif state["bound"] and not state["raced"] and event in ("open", "os.chmod"):
        state["raced"] = True
        os.write(go_w, b"x")
        os.read(done_r, 1)

sys.addaudithook(hook)
try:
    bind_claims_socket(path)
except OSError as exc:
    print("refused:", exc)
else:
    print("bound")
os.waitpid(pid, 0)
print("raced" if state["raced"] else "not raced")
"""


@needs_root
def test_the_claims_socket_never_changes_the_mode_of_a_file_a_user_swapped_in(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "secret"
    victim.write_text("root's alone\n")
    victim.chmod(0o600)
    writable = Path(tempfile.mkdtemp(prefix="claims-"))
    writable.chmod(0o777)  # an administrator's mistake: any user may write here
    try:
        path = writable / "claims.sock"
        done = subprocess.run(
            [sys.executable, "-c", RACE, str(path), str(victim)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "raced" in done.stdout.split()  # the attacker did act at that moment
        assert stat.S_IMODE(victim.stat().st_mode) == 0o600
        assert "refused:" in done.stdout and "replaced" in done.stdout
    finally:
        shutil.rmtree(writable)


def proc_line(local: tuple[str, int], remote: tuple[str, int], uid: int) -> bytes:
    """One ESTABLISHED line of /proc/net/tcp for an IPv4 loopback connection."""

    def end(address: tuple[str, int]) -> str:
        (word,) = struct.unpack("=I", socket.inet_aton(address[0]))
        return f"{word:08X}:{address[1]:04X}"

    return (
        f"   0: {end(local)} {end(remote)} 01 00000000:00000000 00:00000000 00000000 "
        f"{uid:5d}        0 4242 1 0000000000000000 20 4 30 10 -1\n"
    ).encode()


async def test_a_claim_checked_by_the_proc_scan_leaves_the_event_loop_serving(
    tmp_path: Path, connection: Any
) -> None:
    """The /proc fallback is a blocking read: while it is under way for one claim (here
    /proc/net/tcp is a pipe the test holds), the claims socket still answers others."""
    client, _ = connection
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    table = proc / "net" / "tcp"
    os.mkfifo(table)
    policy = Policy(parse_config(ALLOWED, "t"))
    service = ClaimsService(ProcNetLookup(proc), lambda: policy)
    path = str(tmp_path / "claims.sock")
    await service.start(bind_claims_socket(path))
    claim = {
        "op": "claim",
        "local": list(client.getsockname()),
        "remote": list(client.getpeername()),
        "user_id": "chosen",
    }

    def while_the_scan_waits() -> tuple[bytes | None, bytes]:
        with socket.socket(socket.AF_UNIX) as claiming, socket.socket(socket.AF_UNIX) as other:
            claiming.settimeout(30)
            claiming.connect(path)
            claiming.sendall(json.dumps(claim).encode() + b"\n")
            deadline = time.monotonic() + 10
            while True:  # until the scan has opened the table for reading
                try:
                    writer = os.open(table, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError as exc:
                    if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)
            try:
                other.settimeout(5)
                other.connect(path)
                other.sendall(b'{"op": "connecting", "host": "127.0.0.1"}\n')
                try:
                    answered: bytes | None = other.recv(4096)
                except TimeoutError:
                    answered = None
                header = b"  sl  local_address rem_address   st tx_queue rx_queue ...\n"
                line = proc_line(client.getsockname(), client.getpeername(), os.getuid())
                os.write(writer, header + line)
            finally:
                os.close(writer)
            return answered, claiming.recv(4096)

    try:
        answered, claimed = await call(while_the_scan_waits)
    finally:
        await service.close()
    assert answered == b'{"ok": true}\n'  # served while the scan was still waiting
    assert claimed == b'{"ok": true}\n'


async def test_lines_no_parser_can_digest_get_a_clear_refusal(tmp_path: Path) -> None:
    """JSON nested past the parser's recursion limit and an interface index no kernel
    has used to raise inside the daemon (a traceback per connection, no answer)."""
    impossible = {
        "op": "claim",
        "local": ["fe80::1%4294967296", 1],
        "remote": ["fe80::2%1", 2],
        "user_id": "x",
    }
    async with host(tmp_path) as (_port, path, _service):
        answers = await call(
            raw_exchange,
            path,
            b"[" * 1020 + b"]" * 1020 + b"\n" + json.dumps(impossible).encode() + b"\n",
        )
        assert answers == [
            {"ok": False, "error": "request nested too deeply"},
            {"ok": False, "error": "no network interface has the index 4294967296"},
        ]


async def test_a_failing_request_is_answered_and_logged_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with host(tmp_path) as (_port, path, service):

        def broken(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
            raise RuntimeError("lookup bug")

        monkeypatch.setattr(service.lookup, "owner", broken)
        request = json.dumps(
            {"op": "claim", "local": ["127.0.0.1", 1], "remote": ["127.0.0.1", 2], "user_id": "x"}
        ).encode()
        for _ in range(3):
            answers = await call(raw_exchange, path, request + b"\n" + request + b"\n")
            assert (
                answers
                == [{"ok": False, "error": "internal error (the daemon's log says more)"}] * 2
            )
        failures = [r for r in caplog.records if "unexpected failure" in r.getMessage()]
        assert len(failures) == 1 and failures[0].exc_info is not None  # the rest counted


@both_loops
async def test_at_a_users_limit_its_idle_connection_silent_longest_makes_room(
    tmp_path: Path, connection: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never one that holds a claim: when all of them do, the new one is refused."""
    import aioidentd.daemon.claims_socket as claims_socket

    monkeypatch.setattr(claims_socket, "MAX_CONNECTIONS_PER_UID", 3)
    client, _ = connection
    async with host(tmp_path) as (port, path, service):
        with HostClaims(path) as holder:
            await call(holder.claim, client, "kept")  # the oldest, and it holds a claim
            idle = []
            for _ in range(2):
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(path)
                idle.append(sock)
            await wait_until_async(lambda: len(service._controls) == 3)
            # A fourth: the older idle one goes, the claim stays.
            with HostClaims(path) as fourth:
                await call(fourth.connecting("127.0.0.1").__enter__)
                assert await call(idle[0].recv, 100) == b""  # closed for it
                assert await ask(port, client) == "USERID UNIX kept"
                idle[1].close()
                await wait_until_async(lambda: len(service._controls) == 2)
                # Both left hold something now: a third is still fine, a fourth refused.
                with HostClaims(path) as third:
                    await call(third.connecting("127.0.0.1").__enter__)
                    refused = await call(raw_exchange, path, b"")
                    assert refused == [
                        {"ok": False, "error": f"too many connections from uid {os.getuid()}"}
                    ]
            for sock in idle:
                sock.close()
