#!/usr/bin/env bash
# Set up, then run the main job on the bundled demo faces (ORL, 40 people): prep + inspect.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=1
OUT=${OUT:-runs/demo}
.venv/bin/kssgan prep --config configs/demo.yaml --out "$OUT/data" "$@"
.venv/bin/kssgan inspect "$OUT/data"
echo "demo data: $OUT/data (manifest.json, shards, contact_sheet.png)"
