"""What checking a dataset before every stage costs: `verify=quick` (sizes + HDF5 structure) and
`verify=full` (also every shard's sha256), on the demo faces prepped at 256 px, then extrapolated
linearly to a 600 GB dataset (full CelebA at 1024 px).

    python benchmarks/verify.py --resolution 256 --threads 1 2 8
Prints a table and writes benchmarks/results/verify.json. The page cache is warm (the data was just
written), so full-verify figures are sha256 speed, the floor of what a cold parallel file system gives.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from data_prep.prep import run_prep
from report import write_report
from kssgan_hpc.config import PrepConfig, load_config
from kssgan_hpc.data.shards import load_manifest, verify_dataset

DATASET_GB = 600.0
SHARD_MB = 1000.0  # images_per_shard=1000 at 1024 px is ~3 GB; at 256 px ~200 MB: the plan uses ~1 GB shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "verify.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        run_prep(load_config(PrepConfig, overrides=["source=demo", f"out={data}", f"resolution={args.resolution}",
                                                     "images_per_shard=50", "workers=2"]), progress=False)
        manifest = load_manifest(data)
        size = sum(s["bytes"] for s in manifest["shards"])
        rows = []
        for mode in ("quick", "full"):
            for threads in args.threads:
                times = []
                for _ in range(args.repeats):
                    tick = time.perf_counter()
                    verify_dataset(data, mode, workers=threads)
                    times.append(time.perf_counter() - tick)
                best = min(times)
                shards = len(manifest["shards"])
                per_shard = best / shards
                mb_s = size / 2**20 / best
                # quick costs per shard (open + structure); full costs per byte.
                extrapolated = (DATASET_GB * 1024 / SHARD_MB * per_shard if mode == "quick"
                                else DATASET_GB * 1024 / mb_s)
                rows.append({"mode": mode, "threads": threads, "shards": shards, "mb": round(size / 2**20, 1),
                             "seconds": round(best, 4), "mb_per_s": round(mb_s, 1),
                             "seconds_per_shard": round(per_shard, 5),
                             "extrapolated_600gb_s": round(extrapolated, 1)})
    print(f"{'mode':6s} {'threads':>7s} {'shards':>6s} {'MB':>7s} {'s':>8s} {'MB/s':>8s} {'600 GB (derived)':>18s}")
    for r in rows:
        print(f"{r['mode']:6s} {r['threads']:7d} {r['shards']:6d} {r['mb']:7.1f} {r['seconds']:8.3f} "
              f"{r['mb_per_s']:8.1f} {r['extrapolated_600gb_s'] / 60:15.1f} min")
    write_report(args.out, "verify", resolution=args.resolution, dataset_gb=DATASET_GB, shard_mb=SHARD_MB,
                 rows=rows, note="full: linear in bytes at the measured MB/s; quick: per shard of ~1 GB; "
                                 "page cache warm (a cold file system adds its read time)")


if __name__ == "__main__":
    main()
