"""Driver run inside a private network namespace: Net::Ident against our server on port 113.

usage: python netns_net_ident.py SPEC_JSON RESPONSE_TIMEOUT CLIENT_TIMEOUT

SPEC_JSON is ``{"ports": {"<server port>": "<case>"}, "styles": [...]}``. For each style it
starts our IdentServer on 127.0.0.1:113 and runs ``perl/net_ident.pl`` once per case, all at
once, asking about the connection 127.0.0.1:<server port> <-> 127.0.0.1:6667. It prints
``{"results": {style: {case: [fields...]}}, "seen": {style: [...]}}`` as JSON.
Run by test_perl_clients.py under ``unshare -n``; it refuses to run outside a namespace
where it could not bind port 113 (it does not check which namespace it is in).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from identcases import by_server_port, loopback_up, make_handler

from aioidentd.server import IdentServer

HERE = Path(__file__).resolve().parent
CLIENT_PORT = 6667


async def run_case(port: int, client_timeout: float) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        "perl",
        str(HERE / "perl" / "net_ident.pl"),
        "127.0.0.1",
        str(CLIENT_PORT),
        "127.0.0.1",
        str(port),
        str(int(client_timeout)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), client_timeout + 5)
    except TimeoutError:
        return ["DRIVER-TIMEOUT"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        return ["PERL-FAILED", err.decode(errors="replace")[-500:]]
    return out.decode("utf-8", "backslashreplace").rstrip("\r\n").split("\t")


async def main(spec: dict[str, Any], response_timeout: float, client_timeout: float) -> None:
    ports = {int(p): c for p, c in spec["ports"].items()}
    results: dict[str, dict[str, list[str]]] = {}
    seen: dict[str, list[dict[str, Any]]] = {}
    for style in spec["styles"]:
        seen[style] = []
        server = IdentServer(
            "127.0.0.1",
            113,
            reply_style=style,
            response_timeout=response_timeout,
            handlers=[make_handler(by_server_port(ports), seen[style])],
        )
        async with server:
            answers = await asyncio.gather(*(run_case(p, client_timeout) for p in ports))
        results[style] = {ports[p]: a for p, a in zip(ports, answers, strict=True)}
    print(json.dumps({"results": results, "seen": seen}))


if __name__ == "__main__":
    loopback_up()
    asyncio.run(main(json.loads(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])))
