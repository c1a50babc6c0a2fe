"""Loader throughput: the same aligned faces as HDF5 shards, as a PNG folder, and as an in-memory array.

Each goes through a DataLoader with the same workers and batch size; images/s is measured in
steady state (from the first batch on, persistent workers, several epochs), page cache warm.

    python benchmarks/loader.py --resolutions 256 1024 --workers 2
Prints a table and writes benchmarks/results/loader.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset, get_worker_info  # noqa: E402

from data_prep.prep import run_prep  # noqa: E402
from report import write_report  # noqa: E402
from kssgan_hpc.config import PrepConfig, load_config  # noqa: E402
from kssgan_hpc.data.dataset import FaceBatch, FaceShards, collate_faces  # noqa: E402


class PngFolder(Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = np.array(Image.open(self.paths[i]).convert("RGB"))
        return torch.from_numpy(image).permute(2, 0, 1), {"index": i}


class InMemory(Dataset):
    """The raw bytes in RAM, batched the same way as FaceShards: one copy into a shared-memory batch."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.images[i].copy()).permute(2, 0, 1), i

    def __getitems__(self, indices: list[int]) -> FaceBatch:
        batch = torch.empty((len(indices), *self.images.shape[1:]), dtype=torch.uint8)
        if get_worker_info() is not None:
            batch.share_memory_()
        np.take(self.images, indices, axis=0, out=batch.numpy())
        return FaceBatch(batch.permute(0, 3, 1, 2), {"index": np.asarray(indices)})


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def measure(dataset: Dataset, workers: int, batch_size: int, min_seconds: float) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate_faces,
                        persistent_workers=workers > 0, worker_init_fn=_worker_init, drop_last=True)
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not steady state
    images, start = 0, time.perf_counter()
    while True:
        for batch, _ in iterator:
            images += batch.shape[0]
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return images / elapsed
        iterator = iter(loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="minimum steady-state time per loader")
    parser.add_argument("--out", default="benchmarks/results/loader.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for resolution in args.resolutions:
            data_dir = Path(tmp) / f"shards-{resolution}"
            cfg: PrepConfig = load_config(PrepConfig, overrides=[
                "source=demo", f"out={data_dir}", f"resolution={resolution}", "workers=2",
                "split.train=1.0", "split.val=0.0", "split.test=0.0",
            ])
            run_prep(cfg, progress=False)
            shards = FaceShards(data_dir, "train")
            pngs = []
            images = np.stack([shards[i][0].permute(1, 2, 0).numpy() for i in range(len(shards))])
            for i, image in enumerate(images):
                path = Path(tmp) / f"png-{resolution}" / f"{i:05d}.png"
                path.parent.mkdir(exist_ok=True)
                Image.fromarray(image).save(path)
                pngs.append(path)
            row = {"resolution": resolution, "images": len(shards), "workers": args.workers,
                   "batch_size": args.batch_size}
            for name, dataset in (("hdf5_shards", shards), ("png_folder", PngFolder(pngs)),
                                  ("in_memory", InMemory(images))):
                row[name] = round(measure(dataset, args.workers, args.batch_size, args.seconds), 1)
            row["shards_vs_png"] = round(row["hdf5_shards"] / row["png_folder"], 2)
            row["shards_vs_memory"] = round(row["hdf5_shards"] / row["in_memory"], 3)
            results.append(row)
            print(f"{resolution:5d}px  shards {row['hdf5_shards']:8.1f} img/s  png {row['png_folder']:7.1f} img/s  "
                  f"memory {row['in_memory']:8.1f} img/s  shards/png {row['shards_vs_png']:5.2f}x  "
                  f"shards/memory {row['shards_vs_memory']:.0%}", flush=True)
    write_report(args.out, "loader", results=results)


if __name__ == "__main__":
    main()
