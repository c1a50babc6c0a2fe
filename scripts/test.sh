#!/usr/bin/env bash
# Set up, then run the whole test suite (CPU only; GPU tests skip themselves).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=1
.venv/bin/python -m pytest "$@"
