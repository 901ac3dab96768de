#!/usr/bin/env bash
# Prints the path of a Python interpreter of version $1 (e.g. 3.12), or fails saying what
# was looked at. Looks on PATH (Debian's python3.12, a working pyenv shim), then in pyenv's
# versions directory (pyenv's shims only answer for the selected versions).
set -euo pipefail
want=$1
if command -v "python$want" >/dev/null 2>&1 && "python$want" -c '' >/dev/null 2>&1; then
  command -v "python$want"
  exit 0
fi
root=${PYENV_ROOT:-$HOME/.pyenv}
for dir in $(ls -d "$root/versions/$want".* 2>/dev/null | sort -V -r); do
  if [ -x "$dir/bin/python$want" ] && "$dir/bin/python$want" -c '' >/dev/null 2>&1; then
    echo "$dir/bin/python$want"
    exit 0
  fi
done
echo "find-python: no Python $want (not on PATH, not in $root/versions)" >&2
exit 1
