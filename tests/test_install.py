"""The README's install section, followed as written, gives a daemon the systemd units run.

An administrator copies those lines; so does this test: in a copy of the source tree (the
checkout the README says to run them in), it runs every line of the README's install block
as written (``apt`` and ``systemctl`` lines left out: systemd is not PID 1 here) inside a
private mount namespace whose ``/opt``, ``/etc`` and ``/usr/local`` are scratch copies, so
the machine is left as it was. Then it checks the installed units the way systemd would
(``systemd-analyze verify``), rates their sandbox (``systemd-analyze security``, at most
2.0 for both services) and starts the service's ``ExecStart=`` line exactly as written,
as the unit's ``User=``, with a listening socket passed the way systemd passes it
(``LISTEN_FDS``), and asks it about a real connection.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aioidentd import Reply, UserIdReply, __version__, query
from peers import require, require_root

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "examples" / "systemd"
SERVICES = ["aioidentd.service", "aioidentd-inetd@.service"]
#: The README's promise, and the issue's bar.
MAX_EXPOSURE = 2.0


def install_lines() -> list[str]:
    """The shell lines of the README's install block."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"tests/test_install\.py.*?-->\n```sh\n(.*?)\n```", text, re.S)
    assert match, "README.md has no install block marked for tests/test_install.py"
    return match.group(1).splitlines()


def unit_setting(path: Path, name: str) -> list[str]:
    return [
        line.split("=", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.startswith(f"{name}=")
    ]


def exposure(unit: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


def test_the_readme_install_block_is_what_this_test_runs() -> None:
    lines = install_lines()
    left_out = [line for line in lines if _LEFT_OUT.match(line)]
    assert left_out == [
        "apt install python3-venv",
        "systemctl daemon-reload",
        "systemctl enable --now aioidentd.socket",
    ]
    # Until a release is on a package index, the package comes from the checkout.
    assert "/opt/aioidentd/bin/pip install ." in lines
    # As root: a root machine often has no sudo at all.
    assert not [line for line in lines if line.startswith("sudo ")]
    # The daemon's group too, as its own hint and install-system-deps.sh create it.
    (useradd,) = [line for line in lines if line.startswith("useradd ")]
    assert "--user-group" in useradd.split()
    # The units run the daemon from where the README installs it.
    for name in SERVICES:
        start = unit_setting(UNITS / name, "ExecStart")
        assert start and all(cmd.startswith("/opt/aioidentd/bin/aioidentd ") for cmd in start)


@pytest.mark.parametrize("name", SERVICES)
def test_units_sandbox_is_rated_at_most_2(name: str) -> None:
    require("systemd-analyze", "systemd's analyze tool (package systemd)")
    score = exposure(UNITS / name)
    assert score <= MAX_EXPOSURE, f"{name}: exposure {score}"


@pytest.mark.parametrize("name", SERVICES)
def test_units_never_run_as_nobody_and_keep_no_capability(name: str) -> None:
    unit = UNITS / name
    assert unit_setting(unit, "User") == ["aioidentd"]
    assert unit_setting(unit, "CapabilityBoundingSet") == [""]
    assert unit_setting(unit, "RestrictAddressFamilies") == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    # In a user namespace every other user's socket reads as owned by nobody.
    assert not unit_setting(unit, "PrivateUsers") and not unit_setting(unit, "PrivateNetwork")


_LEFT_OUT = re.compile(r"(apt|systemctl) ")
#: What a checkout has that the copy the install runs in leaves out (built or local state).
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


@pytest.mark.parametrize("unit", ["aioidentd.service", "aioidentd-inetd@.service"])
def test_the_exposure_figure_the_docs_give_is_the_measured_one(unit: str) -> None:
    require("systemd-analyze", "systemd's analyze tool (package systemd)")
    measured = f"{exposure(UNITS / unit):.1f}"
    assert f"rates {measured} (OK)" in " ".join((ROOT / "README.md").read_text().split())
    assert f"**{measured} OK**" in (ROOT / "docs" / "systemd.md").read_text()
    comment = (UNITS / "aioidentd.service").read_text()
    assert f"systemd-analyze security: {measured} OK" in comment


#: A bash function for the scripts below (which set $scratch): each directory named
#: becomes an overlay, in this mount namespace, whose changes land in $scratch/_dir.up.
OVERLAY = r"""
overlay() {
  for dir in "$@"; do
    name=$(echo "$dir" | tr / _)
    mkdir -p "$scratch/$name.up" "$scratch/$name.work"
    mount -t overlay overlay "$dir" \
      -o "lowerdir=$dir,upperdir=$scratch/$name.up,workdir=$scratch/$name.work"
  done
}
"""

SCRIPT = (
    OVERLAY
    + r"""
set -euo pipefail
scratch=$1; shift
overlay /etc /usr/local
mount -t tmpfs tmpfs /opt
# A fresh machine: no aioidentd user yet (this one may have it from another install).
sed -i '/^aioidentd:/d' /etc/passwd /etc/group /etc/shadow /etc/gshadow
cd "$scratch/checkout"
while IFS= read -r line; do
  echo "+ $line" >&2
  eval "$line" > "$scratch/out.txt" 2>&1 || { cat "$scratch/out.txt" >&2; exit 1; }
  cat "$scratch/out.txt" >> "$scratch/log.txt"
done < "$scratch/install.sh"
/opt/aioidentd/bin/aioidentd --version > "$scratch/version.txt"
aioidentd serve --version >> "$scratch/version.txt"
systemd-analyze verify /etc/systemd/system/aioidentd.service /etc/systemd/system/aioidentd.socket \
  > "$scratch/verify.txt" 2>&1 || { cat "$scratch/verify.txt" >&2; exit 1; }
cp -r /opt/aioidentd/share/aioidentd/systemd "$scratch/installed-units"
man -w aioidentd aioidentd.toml > "$scratch/man.txt"
# The service as systemd starts it: as its user, socket on descriptor 3, LISTEN_PID our pid.
printf '[server]\nuser = "aioidentd"\n[user.root]\nanswer = "username"\n' > /etc/aioidentd.toml
touch "$scratch/started"
export LISTEN_FDS=1 LISTEN_PID=$$
exec setpriv --reuid="$USER_" --regid="$GROUP_" --clear-groups --no-new-privs "$@"
"""
)


def as_systemd_passes(listener: socket.socket) -> dict[str, Any]:
    """Popen arguments that hand ``listener`` to the child as descriptor 3, the way
    systemd passes a socket (with ``LISTEN_FDS=1``)."""

    def on_3() -> None:
        os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)

    # pass_fds keeps 3 open after preexec_fn (close_fds runs after it).
    return {"preexec_fn": on_3, "pass_fds": (3,)}


def ask_about_own_connection(port: int) -> Reply:
    """What the ident server on ``port`` answers about a real loopback connection that
    this process (root, in these tests) owns."""
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        return asyncio.run(
            query(
                "127.0.0.1",
                client.getsockname()[1],
                server.getsockname()[1],
                port=port,
                timeout=30,
            )
        )


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[tuple[Path, int, subprocess.Popen[str]]]:
    require_root("mounts a private /opt, /etc and /usr/local (unshare -m) to install into")
    require("unshare", "util-linux's unshare")
    require("setpriv", "util-linux's setpriv")
    require("systemd-analyze", "systemd's analyze tool (package systemd)")
    service = UNITS / "aioidentd.service"
    (command,) = unit_setting(service, "ExecStart")
    (user,) = unit_setting(service, "User")
    (group,) = unit_setting(service, "Group")
    lines = [line for line in install_lines() if not _LEFT_OUT.match(line)]
    shutil.copytree(ROOT, tmp_path / "checkout", ignore=_NOT_SOURCE)
    (tmp_path / "install.sh").write_text("\n".join(lines) + "\n")
    (tmp_path / "run.sh").write_text(SCRIPT)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    env = {**os.environ, "USER_": user, "GROUP_": group}
    env.pop("PYTHONPATH", None)  # the installed copy, not this tree
    proc = subprocess.Popen(
        [
            *("unshare", "-m", "--propagation", "private", "bash", str(tmp_path / "run.sh")),
            *(str(tmp_path), *shlex.split(command)),
        ],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        **as_systemd_passes(listener),
    )
    listener.close()
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "started").exists():
            if proc.poll() is not None:
                assert proc.stderr is not None
                pytest.fail(f"install failed ({proc.returncode}):\n{proc.stderr.read()}")
            assert time.monotonic() < deadline, "install did not finish in 240 s"
            time.sleep(0.05)
        yield tmp_path, port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_readme_install_then_the_units_exec_start_serves(
    installed: tuple[Path, int, subprocess.Popen[str]],
) -> None:
    scratch, port, proc = installed
    assert (scratch / "version.txt").read_text() == f"aioidentd {__version__}\n" * 2
    # systemd-analyze verify of the installed units: silent (no "nobody", the binary and
    # the man pages that Documentation= names exist).
    assert (scratch / "verify.txt").read_text() == ""
    for unit in UNITS.iterdir():
        assert (scratch / "installed-units" / unit.name).read_text() == unit.read_text()
    # man finds the pages the wheel installed, through the README's links (and names
    # the files they point to).
    assert (scratch / "man.txt").read_text().split() == [
        "/opt/aioidentd/share/man/man8/aioidentd.8",
        "/opt/aioidentd/share/man/man5/aioidentd.toml.5",
    ]

    # A real connection owned by root: the installed daemon finds its owner in the kernel's
    # socket table and answers by the policy of /etc/aioidentd.toml.
    reply = ask_about_own_connection(port)
    assert isinstance(reply, UserIdReply) and reply.user_id == "root", reply
    assert proc.poll() is None
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert "Traceback" not in log
    assert shutil.which("aioidentd") != "/usr/local/bin/aioidentd"  # the host is untouched
