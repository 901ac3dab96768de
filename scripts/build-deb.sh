#!/usr/bin/env bash
# Builds the Debian package (debian/) from the files the project tracks, in a scratch
# copy so the tree keeps no build output, and puts the .deb in dist/ (or $1); prints its path.
# Needs the Build-Depends of debian/control (scripts/install-system-deps.sh installs them);
# no network.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Debian's tools and the system Python, never a virtual environment's or pyenv's.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

src=$work/aioidentd
mkdir "$src"
if [ "$(git -C "$root" rev-parse --show-toplevel 2>/dev/null)" = "$root" ]; then
  # What a clean checkout holds, as the working tree has it.
  git -C "$root" ls-files -z | tar -C "$root" --null -T - -cf - | tar -C "$src" -xf -
else
  # An unpacked source distribution: nothing but what it shipped.
  tar -C "$root" --exclude=./build --exclude=./dist --exclude='./.venv*' -cf - . | tar -C "$src" -xf -
fi
# The package's version is the project's (aioidentd.__version__) plus a Debian revision.
upstream=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$src/src/aioidentd/__init__.py")
debian=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)
if [ "${debian%-*}" != "$upstream" ]; then
  echo "build-deb: debian/changelog's top entry is $debian but aioidentd.__version__ is" \
    "$upstream: add an entry for $upstream-1 first" >&2
  exit 1
fi
(cd "$src" && dpkg-buildpackage --build=binary --unsigned-source --unsigned-changes) >&2
cp "$work"/*.deb "$out"/
ls "$work"/*.deb | sed "s|^$work|$out|"
