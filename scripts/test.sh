#!/usr/bin/env bash
# The README's test command: install what is missing, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pytest "$@"
