"""Peer availability and paths for the interop suite (real third-party peers vs our server).

A missing program, Perl module or network namespace goes through ``peers.unavailable``
(tests/peers.py): it FAILS the test under CI, which installs every peer
(``scripts/install-system-deps.sh``), and skips it with the same reason elsewhere.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from peers import unavailable
from support import SRC

HERE = Path(__file__).resolve().parent
PERL_DIR = HERE / "perl"
#: Daemons live in sbin, which is not on every user's PATH.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def require_program(name: str) -> str:
    """The absolute path of program ``name`` (sbin included), or fail/skip."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_EXTRA_PATH))
    if path is None:
        unavailable(f"program {name!r} not installed (Debian: scripts/install-system-deps.sh)")
    return path


@functools.cache
def _perl_module_error(module: str) -> str | None:
    perl = shutil.which("perl")
    if perl is None:
        return "program 'perl' not installed"
    proc = subprocess.run(
        [perl, f"-M{module}", "-e", "1"], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["perl failed"])[0]
        return f"Perl module {module} not installed: {first.split(' (you may need')[0][:200]}"
    return None


def require_perl_module(module: str) -> str:
    """The path of ``perl`` once ``module`` loads, or fail/skip."""
    error = _perl_module_error(module)
    if error is not None:
        unavailable(error)
    return require_program("perl")


@functools.cache
def require_python_package(name: str) -> None:
    """Fail or skip unless ``name`` imports in the Python that runs the drivers (and the
    examples they start): a venv made before the package joined the test extra lacks it,
    and the example would only say ModuleNotFoundError in its stderr."""
    if importlib.util.find_spec(name) is None:
        unavailable(f"Python package {name!r} not installed: 'make venv' installs the test extra")


def _netns_prefix() -> tuple[list[str] | None, str]:
    unshare = shutil.which("unshare") or shutil.which("unshare", path=os.pathsep.join(_EXTRA_PATH))
    if unshare is None:
        return None, "program 'unshare' (util-linux) not installed"
    ip = shutil.which("ip") or shutil.which("ip", path=os.pathsep.join(_EXTRA_PATH))
    if ip is None:
        return None, "program 'ip' (iproute2) not installed"
    if os.geteuid() == 0:
        prefix = [unshare, "-n", "sh", "-c", f'{shlex.quote(ip)} link set lo up && exec "$@"', "sh"]
    else:
        # Not root: a user namespace (unshare -r) owns the network namespace. Its root
        # lets everyone bind ports below 1024 there and brings lo up, then hands over to
        # a nested user namespace where we are our own uid again: ngircd run as (mapped)
        # root insists on switching to "nobody", who does not exist in there.
        uid, gid = os.getuid(), os.getgid()
        prefix = [
            unshare,
            "-r",
            "-n",
            "sh",
            "-c",
            "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start"
            f" && {shlex.quote(ip)} link set lo up"
            f' && exec {shlex.quote(unshare)} --user --map-user={uid} --map-group={gid} "$@"',
            "sh",
        ]
    try:
        proc = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot create a network namespace ({' '.join(prefix[:3])}): {exc}"
    if proc.returncode != 0:
        return None, (
            f"cannot create a network namespace with {' '.join(prefix[:3])} "
            f"(needs root/CAP_SYS_ADMIN or unprivileged user namespaces): "
            f"{proc.stderr.strip()[:200]}"
        )
    return prefix, ""


def require_netns() -> list[str]:
    """The command prefix that runs a program in a fresh private network namespace."""
    prefix, reason = _netns_prefix()
    if prefix is None:
        unavailable(reason)
    return list(prefix)


def run_driver(script: str, *args: str, timeout: float) -> dict[str, Any]:
    """Run a driver script of this folder in a fresh network namespace and return the
    JSON object it prints; fail with its stderr (or its own error and log) otherwise."""
    proc = subprocess.run(
        [*require_netns(), PYTHON, str(HERE / script), *args],
        capture_output=True,
        timeout=timeout,
        env=python_env(),
    )
    stderr = proc.stderr.decode(errors="replace")[-3000:]
    assert proc.returncode == 0, stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    assert "error" not in data, f"{data['error']}\n{data['log']}\n{stderr}"
    return data


def python_env() -> dict[str, str]:
    """The environment for a child Python that must import aioidentd from ``src``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), *_EXTRA_PATH])
    return env


PYTHON = sys.executable
