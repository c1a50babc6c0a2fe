#!/usr/bin/env bash
# Set up, then run the whole test suite (CPU only; GPU tests skip themselves).
# As root it also installs and starts a real single-node Slurm cluster for the Slurm tests
# (scripts/slurm_cluster.sh); elsewhere, or with KSSGAN_SLURM=0, those tests skip and say why.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
if [ "${KSSGAN_SLURM:-1}" = 1 ] && [ "$(id -u)" = 0 ]; then
  bash scripts/slurm_cluster.sh start
else
  echo "Slurm cluster not started (needs root; KSSGAN_SLURM=${KSSGAN_SLURM:-1}): Slurm tests will skip"
fi
export OMP_NUM_THREADS=1
.venv/bin/python -m pytest "$@"
