"""Claims over the daemon's local Unix socket (``[server] claims_socket``) and the
``HostClaims`` client: real sockets, the kernel's socket table (netlink) saying who owns
what, the real policy; an identd answering through KernelResponder as the daemon does.

The client's calls are blocking exchanges with the daemon, so the tests make them from a
worker thread while the service runs on the test's event loop."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import aioidentd
from aioidentd import HostClaimError, HostClaims, IdentServer
from aioidentd.daemon import KernelResponder
from aioidentd.daemon.claims_socket import MAX_REQUEST, ClaimsService, bind_claims_socket
from aioidentd.lookup import default_lookup
from aioidentd.policy import ConfigError, Policy, parse_config
from support import needs_root, wait_until_async

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
