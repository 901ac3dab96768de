"""Driver run inside a private network namespace: the programs in ``examples/`` against a
real IRC server (ngircd), which asks each connection's ident on port 113.

usage: python netns_examples.py

Runs, one after the other, against ngircd on 127.0.0.1:16667:

* ``irc_bot.py 127.0.0.1 16667 alice bob`` (two connections, two identities);
* ``sync_bot.py 127.0.0.1 16667 carol`` (blocking code, the server in a thread);
* ``bouncer.py 127.0.0.1 16667 dave erin --listen 127.0.0.1:6700`` with three clients at
  once (dave twice, erin once), each sending ``PASS <name>`` then registering;
* ``irc_jaraco.py 127.0.0.1 16667 frank grace`` (the ``irc`` package's asyncio reactor)
  and ``irc_jaraco.py 127.0.0.1 16667 heidi ivan --blocking`` (its blocking one);
* ``irc_pydle.py 127.0.0.1 16667 judy mallory`` (pydle, claimed after it connects).

Prints JSON: ``{"irc_bot": {"rc", "stdout", "stderr"}, "sync_bot": {...}, "bouncer":
{"clients": [{"name", "user", "error"}], "rc", "stdout", "stderr"}, "irc_jaraco_aio": {...},
"irc_jaraco_blocking": {...}, "irc_pydle": {...}, "log"}``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from identcases import loopback_up
from netns_irc import IRC_PORT, start_ircd, stop_ircd, wait_listening, welcome

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUN_TIMEOUT = 60.0
BOUNCER = ("127.0.0.1", 6700)


def run(script: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr[-3000:]}


async def through_bouncer(name: str, nick: str) -> dict[str, Any]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(*BOUNCER)
    writer.write(f"PASS {name}\r\n".encode())
    result = await welcome(reader, writer, nick, name, started)
    result["name"] = name
    return result


async def bouncer() -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "bouncer.py"),
        "127.0.0.1",
        str(IRC_PORT),
        "dave",
        "erin",
        "--listen",
        f"{BOUNCER[0]}:{BOUNCER[1]}",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    result: dict[str, Any] = {"clients": []}
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), RUN_TIMEOUT)
        result["stdout"] = first.decode()
        if first.startswith(b"listening"):
            result["clients"] = await asyncio.gather(
                through_bouncer("dave", "dave1"),
                through_bouncer("dave", "dave2"),
                through_bouncer("erin", "erin1"),
            )
            # A name the bouncer does not know is refused, with no upstream connection.
            reader, writer = await asyncio.open_connection(*BOUNCER)
            writer.write(b"PASS mallory\r\n")
            result["refused"] = (await asyncio.wait_for(reader.read(), 10)).decode()
            writer.close()
    finally:
        proc.terminate()
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
        result["stdout"] += out.decode()
        result["stderr"] = err.decode()[-3000:]
        result["rc"] = proc.returncode
    return result


async def main() -> dict[str, Any]:
    output: dict[str, Any] = {"log": ""}
    with tempfile.TemporaryDirectory(prefix="examples-") as tmp:
        workdir = Path(tmp)
        proc = start_ircd("ngircd", workdir)
        try:
            await wait_listening(proc)
            output["irc_bot"] = await asyncio.to_thread(
                run, "irc_bot.py", "127.0.0.1", str(IRC_PORT), "alice", "bob"
            )
            output["sync_bot"] = await asyncio.to_thread(
                run, "sync_bot.py", "127.0.0.1", str(IRC_PORT), "carol"
            )
            output["bouncer"] = await bouncer()
            irc = ("127.0.0.1", str(IRC_PORT))
            output["irc_jaraco_aio"] = await asyncio.to_thread(
                run, "irc_jaraco.py", *irc, "frank", "grace"
            )
            output["irc_jaraco_blocking"] = await asyncio.to_thread(
                run, "irc_jaraco.py", *irc, "heidi", "ivan", "--blocking"
            )
            output["irc_pydle"] = await asyncio.to_thread(
                run, "irc_pydle.py", *irc, "judy", "mallory"
            )
        except Exception as exc:
            output["error"] = repr(exc)
        finally:
            stop_ircd(proc, workdir, output)
    return output


if __name__ == "__main__":
    loopback_up()
    print(json.dumps(asyncio.run(main())))
