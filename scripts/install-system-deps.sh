#!/usr/bin/env bash
# Installs the real peer programs the test suite talks to (Debian packages), and the
# daemon's system user.
# Idempotent: installs only what is missing. Needs root (CI runs as root); without root
# it says what is missing and leaves the suite to skip those tests with a reason.
set -euo pipefail

PACKAGES=(
  oidentd                             # the daemon we benchmark and interoperate with
  libpoe-component-client-ident-perl  # the seed's sister client (Perl)
  libnet-ident-perl                   # Net::Ident (Perl)
  ngircd                              # IRC servers doing real ident lookups
  inspircd
  iproute2                            # ip netns / unshare for port 113 in a namespace
  util-linux
  nftables                            # the README's port 113 redirect, and NAT, in namespaces
  znc                                 # its identfile module writes ~/.oidentd.conf for us to read
  gcc                                 # builds the benchmark load generator (benchmarks/loadgen.c)
  groff-base                          # renders the man pages (tests/test_manpages.py)
  mandoc                              # mandoc -Tlint checks them (tests/test_manpages.py)
  systemd                             # systemd-analyze verify / security for examples/systemd (tests/test_install.py)
  faketime                            # a daemon started next month: pseudonym rotation (tests/interop/test_irc_pseudonyms.py)
  # make deb (debian/) and tests/test_deb.py: debian/control's Build-Depends, lintian, git
  build-essential
  debhelper
  dh-python
  pybuild-plugin-pyproject
  python3-all
  python3-setuptools
  dpkg-dev
  lintian
  git
)

# The daemon's own system user (its default [server] user; the README's install steps
# create it the same way). The daemon tests run as root and drop to it.
if ! getent passwd aioidentd >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "install-system-deps: creating the system user aioidentd" >&2
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin aioidentd
  else
    echo "install-system-deps: not root; the system user aioidentd is missing" >&2
  fi
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: not root; missing Debian packages: ${missing[*]}" >&2
  echo "install-system-deps: tests that need them will be skipped" >&2
  exit 0
fi
echo "install-system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
# The packaged daemons must not hold ports or run in the background on the test machine.
for svc in oidentd ngircd inspircd znc; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
  if [ -x "/etc/init.d/$svc" ]; then "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
done
