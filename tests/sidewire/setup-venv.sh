#!/usr/bin/env bash
# Creates tests/sidewire/.venv with sidewire 0.1.9 from PyPI, for the sidewire interop test and
# `keywire bench signal`. Idempotent. Needs python3 with venv and headers, and gcc (netifaces
# compiles): .ci/install-deps.sh installs those and then runs this script.
set -euo pipefail
cd "$(dirname "$0")"
venv=.venv
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sidewire, importlib.metadata as m; assert m.version("sidewire") == "0.1.9"' 2>/dev/null; then
  echo "setup-venv: sidewire 0.1.9 already in tests/sidewire/$venv"
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "sidewire==0.1.9"
"$venv/bin/python" -c 'import sidewire, importlib.metadata as m; print("setup-venv: sidewire", m.version("sidewire"), "in tests/sidewire/.venv")'
