#!/usr/bin/env bash
# Create .venv (if missing) and install kssgan-hpc with its test tools. Sourced by demo.sh and test.sh.
# torch is pinned first: an unpinned torch pulls a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${KSSGAN_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install --quiet -e '.[test]'
