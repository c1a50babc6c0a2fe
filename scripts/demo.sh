#!/usr/bin/env bash
# Set up, then run the main job on the bundled demo faces (ORL, 40 people) on this machine's CPUs:
# prep -> inspect -> train siamese -> cluster (k=4) -> train gan, training on 2 ranks (torchrun, gloo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=1
CONFIG=${CONFIG:-configs/demo.yaml}
RANKS=${RANKS:-2}
BIN=.venv/bin
start=$(date +%s)
$BIN/kssgan prep --config "$CONFIG" --no-progress
$BIN/kssgan inspect runs/demo/data
$BIN/torchrun --standalone --nproc_per_node "$RANKS" $BIN/kssgan train siamese --config "$CONFIG"
$BIN/kssgan cluster --config "$CONFIG"
$BIN/torchrun --standalone --nproc_per_node "$RANKS" $BIN/kssgan train gan --config "$CONFIG"
echo "demo done in $(( $(date +%s) - start )) s"
echo "data: runs/demo/data   clusters: runs/demo/clusters.json"
echo "TensorBoard: $BIN/tensorboard --logdir runs/demo   (siamese/tensorboard, gan/tensorboard)"
