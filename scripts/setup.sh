#!/usr/bin/env bash
# Creates .venv and installs latentdefence with its test tools. Idempotent: a second run with an
# unchanged pyproject.toml only checks a stamp and returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# Tests that need a real program from Debian: the review console's browser test (chromium, chromium-driver), the
# alerting rules' test (promtool, in prometheus) and the shared audit store's (a PostgreSQL server the tests start).
# Installed only when asked (LATENTDEFENCE_SYSTEM_DEPS=1, as `make system-deps` and CI do); without them those
# tests skip, saying why.
if [ "${LATENTDEFENCE_SYSTEM_DEPS:-0}" = 1 ] && ! { command -v chromedriver && command -v promtool \
    && ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends chromium chromium-driver prometheus \
    postgresql
fi
stamp="$VENV/.latentdefence-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
# The local CPU wheel first: anything that asks for torch afterwards finds it satisfied.
pip install torch==2.13.0
pip install -e ".[test]"
# Test-time oracle only (never imported by the library). Its declared deps (torchvision, an old
# requests) are not needed to run it, so they are skipped.
pip install --no-deps torchattacks==3.5.1
echo "$want" > "$stamp"
