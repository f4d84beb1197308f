#!/usr/bin/env bash
# Installs what keywire's tests need on a Debian/Ubuntu machine: the packages listed in
# .ci/apt-packages.txt, then a Python venv with sidewire 0.1.9 from PyPI for the sidewire interop
# test (tests/sidewire/setup-venv.sh). Idempotent; skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")"
mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' apt-packages.txt | grep -v '^$')
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
else
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The venv belongs to whoever runs the tests: under sudo, the invoking user.
if [ "$(id -u)" -eq 0 ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
  sudo -u "$SUDO_USER" -H ../tests/sidewire/setup-venv.sh
else
  ../tests/sidewire/setup-venv.sh
fi
