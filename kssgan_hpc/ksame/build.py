"""`kssgan cluster`: frozen Siamese -> one embedding per identity -> k-Same clusters -> clusters.json.

Beside clusters.json: `<name>-pixel.safetensors`, the k-Same-Pixel average face of every cluster
(k-anonymous by construction, so it may be shown in logs).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kssgan_hpc.config.train import ClusterConfig, SiameseConfig
from kssgan_hpc.data.dataset import FaceShards, collate_faces
from kssgan_hpc.data.shards import atomic_write_json, load_manifest
from kssgan_hpc.ksame.clusters import average_faces, check_clusters, cluster_identities, surrogate_targets
from kssgan_hpc.models import SiameseEncoder
from kssgan_hpc.train.run import checkpoint_with_config, to_unit

log = logging.getLogger(__name__)


def load_siamese(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[SiameseEncoder, SiameseConfig]:
    """The newest checkpoint of a Siamese run, frozen, in eval mode (weights from safetensors)."""
    path, cfg = checkpoint_with_config(run_dir, SiameseConfig, "siamese")
    model = SiameseEncoder(cfg.model)
    model.load_state_dict(load_file(path / "siamese.safetensors"))
    model.to(device).eval().requires_grad_(False)
    return model, cfg


@torch.no_grad()
def identity_statistics(model: torch.nn.Module, data: FaceShards, batch_size: int,
                        device: torch.device | str = "cpu", faces: bool = True,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per identity (sorted ids): normalised mean embedding and, with `faces`, the mean face (float,
    [C, H, W] in 0..255; identities x pixels of memory, so off for large sets)."""
    ids = np.unique(data.labels["identity"])
    position = {int(i): n for n, i in enumerate(ids)}
    emb_sum = np.zeros((len(ids), 0))
    face_sum = np.zeros((len(ids), data.channels, data.resolution, data.resolution)) if faces else None
    counts = np.zeros(len(ids))
    for start in range(0, len(data), batch_size):
        images, labels = collate_faces(data.__getitems__(list(range(start, min(start + batch_size, len(data))))))
        emb = model(to_unit(images).to(device)).float().cpu().numpy()
        if emb_sum.shape[1] == 0:
            emb_sum = np.zeros((len(ids), emb.shape[1]))
        rows = np.array([position[int(i)] for i in labels["identity"]])
        np.add.at(emb_sum, rows, emb)
        if faces:
            np.add.at(face_sum, rows, images.numpy().astype(np.float64))
        np.add.at(counts, rows, 1)
    emb_mean = emb_sum / counts[:, None]
    emb_mean /= np.maximum(np.linalg.norm(emb_mean, axis=1, keepdims=True), 1e-12)
    return ids, emb_mean, face_sum / counts[:, None, None, None] if faces else None


def cluster_dataset(model: torch.nn.Module, data: FaceShards, k: int, *, method: str = "mdav", seed: int = 0,
                    batch_size: int = 64, device: torch.device | str = "cpu", pixel: bool = True,
                    ) -> tuple[np.ndarray, list[list[int]], np.ndarray, np.ndarray | None]:
    """k-Same over the identities of `data`: (identity ids, clusters as rows of ids, surrogate
    embedding per cluster, with `pixel` the k-Same-Pixel face per cluster)."""
    ids, embeddings, faces = identity_statistics(model, data, batch_size, device, faces=pixel)
    return (ids, *cluster_statistics(embeddings, faces, k, method=method, seed=seed))


def cluster_statistics(embeddings: np.ndarray, faces: np.ndarray | None, k: int, *, method: str = "mdav",
                       seed: int = 0) -> tuple[list[list[int]], np.ndarray, np.ndarray | None]:
    """k-Same from identity_statistics' output (one pass over the data serves several k): clusters,
    surrogate per cluster, k-Same-Pixel face per cluster when `faces` is given."""
    groups = cluster_identities(embeddings, k, method=method, seed=seed)
    return groups, surrogate_targets(embeddings, groups), None if faces is None else average_faces(faces, groups)


def build_clusters(cfg: ClusterConfig) -> dict[str, Any]:
    """Cluster the identities of `cfg.split`; write clusters.json and the k-Same-Pixel faces."""
    model, siamese_cfg = load_siamese(cfg.siamese)
    data = FaceShards(Path(cfg.data), cfg.split)
    if data.resolution != siamese_cfg.model.resolution:
        raise ValueError(f"{cfg.data} is {data.resolution}px, the Siamese in {cfg.siamese} expects "
                         f"{siamese_cfg.model.resolution}px")
    ids, groups, targets, pixel = cluster_dataset(model, data, cfg.k, method=cfg.method, seed=cfg.seed,
                                                  batch_size=cfg.batch_size)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pixel_path = out.with_name(out.stem + "-pixel.safetensors")
    save_file({"faces": torch.from_numpy(pixel.round().clip(0, 255).astype(np.uint8))}, pixel_path)
    manifest = load_manifest(cfg.data)
    result = {
        "k": cfg.k,
        "method": cfg.method,
        "seed": cfg.seed,
        "split": cfg.split,
        "identities": len(ids),
        "dataset_shards": [s["sha256"] for s in manifest["shards"] if s["split"] == cfg.split],
        "pixel_faces": pixel_path.name,
        "clusters": [
            {"cluster": c, "identities": [int(ids[i]) for i in group], "surrogate": targets[c].tolist()}
            for c, group in enumerate(groups)
        ],
    }
    atomic_write_json(out, result)
    sizes = [len(g) for g in groups]
    log.info("%d identities -> %d clusters (sizes %d..%d, k=%d)", len(ids), len(groups), min(sizes), max(sizes), cfg.k)
    return result


def load_clusters(path: str | Path) -> dict[str, Any]:
    """Read clusters.json and re-check the guarantee (a hand-edited file must not slip through)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no clusters file (run `kssgan cluster` first)") from None
    members = [c["identities"] for c in data["clusters"]]
    ids = sorted(i for group in members for i in group)
    position = {identity: n for n, identity in enumerate(ids)}
    try:
        check_clusters([[position[i] for i in group] for group in members], len(set(ids)), data["k"])
        if len(ids) != len(set(ids)):
            raise ValueError("an identity appears in two clusters")
    except ValueError as err:
        raise ValueError(f"{path}: breaks k-anonymity: {err}") from None
    return data
