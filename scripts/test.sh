#!/usr/bin/env bash
# Set up (idempotent, seconds when nothing changed), then lint, type-check and test.
#
#   bash scripts/test.sh [pytest args...]      e.g. bash scripts/test.sh -k store -x
#
# ruff, mypy and pytest all run; the exit status is non-zero if any of them failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

# Debian packages the tests use (command -> package).
declare -A APT_PACKAGES=([tmux]=tmux [chromium]=chromium)
missing=()
for cmd in "${!APT_PACKAGES[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${APT_PACKAGES[$cmd]}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test: installing ${missing[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "test: missing ${missing[*]}; install with: sudo apt-get install ${missing[*]}" >&2
        echo "test: (tests that need them will be skipped or fail)" >&2
    fi
fi

status=0
run() {
    echo "test: $*"
    "$@" || status=1
}
run .venv/bin/ruff check appliance tests scripts
run .venv/bin/mypy
run .venv/bin/python -m pytest -q -rs -p no:cacheprovider "$@"
if [[ $status -ne 0 ]]; then
    echo "test: FAILED (see above)" >&2
fi
exit $status
