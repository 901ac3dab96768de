"""Our IdentServer against the Perl ident clients, as packaged by Debian.

Peers run (``dpkg-query -W``), Debian 12:

* libpoe-component-client-ident-perl 1.16-2 (POE::Component::Client::Ident, the seed's
  sister client): on 127.0.0.1 with an ephemeral ``IdentPort``, no privileges needed.
* libnet-ident-perl 1.25-2 (Net::Ident): its ident port comes from
  ``getservbyname("ident")`` at load time and cannot be changed, so these cases run inside a
  private network namespace (``unshare -n``; ``unshare -rn`` when not root) where our server
  listens on 127.0.0.1:113 (driver: ``netns_net_ident.py``).

Every case runs in both reply styles, ``compact`` (``P,P:USERID:UNIX:alice``) and
``spaced`` (``P , P : USERID : UNIX : alice``); both clients parse both identically, except
that they hand back the opsys field as sent (``UNIX,UTF-8`` vs ``UNIX , UTF-8``).
POE's client reports every failure, a mismatching port pair included, as ``UKNOWN-ERROR``
(sic); Net::Ident as an error message (``FAIL`` here).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest
from identcases import DELAY, by_server_port, make_handler
from interop_peers import (
    HERE,
    PERL_DIR,
    PYTHON,
    python_env,
    require_netns,
    require_perl_module,
    require_program,
)

from aioidentd.server import IdentServer

STYLES = ("compact", "spaced")
#: Our fallback deadline in these cases ("fallback" never answers; "delayed" answers
#: after DELAY, before it).
RESPONSE_TIMEOUT = DELAY + 0.5
#: The Perl clients' own timeout (seconds); every case must finish well inside it.
CLIENT_TIMEOUT = 8

#: case -> the line the client prints (after its port pair, for POE), per style.
EXPECTED: dict[str, dict[str, list[str]]] = {
    "userid": {s: ["USERID", "UNIX", "alice"] for s in STYLES},
    "userid-other": {s: ["USERID", "OTHER", "alice smith"] for s in STYLES},
    "userid-charset": {
        "compact": ["USERID", "UNIX,UTF-8", "jürgen"],
        "spaced": ["USERID", "UNIX , UTF-8", "jürgen"],
    },
    "no-user": {s: ["ERROR", "NO-USER"] for s in STYLES},
    "hidden-user": {s: ["ERROR", "HIDDEN-USER"] for s in STYLES},
    "invalid-port": {s: ["ERROR", "INVALID-PORT"] for s in STYLES},
    "unknown-error": {s: ["ERROR", "UNKNOWN-ERROR"] for s in STYLES},
    "x-token": {s: ["ERROR", "X-NOT-TODAY"] for s in STYLES},
    "delayed": {s: ["USERID", "UNIX", "alice"] for s in STYLES},
    "fallback": {s: ["ERROR", "HIDDEN-USER"] for s in STYLES},
}
CASES = list(EXPECTED)
#: The queried "port on the server" picks the case.
PORTS = {40001 + i: case for i, case in enumerate(CASES)}
CLIENT_PORT = 6667

# POE only: queries our server refuses itself. A port past 65535 is echoed, so the client
# sees INVALID-PORT; an absurd one is answered for the pair 0,0, which POE's client cannot
# match to its query and reports as UKNOWN-ERROR, as the seed notes say.
POE_EXTRA = {
    "server-invalid-port": (70000, ["ERROR", "INVALID-PORT"]),
    "server-invalid-port-absurd": (99999999, ["ERROR", "UKNOWN-ERROR"]),
}


def _decode(line: bytes) -> list[str]:
    return line.decode("utf-8", "backslashreplace").rstrip("\r\n").split("\t")


# -- POE::Component::Client::Ident -----------------------------------------------------------


async def _run_poe(perl: str, style: str) -> tuple[dict[int, list[str]], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    server = IdentServer(
        "127.0.0.1",
        0,
        reply_style=style,  # type: ignore[arg-type]
        response_timeout=RESPONSE_TIMEOUT,
        handlers=[make_handler(by_server_port(PORTS), seen)],
    )
    async with server:
        port = server.addresses[0][1]
        pairs = [f"{p}:{CLIENT_PORT}" for p in PORTS]
        pairs += [f"{p}:{CLIENT_PORT}" for p, _ in POE_EXTRA.values()]
        proc = await asyncio.create_subprocess_exec(
            perl,
            str(PERL_DIR / "poe_client_ident.pl"),
            str(port),
            "127.0.0.1",
            "127.0.0.1",
            str(CLIENT_TIMEOUT),
            *pairs,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT + 5)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    results: dict[int, list[str]] = {}
    for line in out.splitlines():
        fields = _decode(line)
        results[int(fields[0])] = fields[2:]
    return results, seen


@pytest.fixture(scope="module", params=STYLES)
def poe_results(request: pytest.FixtureRequest) -> tuple[str, dict[int, list[str]]]:
    perl = require_perl_module("POE::Component::Client::Ident")
    style: str = request.param
    results, seen = asyncio.run(_run_poe(perl, style))
    # Every query reached a handler, except those the server refused itself.
    assert sorted(s["server_port"] for s in seen) == sorted(PORTS)
    return style, results


@pytest.mark.parametrize("case", CASES)
def test_poe_client_ident(poe_results: tuple[str, dict[int, list[str]]], case: str) -> None:
    style, results = poe_results
    port = next(p for p, c in PORTS.items() if c == case)
    assert results.get(port) == EXPECTED[case][style], f"{case} ({style})"


@pytest.mark.parametrize("case", list(POE_EXTRA))
def test_poe_client_ident_refused_query(
    poe_results: tuple[str, dict[int, list[str]]], case: str
) -> None:
    _style, results = poe_results
    port, expected = POE_EXTRA[case]
    assert results.get(port) == expected


# -- Net::Ident (port 113 only: inside a network namespace) -----------------------------------


@pytest.fixture(scope="module")
def net_ident_results() -> dict[str, dict[str, list[str]]]:
    require_perl_module("Net::Ident")
    require_program("perl")
    prefix = require_netns()
    spec = {"ports": {str(p): c for p, c in PORTS.items()}, "styles": list(STYLES)}
    proc = subprocess.run(
        [
            *prefix,
            PYTHON,
            str(HERE / "netns_net_ident.py"),
            json.dumps(spec),
            str(RESPONSE_TIMEOUT),
            str(CLIENT_TIMEOUT),
        ],
        capture_output=True,
        timeout=CLIENT_TIMEOUT + 30,
        env=python_env(),
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    data: dict[str, Any] = json.loads(proc.stdout)
    results: dict[str, dict[str, list[str]]] = data["results"]
    return results


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("case", CASES)
def test_net_ident(
    net_ident_results: dict[str, dict[str, list[str]]], case: str, style: str
) -> None:
    assert net_ident_results[style][case] == EXPECTED[case][style]
