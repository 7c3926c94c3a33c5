#!/usr/bin/env bash
# Regenerate requirements/export.lock (the embedder-export environment; see scripts/setup.sh).
# torch is NOT in the lock: setup installs torch==2.13.0 (the CPU build from the local wheel
# folder) itself. The CPU build's metadata is used for resolution so that no CUDA package
# (nvidia-*, cuda-*, triton) enters the lock through torch's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0+cpu" >"$constraints"
uv pip compile --quiet --python-version 3.11 --generate-hashes \
    --find-links "${APPLIANCE_TORCH_WHEELS:-/opt/wheels}" -c "$constraints" \
    --no-emit-package torch --no-emit-find-links \
    --custom-compile-command "bash scripts/lock-export.sh" \
    requirements/export.in -o requirements/export.lock
if grep -E -i '^(nvidia|cuda|triton|torch)[-=]' requirements/export.lock; then
    echo "lock-export: a CUDA/torch package entered the lock" >&2
    exit 1
fi
echo "wrote requirements/export.lock"
