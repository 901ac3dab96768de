"""The Debian package, built from a clean clone, installed, upgraded, removed and purged.

``make deb`` in a fresh ``git clone`` builds the package with Debian's own tools
(debhelper, dh-python's pybuild) and runs lintian on it; a second clone, at the next
version, builds the upgrade. Then the README's ``apt install ./dist/aioidentd_*_all.deb``
runs for real in each, maintainer scripts and all, followed by ``apt remove`` and
``apt purge``, inside a private mount namespace whose ``/etc``, ``/usr`` and
``/var`` are overlays on scratch directories and whose ``/run`` is empty, so the machine
is left as it was: the host's systemd is out of reach, a ``policy-rc.d`` records what the
package tried to start (and refuses, as it must be honoured), and each overlay's upper
directory is exactly what the package manager changed. Listed after install, remove and
purge, those changes are what Debian policy says and nothing else.
"""

from __future__ import annotations

import email.utils
import fcntl
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from aioidentd import Reply, UserIdReply, __version__
from peers import require, require_root, unavailable
from test_install import (
    MAX_EXPOSURE,
    OVERLAY,
    as_systemd_passes,
    ask_about_own_connection,
    exposure,
    unit_setting,
)

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "examples" / "systemd"
#: Debian's tools and the system Python, never the venv that runs the tests.
SYSTEM_ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
}
#: What the package manager itself keeps (its database, logs, caches): not the package's.
BOOKKEEPING = ("/var/lib/dpkg/", "/var/lib/apt/", "/var/log/", "/var/cache/")
#: The account files, their backups and lock: where the system user is (and stays).
ACCOUNTS = {
    f"/etc/{name}{suffix}"
    for name in ("passwd", "group", "shadow", "gshadow")
    for suffix in ("", "-")
} | {"/etc/.pwd.lock"}


def readme_lines() -> list[str]:
    """The shell lines of the README's Debian package block."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"tests/test_deb\.py.*?-->\n```sh\n(.*?)\n```", text, re.S)
    assert match, "README.md has no package block marked for tests/test_deb.py"
    return match.group(1).splitlines()


def build_depends() -> set[str]:
    """debian/control's Build-Depends as the packages that apt installs for them."""
    control = (ROOT / "debian" / "control").read_text()
    (field,) = re.findall(r"^Build-Depends:(.*?)\n(?=\S)", control, re.S | re.M)
    names = {re.sub(r"\s*\(.*\)", "", name).strip() for name in field.split(",")} - {""}
    providers = {
        "debhelper-compat": "debhelper",
        "dh-sequence-installsysusers": "debhelper",
        "dh-sequence-python3": "dh-python",
    }
    return {providers.get(name, name) for name in names}


def test_the_readme_package_block_is_what_this_test_runs() -> None:
    apt_line, make_line, install_line = readme_lines()
    # What dpkg-buildpackage checks for: Build-Depends and build-essential.
    assert apt_line.startswith("apt install ")
    assert set(apt_line.split()[2:]) == build_depends() | {"build-essential"}
    deps = (ROOT / "scripts" / "install-system-deps.sh").read_text()
    assert all(re.search(rf"^  {name}\b", deps, re.M) for name in apt_line.split()[2:])
    assert make_line == "make deb"
    assert install_line == "apt install ./dist/aioidentd_*_all.deb"


def changelog_version(changelog: Path) -> str:
    proc = subprocess.run(
        ["dpkg-parsechangelog", "-l", str(changelog), "-S", "Version"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def next_version(version: str) -> str:
    """The version after ``version``: its last number plus one (0.1.0 -> 0.1.1)."""
    return re.sub(r"(\d+)(?!.*\d)", lambda m: str(int(m[1]) + 1), version)


def test_debian_changelog_follows_the_version() -> None:
    require("dpkg-parsechangelog", "dpkg-dev")
    upstream, _, revision = changelog_version(ROOT / "debian" / "changelog").rpartition("-")
    assert upstream == __version__, "debian/changelog's top entry is not aioidentd.__version__"
    assert revision.isdigit()


@dataclass
class Built:
    deb: Path
    upgrade: Path
    make_output: str


def bump_version(clone: Path, version: str) -> None:
    """What a release does to a checkout: the version in its one place, a changelog entry."""
    init = clone / "src" / "aioidentd" / "__init__.py"
    text, count = re.subn(
        r'^__version__ = "[^"]*"$', f'__version__ = "{version}"', init.read_text(), flags=re.M
    )
    assert count == 1
    init.write_text(text)
    changelog = clone / "debian" / "changelog"
    when = email.utils.format_datetime(email.utils.localtime())
    entry = (
        f"aioidentd ({version}-1) unstable; urgency=medium\n\n  * New upstream release.\n\n"
        f" -- The aioidentd authors <aioidentd@example.org>  {when}\n\n"
    )
    changelog.write_text(entry + changelog.read_text())


def checkout(dest: Path) -> Path:
    """A clean clone of this repository; from an unpacked sdist, a copy of what it holds."""
    if (ROOT / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(dest)], check=True, timeout=60)
    else:
        litter = shutil.ignore_patterns(".venv*", "build", "dist", "__pycache__", ".*_cache")
        shutil.copytree(ROOT, dest, symlinks=True, ignore=litter)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if (ROOT / ".git").exists():
        require("git", "git")
    require("dpkg-buildpackage", "dpkg-dev")
    require("dh", "debhelper")
    require("lintian", "lintian")
    base = tmp_path_factory.mktemp("deb")
    clone, upgrade = checkout(base / "clone"), checkout(base / "next")
    bump_version(upgrade, next_version(__version__))
    # Both at once (two cores): make deb (build and lintian) and the next version's build.
    later = subprocess.Popen(
        ["bash", "scripts/build-deb.sh", "dist"],
        cwd=upgrade,
        env=SYSTEM_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        make = subprocess.run(
            ["make", "deb"],
            cwd=clone,
            env=SYSTEM_ENV,
            capture_output=True,
            text=True,
            timeout=600,
        )
        log, _ = later.communicate(timeout=600)
    finally:
        if later.poll() is None:
            later.kill()
    assert make.returncode == 0, make.stdout + make.stderr
    assert later.returncode == 0, log
    (deb,) = (clone / "dist").glob("aioidentd_*_all.deb")
    (next_deb,) = (upgrade / "dist").glob("aioidentd_*_all.deb")
    return Built(deb, next_deb, make.stdout)


def test_make_deb_in_a_clean_clone_is_lintian_clean(built: Built) -> None:
    assert built.deb.name == f"aioidentd_{__version__}-1_all.deb"
    assert built.upgrade.name == f"aioidentd_{next_version(__version__)}-1_all.deb"
    # make deb runs lintian at its default level (errors and warnings) and fails on any;
    # the one override (debian/aioidentd.lintian-overrides) says why.
    tags = [line for line in built.make_output.splitlines() if re.match(r"[EW]: ", line)]
    assert tags == []
    assert "lintian" in built.make_output


def test_the_package_is_an_ident_server_like_the_others(built: Built) -> None:
    def field(name: str) -> str:
        proc = subprocess.run(
            ["dpkg-deb", "--field", str(built.deb), name], capture_output=True, text=True
        )
        return proc.stdout.strip()

    # As oidentd, nullidentd and the other identds: one ident-server on a host at a time.
    assert "ident-server" in field("Provides").split(", ")
    assert field("Conflicts") == "ident-server"
    assert field("Replaces") == "ident-server"
    assert field("Architecture") == "all"
    assert "python3" in field("Depends")


def test_the_files_the_man_pages_name_are_in_the_package(built: Built) -> None:
    """aioidentd.toml(5)'s FILES names where the package puts the example and the schema:
    the paths must be the package's, not the repository's."""
    page = (ROOT / "man" / "aioidentd.toml.5").read_text()
    named = re.findall(r"^\\fI(/usr/[^\\]+)\\fR$", page.partition(".SH FILES")[2], re.M)
    assert len(named) >= 2, named
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(built.deb)], capture_output=True, text=True, check=True
    ).stdout
    packaged = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    assert not [path for path in named if path not in packaged], named


SCRIPT = (
    OVERLAY
    + r"""
set -euo pipefail
trap 'echo "run.sh: line $LINENO failed ($?)" >&2' ERR
scratch=$1 clone=$2 upgrade=$3 install=$4
overlay /etc /usr /var
# No way to the host's systemd or D-Bus; but the maintainer scripts see a systemd
# (/run/systemd/system) and so try to start the units, through policy-rc.d.
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
printf '#!/bin/sh\necho "$*" >> %s/policy-rc.d.log\nexit 101\n' "$scratch" > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
# man-db's trigger rebuilds its index after each step, for seconds: not what is tested.
rm -f /var/lib/man-db/auto-update
# A fresh machine: no aioidentd user yet (this one may have it from the test suite).
sed -i '/^aioidentd:/d' /etc/passwd /etc/group /etc/shadow /etc/gshadow
dpkg-query -W -f='${Status}\n' oidentd > "$scratch/oidentd-before.txt" 2>&1 || true

snapshot() {
  for dir in /etc /usr /var; do
    name=$(echo "$dir" | tr / _)
    (cd "$scratch/$name.up" && find . -mindepth 1 -printf "$dir/%P %y\n")
  done | sort > "$scratch/files-$1.txt"
}
snapshot setup
# Each step's output in a file; all of it on stderr when one fails.
step() {
  local log=$scratch/$1.txt; shift
  "$@" > "$log" 2>&1 || { cat "$log" >&2; exit 1; }
  echo "$(date +%s.%N) $log" >> "$scratch/times.txt"
}

# The README's line as written (-y: nobody is there to answer), in the checkout.
step apt-install bash -c "cd '$clone' && $install -y"
snapshot installed
dpkg-query -W -f='${Status}\n' oidentd > "$scratch/oidentd-after.txt" 2>&1 || true
getent passwd aioidentd > "$scratch/user.txt"
aioidentd --version > "$scratch/version.txt"
step check-config aioidentd check-config /etc/aioidentd.toml
units=/lib/systemd/system
mkdir "$scratch/units"
cp "$units/aioidentd.service" "$units/aioidentd.socket" "$scratch/units/"
step verify systemd-analyze verify "$units/aioidentd.service" "$units/aioidentd.socket"

# The administrator identifies root; then the next version comes.
sed -i '/^\[user.root\]$/,/^answer/s/^answer = "hidden"$/answer = "username"/' /etc/aioidentd.toml
cp /etc/aioidentd.toml "$scratch/edited.toml"
step apt-upgrade bash -c "cd '$upgrade' && $install -y"
aioidentd --version >> "$scratch/version.txt"
cp /etc/aioidentd.toml "$scratch/after-upgrade.toml"
ls /etc | grep '^aioidentd' > "$scratch/etc-after-upgrade.txt"

# The service as systemd starts it: ExecStartPre= then ExecStart=, as its User= and
# Group=, the socket on descriptor 3, LISTEN_PID the daemon's pid.
unit=$units/aioidentd.service
setting() { sed -n "s/^$1=//p" "$unit"; }
as_unit() { exec setpriv --reuid="$(setting User)" --regid="$(setting Group)" --clear-groups \
  --no-new-privs "$@"; }
(as_unit $(setting ExecStartPre)) > /dev/null
(
  export LISTEN_FDS=1 LISTEN_PID=$BASHPID
  exec 2> "$scratch/daemon.log"
  as_unit $(setting ExecStart)
) &
daemon=$!
exec 3<&-
touch "$scratch/started"
for _ in $(seq 600); do [ -e "$scratch/queried" ] && break; sleep 0.1; done
kill -TERM "$daemon"
status=0; wait "$daemon" || status=$?
echo "$status" > "$scratch/daemon-status.txt"

step apt-remove apt remove -y aioidentd
snapshot removed
step apt-purge apt purge -y aioidentd
snapshot purged
getent passwd aioidentd > "$scratch/user-after-purge.txt" || true
"""
)


@dataclass
class Session:
    scratch: Path
    reply: Reply | None
    proc: subprocess.CompletedProcess[str]

    def text(self, name: str) -> str:
        return (self.scratch / name).read_text()

    def changed(self, stage: str) -> dict[str, str]:
        """What the package manager changed by ``stage``, beside its own bookkeeping and
        the test's set-up: path -> find's type letter (``c`` a deleted file, ``d`` a
        directory that the machine does not have)."""
        setup = dict(self._files("setup"))
        found = {}
        for path, kind in self._files(stage):
            if path.startswith(BOOKKEEPING) or setup.get(path) == kind:
                continue
            if kind == "d" and os.path.isdir(path):
                continue  # only the parent of a change
            found[path] = kind
        return found

    def _files(self, stage: str) -> Iterator[tuple[str, str]]:
        for line in self.text(f"files-{stage}.txt").splitlines():
            path, kind = line.rsplit(" ", 1)
            yield path, kind


@contextmanager
def host_dpkg_locked(within: float = 300) -> Iterator[None]:
    """Hold the machine's own dpkg locks (as apt takes them: fcntl, frontend first).

    The overlays see the host's /var/lib/dpkg live: an apt or dpkg run on the host during
    the session (another shell's ``make deps``) would show the session a half-written
    database ("dpkg was interrupted"). Waiting for the host's run to end, then keeping the
    host's runs waiting, gives the session a still one."""
    deadline = time.monotonic() + within
    with ExitStack() as held:
        for name in ("lock-frontend", "lock"):
            fd = os.open(f"/var/lib/dpkg/{name}", os.O_RDWR | os.O_CREAT, 0o640)
            held.callback(os.close, fd)
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"dpkg's {name} held for {within} s"
                    time.sleep(0.5)
        yield


@pytest.fixture(scope="module")
def session(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Session:
    require_root("mounts private overlays on /etc, /usr and /var (unshare -m) to install into")
    for tool, what in [
        ("unshare", "util-linux's unshare"),
        ("setpriv", "util-linux's setpriv"),
        ("systemd-analyze", "systemd's analyze tool (package systemd)"),
        ("apt-get", "apt"),
    ]:
        require(tool, what)
    if not all(os.path.realpath(f"/{top}") == f"/usr/{top}" for top in ("bin", "sbin", "lib")):
        # There the package's /lib/systemd/system would be written outside the overlays.
        unavailable("needs a merged /usr (/bin, /sbin and /lib links into /usr)")
    scratch = tmp_path_factory.mktemp("apt")
    (scratch / "run.sh").write_text(SCRIPT)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with host_dpkg_locked():
        proc = subprocess.Popen(
            [
                *("unshare", "-m", "--propagation", "private", "bash", str(scratch / "run.sh")),
                *(str(scratch), str(built.deb.parents[1]), str(built.upgrade.parents[1])),
                readme_lines()[2],
            ],
            env=SYSTEM_ENV,
            cwd=scratch,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **as_systemd_passes(listener),
        )
        listener.close()
        reply: Reply | None = None
        try:
            deadline = time.monotonic() + 240
            while not (scratch / "started").exists() and proc.poll() is None:
                assert time.monotonic() < deadline, "install and upgrade did not finish in 240 s"
                time.sleep(0.05)
            if proc.poll() is None:
                # A real connection owned by root, asked of the installed daemon.
                reply = ask_about_own_connection(port)
                (scratch / "queried").touch()
            out, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, f"the install session failed ({proc.returncode}):\n{err}"
    return Session(scratch, reply, subprocess.CompletedProcess(proc.args, 0, out, err))


def test_apt_install_creates_the_user_and_replaces_the_other_identd(session: Session) -> None:
    assert session.text("version.txt").splitlines()[0] == f"aioidentd {__version__}"
    # A system user with no home and no shell, as the unit's User= names.
    name, _, uid, _, _, home, shell = session.text("user.txt").strip().split(":")
    assert (name, home, shell) == ("aioidentd", "/nonexistent", "/usr/sbin/nologin")
    assert int(uid) < 1000
    # Conflicts/Replaces: ident-server took the host's oidentd out (its configuration kept).
    if "install ok installed" in session.text("oidentd-before.txt"):
        assert session.text("oidentd-after.txt").strip() == "deinstall ok config-files"
    assert "valid" in session.text("check-config.txt")


def test_the_socket_is_enabled_and_started_through_policy_rc_d(session: Session) -> None:
    # The socket is enabled; the service is started by the first query, so it is not.
    wants = {path: kind for path, kind in session.changed("installed").items() if ".wants/" in path}
    assert wants == {
        "/etc/systemd/system/sockets.target.wants/aioidentd.socket": "l",
        "/var/lib/systemd/deb-systemd-helper-enabled/sockets.target.wants/aioidentd.socket": "f",
    }
    # The postinst asked to start the socket, the upgrade to restart it and to restart
    # the service if it runs, the prerm to stop it; policy-rc.d said no each time, and
    # nothing was started (or stopped) on this machine.
    asked = session.text("policy-rc.d.log").splitlines()
    assert [line for line in asked if "aioidentd" in line] == [
        "aioidentd.socket start",
        "aioidentd.socket restart",
        "aioidentd.service try-restart",
        "aioidentd.socket stop",  # remove (which stops the service: Requires=)
    ], asked
    assert "policy-rc.d returned 101" in session.text("apt-install.txt")


@pytest.mark.parametrize("name", ["aioidentd.service", "aioidentd.socket"])
def test_installed_units_are_the_project_s_run_from_usr_bin(session: Session, name: str) -> None:
    installed = (session.scratch / "units" / name).read_text()
    ours = (UNITS / name).read_text()
    assert installed == ours.replace("/opt/aioidentd/bin/aioidentd", "/usr/bin/aioidentd")
    assert not [line for line in installed.splitlines() if "/opt/" in line and "=" in line]
    # systemd-analyze verify, with the binary and the man pages (Documentation=): silent.
    assert session.text("verify.txt") == ""
    if name.endswith(".service"):
        assert exposure(session.scratch / "units" / name) <= MAX_EXPOSURE
        start = unit_setting(session.scratch / "units" / name, "ExecStart")
        assert start == ["/usr/bin/aioidentd serve --config /etc/aioidentd.toml"]


def test_an_upgrade_keeps_the_administrator_s_configuration(session: Session) -> None:
    versions = session.text("version.txt").splitlines()
    assert versions == [f"aioidentd {__version__}", f"aioidentd {next_version(__version__)}"]
    edited = session.text("edited.toml")
    assert 'answer = "username"' in edited.split("[user.root]")[1]
    assert session.text("after-upgrade.toml") == edited
    # No .dpkg-new/.dpkg-dist beside it: dpkg had nothing to ask.
    assert session.text("etc-after-upgrade.txt").split() == ["aioidentd.toml"]


def test_the_daemon_as_its_unit_starts_it_answers_a_real_connection(session: Session) -> None:
    # The connection is root's, and the administrator's kept edit identifies root.
    assert isinstance(session.reply, UserIdReply), session.reply
    assert session.reply.user_id == "root"
    assert session.text("daemon-status.txt").strip() == "0"
    assert "Traceback" not in session.text("daemon.log")


def test_remove_keeps_the_configuration_and_purge_leaves_only_the_user(
    session: Session,
) -> None:
    def left(stage: str) -> dict[str, str]:
        """What ``stage`` left, but for the account files and the other identd's removal."""
        found = session.changed(stage)
        print(
            f"{stage}:", *(f"  {path} ({kind})" for path, kind in sorted(found.items())), sep="\n"
        )
        others = other_identd(session, stage)
        return {path: kind for path, kind in found.items() if path not in ACCOUNTS | others.keys()}

    left("installed")  # printed: what the package put on the machine, for comparison
    # remove: the conffile, and the units' enablement (deb-systemd-helper's state), so a
    # reinstall keeps what the administrator chose.
    assert left("removed") == {
        "/etc/aioidentd.toml": "f",
        "/etc/systemd/system/sockets.target.wants/aioidentd.socket": "l",
        **{
            f"/var/lib/systemd/deb-systemd-helper-enabled/{state}": "f"
            for state in [
                "aioidentd.service.dsh-also",
                "aioidentd.socket.dsh-also",
                "sockets.target.wants/aioidentd.socket",
            ]
        },
    }
    # purge: nothing of the package's; the system user stays (files it owned may remain,
    # and its uid must not go to another account).
    assert left("purged") == {}
    assert session.text("user-after-purge.txt").startswith("aioidentd:")


def other_identd(session: Session, stage: str) -> dict[str, str]:
    """What removing oidentd (Conflicts: ident-server) changed, as dpkg lists its files."""
    if "install ok installed" not in session.text("oidentd-before.txt"):
        return {}
    proc = subprocess.run(["dpkg", "-L", "oidentd"], capture_output=True, text=True, check=True)
    # As the overlays see them: /lib, /bin and /sbin are /usr's (merged /usr).
    listed = {re.sub(r"^/(lib|bin|sbin)/", r"/usr/\1/", path) for path in proc.stdout.split()}
    return {path: kind for path, kind in session.changed(stage).items() if path in listed}
