"""GAN training throughput (G+D steps): fp32 vs bf16, 1 vs 2 ranks, Accelerate vs DeepSpeed, at 64 and 128 px.

Every combination is a real `kssgan train gan` run under torchrun (gloo on CPU, nccl on GPU) on
the demo faces; steps/s and images/s are read from its metrics.jsonl after `--warmup` steps,
peak memory is the largest per-rank peak RSS (CPU) or peak allocated GPU memory.
Each rank uses one thread (OMP_NUM_THREADS=1) and loads in its own process (workers=0: the
shards are read far faster than a step takes), so 2 ranks use 2 cores where 1 rank uses one.

    python benchmarks/train.py                       # CPU: everything, side by side
    python benchmarks/train.py --resolutions 256 --precisions fp32 fp16 bf16 --ranks 1 \
        --out benchmarks/results/train_gpu.json
Prints a table and writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from data_prep.prep import run_prep
from report import write_report
from kssgan_hpc.config import PrepConfig, load_config

WIDTHS = ["model.generator_width=16", "model.discriminator_width=16", "model.max_width=128"]


def kssgan(args: list[str], ranks: int, env: dict) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           "-m", "kssgan_hpc.cli.main", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=["accelerate", "deepspeed"])
    parser.add_argument("--batch-size", type=int, default=8, help="images per rank per step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/train.json")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env["TORCH_EXTENSIONS_DIR"] = f"{tmp}/torch_extensions"
        for resolution in args.resolutions:
            data = Path(tmp) / f"data-{resolution}"
            run_prep(load_config(PrepConfig, overrides=["source=demo", f"out={data}", f"resolution={resolution}",
                                                        "workers=2"]), progress=False)
            siamese, clusters = Path(tmp) / f"siamese-{resolution}", Path(tmp) / f"clusters-{resolution}.json"
            model = [f"model.resolution={resolution}"]
            kssgan(["train", "siamese", f"data={data}", f"out={siamese}", "steps=2", "workers=0", *model], 1, env)
            kssgan(["cluster", f"data={data}", f"siamese={siamese}", f"out={clusters}", "k=4"], 1, env)
            for precision, ranks, backend in itertools.product(args.precisions, args.ranks, args.backends):
                out = Path(tmp) / f"gan-{resolution}-{precision}-{ranks}-{backend}"
                kssgan(["train", "gan", f"data={data}", f"siamese={siamese}", f"clusters={clusters}", f"out={out}",
                        f"steps={args.steps}", f"batch_size={args.batch_size}", "log_every=1", "image_every=100000",
                        "checkpoint_every=100000", "workers=0", f"engine.backend={backend}",
                        f"engine.precision={precision}", *model, *WIDTHS], ranks, env)
                metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                steady = [m for m in metrics if "speed/images_per_s_total" in m and m["step"] > args.warmup]
                images_per_s = sum(m["speed/images_per_s_total"] for m in steady) / len(steady)
                row = {"resolution": resolution, "precision": precision, "ranks": ranks, "backend": backend,
                       "images_per_s": round(images_per_s, 2),
                       "steps_per_s": round(images_per_s / (args.batch_size * ranks), 3),
                       "peak_memory_mb": round(max(m.get("memory/peak_mb", 0) for m in metrics), 1)}
                rows.append(row)
                print(f"{resolution:4d}px {precision:5s} {ranks} rank(s) {backend:10s} "
                      f"{row['steps_per_s']:7.3f} steps/s {row['images_per_s']:8.2f} img/s  "
                      f"peak {row['peak_memory_mb']:8.1f} MB", flush=True)

    def find(**key):
        return next(r for r in rows if all(r[k] == v for k, v in key.items()))

    ratios = []
    for resolution, backend in itertools.product(args.resolutions, args.backends):
        entry = {"resolution": resolution, "backend": backend}
        if {"fp32", "bf16"} <= set(args.precisions):
            rank = min(args.ranks)
            entry["bf16_vs_fp32"] = round(find(resolution=resolution, backend=backend, ranks=rank, precision="bf16")
                                          ["images_per_s"] / find(resolution=resolution, backend=backend, ranks=rank,
                                                                  precision="fp32")["images_per_s"], 2)
        if {1, 2} <= set(args.ranks):
            precision = args.precisions[0]
            entry["two_vs_one_rank"] = round(find(resolution=resolution, backend=backend, ranks=2, precision=precision)
                                             ["images_per_s"] / find(resolution=resolution, backend=backend, ranks=1,
                                                                     precision=precision)["images_per_s"], 2)
        ratios.append(entry)
        print(f"{resolution}px {backend}: " + ", ".join(f"{k} {v}x" for k, v in entry.items() if "_vs_" in k))
    cpu_flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    write_report(args.out, "train", cpu_bf16="avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags,
                 gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                 batch_size_per_rank=args.batch_size, rows=rows, ratios=ratios)


if __name__ == "__main__":
    main()
