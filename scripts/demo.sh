#!/usr/bin/env bash
# Set up if needed (seconds when already done), then run the demo: build a knowledge base
# from CPython's reference topics and answer the sample questions with citations.
#
#   bash scripts/demo.sh [appliance demo options...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --quiet
exec .venv/bin/appliance demo "$@"
