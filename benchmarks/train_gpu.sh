#!/usr/bin/env bash
# GPU training benchmark: fp32 vs fp16 vs bf16 at 256 px, 1 rank, peak GPU memory.
# Runs only where a CUDA GPU exists; writes benchmarks/results/train_gpu.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "no CUDA GPU here: nothing to measure (the CPU benchmark is benchmarks/train.py)"; exit 0
fi
"$PY" benchmarks/train.py --resolutions 256 --precisions fp32 fp16 bf16 --ranks 1 --backends accelerate deepspeed \
  --batch-size 16 --steps 40 --warmup 10 --out benchmarks/results/train_gpu.json
