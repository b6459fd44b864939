# Sourced by scripts/serve and scripts/test: find Python 3.11+, make .venv, install the project into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "agent-gateway needs Python 3.11 or newer on PATH" >&2
  return 1
}

ensure_venv() {  # $1: what to install, e.g. "." or ".[dev]"
  if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
  fi
  # Reinstall only when pyproject.toml changed since the last install of the same extras.
  local stamp=".venv/.installed-${1//[^a-z]/}"
  local want
  want="$(cksum pyproject.toml)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing agent-gateway$([ "$1" = "." ] || echo " ${1#.}") into .venv ..." >&2
    if ! .venv/bin/python -m pip install --disable-pip-version-check -e "$1" >.venv/pip.log 2>&1; then
      cat .venv/pip.log >&2
      echo "pip install failed (log above, also in .venv/pip.log)" >&2
      return 1
    fi
    echo "$want" >"$stamp"
  fi
}
