"""FaceShards: a torch Dataset over the shards of one split."""

from __future__ import annotations

import bisect
import copy
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from kssgan_hpc.data.shards import ShardError, load_manifest, manifest_path, open_shard, split_shards

LABELS = ("identity", "expression", "pose", "gaze", "attributes")
"""Integer labels of every image (index -1 = unknown)."""
GEOMETRY = ("landmarks",)
"""Float per-image geometry: the 5 aligned landmarks [5, 2] (NaN unknown), the generator's declared cue."""


class FaceBatch(list):
    """A batch read by FaceShards.__getitems__: a list of `(image, labels)` samples (what any collate_fn
    expects) that also carries the batch already collated in `.images` / `.labels`."""

    def __init__(self, images: torch.Tensor, labels: dict[str, np.ndarray]) -> None:
        # Per-sample views come from the numpy rows (cheap); the collated labels share their memory.
        per_sample = [{name: value[i] for name, value in labels.items()} for i in range(len(images))]
        super().__init__(zip(images, per_sample))
        self.images = images
        self.labels = {name: torch.from_numpy(value) for name, value in labels.items()}


def collate_faces(batch: Any) -> Any:
    """DataLoader collate_fn: takes FaceShards' pre-collated batch as is (no copy), collates anything else."""
    if isinstance(batch, FaceBatch):
        return batch.images, batch.labels
    return default_collate(batch)


class FaceShards(Dataset):
    """Aligned faces of one split: `(image uint8 [C, H, W], labels)`.

    Labels are read once at construction (they are small); images are read on demand
    through one h5py handle per process, opened lazily, so the Dataset pickles into
    DataLoader workers and every worker reads independently. Batched loading is fastest with
    `DataLoader(..., collate_fn=collate_faces)` (see `__getitems__`).
    """

    def __init__(self, manifest: str | Path, split: str) -> None:
        path = manifest_path(manifest)
        self.manifest = load_manifest(path)
        self.split = split
        shards = split_shards(self.manifest, split)
        self.paths = [str(path.parent / s["name"]) for s in shards]
        self.offsets = np.cumsum([0] + [s["images"] for s in shards]).tolist()
        self.resolution = int(self.manifest["resolution"])
        self.channels = int(self.manifest["channels"])
        collected: dict[str, list[np.ndarray]] = {name: [] for name in LABELS + GEOMETRY}
        self.raw_chunks: list[bool] = []
        for shard_path, shard in zip(self.paths, shards):
            with open_shard(shard_path) as f:
                images = f["images"]
                if images.shape[0] != shard["images"]:
                    raise ShardError(
                        f"{shard_path}: holds {images.shape[0]} images, manifest says {shard['images']}"
                    )
                if images.shape[1:] != (self.resolution, self.resolution, self.channels):
                    raise ShardError(f"{shard_path}: image shape {images.shape[1:]} differs from the manifest")
                self.raw_chunks.append(images.compression is None and images.chunks == (1, *images.shape[1:]))
                for name in LABELS:
                    collected[name].append(f[name][:])
                # A release carries no landmarks (they point back to a source): unknown there.
                collected["landmarks"].append(f["landmarks"][:] if "landmarks" in f else
                                              np.full((images.shape[0], 5, 2), np.nan, np.float32))
        num_attributes = len(self.manifest["vocab"].get("attributes", []))
        self.labels = {
            name: np.concatenate(parts) if parts else np.zeros((0, num_attributes) if name == "attributes" else 0)
            for name, parts in collected.items()
        }
        if not collected["landmarks"]:
            self.labels["landmarks"] = np.zeros((0, 5, 2), np.float32)
        self._files: dict[int, h5py.File] = {}
        self._pid = os.getpid()
        self.rows: np.ndarray | None = None
        """When a subset: the rows of the split it holds (subset())."""

    def subset(self, rows: np.ndarray) -> FaceShards:
        """The same split restricted to `rows` (e.g. without the people who withdrew), indexed 0..len(rows)-1."""
        view = copy.copy(self)
        view._files = {}
        view.rows = np.asarray(rows, np.int64) if self.rows is None else self.rows[np.asarray(rows, np.int64)]
        view.labels = {name: value[np.asarray(rows, np.int64)] for name, value in self.labels.items()}
        return view

    def __len__(self) -> int:
        return self.offsets[-1] if self.rows is None else len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images in split '{self.split}'")
        stored = index if self.rows is None else int(self.rows[index])
        shard = bisect.bisect_right(self.offsets, stored) - 1
        image = self._read_image(shard, stored - self.offsets[shard])
        labels = {name: int(self.labels[name][index]) for name in LABELS if name != "attributes"}
        labels["attributes"] = torch.from_numpy(self.labels["attributes"][index].astype(np.int64))
        labels["landmarks"] = torch.from_numpy(self.labels["landmarks"][index].astype(np.float32))
        labels["index"] = index
        return torch.from_numpy(image).permute(2, 0, 1), labels

    def __getitems__(self, indices: list[int]) -> FaceBatch:
        """A whole batch at once (DataLoader calls this when batching): images are read straight into
        one shared-memory tensor, so neither collation nor the hand-over to the main process copies them."""
        count = len(indices)
        images = torch.empty((count, self.resolution, self.resolution, self.channels), dtype=torch.uint8)
        if get_worker_info() is not None:
            images.share_memory_()
        buffer = images.numpy()
        index = np.asarray(indices, np.int64)
        index[index < 0] += len(self)
        if count and not (0 <= index.min() and index.max() < len(self)):
            raise IndexError(f"batch indices out of range for {len(self)} images in split '{self.split}'")
        stored = index if self.rows is None else self.rows[index]
        for row, i in enumerate(stored.tolist()):
            shard = bisect.bisect_right(self.offsets, i) - 1
            self._read_image(shard, i - self.offsets[shard], out=buffer[row])
        labels = {name: self.labels[name][index].astype(np.int64) for name in LABELS}
        labels["landmarks"] = self.labels["landmarks"][index].astype(np.float32)
        labels["index"] = index
        return FaceBatch(images.permute(0, 3, 1, 2), labels)

    def _read_image(self, shard: int, local: int, out: np.ndarray | None = None) -> np.ndarray:
        images = self._handle(shard)["images"]
        if out is None:
            out = np.empty(images.shape[1:], np.uint8)
        if self.raw_chunks[shard]:
            # One image is one uncompressed chunk: read its bytes directly, skipping h5py's selection machinery.
            images.id.read_direct_chunk((local, 0, 0, 0), out=out.reshape(-1))
        else:
            images.read_direct(out, np.s_[local])
        return out

    def _handle(self, shard: int) -> h5py.File:
        if self._pid != os.getpid():  # forked into a worker: never share the parent's handles
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            # No chunk cache: one chunk is one image, read once per epoch.
            self._files[shard] = h5py.File(self.paths[shard], "r", rdcc_nbytes=0)
        return self._files[shard]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def __del__(self) -> None:
        for f in getattr(self, "_files", {}).values():
            try:
                f.close()
            except Exception:  # interpreter shutdown: h5py may already be gone
                pass


def read_images(data: FaceShards, indices: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] numpy images of a split, in the order of `indices` (for measures and attackers)."""
    return data.__getitems__(np.asarray(indices).tolist()).images.permute(0, 2, 3, 1).numpy().copy()
