"""Anonymize throughput and peak memory at 64 and 256 px.

Per resolution: the demo faces prepped, a Siamese and a GAN of the demo widths trained for a couple
of steps (throughput does not depend on what the weights learned), then `kssgan anonymize` as its
own process on the test split (40 faces) and on the train split (320 faces): images per second
over the whole command (clustering included) and the process's peak RSS. Equal peaks for 40 and
320 faces are what "memory flat in dataset size" means. On a GPU machine the same runs use it.

    python benchmarks/anonymize.py                   # 64 and 256 px
Prints a table and writes benchmarks/results/anonymize.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import write_report

WIDTHS = ["model.siamese_width=16", "model.generator_width=16", "model.discriminator_width=16",
          "model.max_width=128"]


def kssgan(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "kssgan_hpc.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())})
    if proc.returncode != 0:
        raise RuntimeError(f"kssgan {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def measure(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `kssgan anonymize <args>` in a child process of its own."""
    code = ("import resource, subprocess, sys; "
            "rc = subprocess.call([sys.executable, '-m', 'kssgan_hpc.cli.main', 'anonymize', *sys.argv[1:]]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    tick = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())})
    seconds = time.perf_counter() - tick
    if proc.returncode != 0:
        raise RuntimeError(f"anonymize {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds, int(proc.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--out", default="benchmarks/results/anonymize.json")
    args = parser.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for resolution in args.resolutions:
            root = Path(tmp) / str(resolution)
            data, siamese, gan = root / "data", root / "siamese", root / "gan"
            kssgan("prep", "--source", "demo", "--resolution", str(resolution), "--out", str(data), "--no-progress")
            model = [f"model.resolution={resolution}", *WIDTHS, "workers=0"]
            kssgan("train", "siamese", f"data={data}", f"out={siamese}", "steps=2", "identities_per_batch=4", "images_per_identity=2", *model)
            kssgan("cluster", f"data={data}", f"siamese={siamese}", f"out={root / 'clusters.json'}", "k=4")
            kssgan("train", "gan", f"data={data}", f"siamese={siamese}", f"clusters={root / 'clusters.json'}",
                   f"out={gan}", "steps=1", "batch_size=4", *model)
            for split, images in (("test", 40), ("train", 320)):
                seconds, peak = measure(f"gan={gan}", f"data={data}", f"out={root / ('release-' + split)}",
                                        f"splits=[{split}]", "k=4", "batch_size=32", "--no-progress")
                rows.append({"resolution": resolution, "split": split, "images": images,
                             "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1),
                             "peak_rss_mb": round(peak, 1),
                             "device": "cuda" if torch.cuda.is_available() else "cpu"})
                print(json.dumps(rows[-1]), flush=True)
    print(f"{'px':>5} {'split':>6} {'images':>7} {'img/s':>8} {'peak MB':>8}")
    for r in rows:
        print(f"{r['resolution']:>5} {r['split']:>6} {r['images']:>7} {r['images_per_s']:>8} {r['peak_rss_mb']:>8}")
    write_report(args.out, "anonymize", rows=rows)


if __name__ == "__main__":
    main()
