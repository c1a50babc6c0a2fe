#!/usr/bin/env bash
# Set up, then run the main job on the bundled demo faces (ORL, 40 people) on this machine's CPUs:
# kssgan pipeline = prep -> train siamese -> cluster (k=4) -> train gan -> anonymize -> evaluate,
# training on 2 ranks (torchrun, gloo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=1
CONFIG=${CONFIG:-configs/demo.yaml}
RANKS=${RANKS:-2}
BIN=.venv/bin
$BIN/kssgan pipeline --config "$CONFIG" --ranks "$RANKS"
echo "data: runs/demo/data   clusters: runs/demo/clusters.json   release (what ships): runs/demo/release/release"
echo "report: runs/demo/report/report.json   contact sheet: runs/demo/report/contact_sheet.png"
echo "TensorBoard: $BIN/tensorboard --logdir runs/demo   (siamese/tensorboard, gan/tensorboard)"
