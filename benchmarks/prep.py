"""Prep throughput: demo faces decoded, detected (YuNet), aligned and packed, with 1 and 2 workers.

    python benchmarks/prep.py --resolution 256 --workers 1 2
Prints images/s per worker count and the speed-up, writes benchmarks/results/prep.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from data_prep.prep import run_prep
from report import write_report
from kssgan_hpc.config import load_config, PrepConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per worker count")
    parser.add_argument("--out", default="benchmarks/results/prep.json")
    args = parser.parse_args()
    rows = []
    for workers in args.workers:
        best = float("inf")
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = load_config(PrepConfig, overrides=[
                    "source=demo", f"out={tmp}/data", f"resolution={args.resolution}", f"workers={workers}",
                    "images_per_shard=100",
                ])
                start = time.perf_counter()
                manifest = run_prep(cfg, progress=False).manifest
                best = min(best, time.perf_counter() - start)
        rows.append({"workers": workers, "images": manifest["images"], "seconds": round(best, 3),
                     "images_per_s": round(manifest["images"] / best, 1)})
        print(f"workers {workers}: {rows[-1]['images_per_s']:7.1f} images/s "
              f"({manifest['images']} images in {best:.2f} s, plan + align + pack + manifest)", flush=True)
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / base, 2)
    print("speed-up: " + ", ".join(f"{r['workers']} workers {r['speedup']}x" for r in rows))
    write_report(args.out, "prep", resolution=args.resolution, results=rows)


if __name__ == "__main__":
    main()
