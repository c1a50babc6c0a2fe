"""`kssgan cluster`: frozen Siamese -> one embedding per identity -> k-Same clusters -> clusters.json.

Beside clusters.json: `<name>-faces.safetensors` with, per cluster, the k-Same-Pixel average face
and the k-Same-Aligned template (members moved onto the mean landmark frame, then averaged), both
k-anonymous by construction (so they may be shown in logs), and the mean frame itself.

`KSame` is k-Same over one population (the training people, or one released split): clusters,
surrogate embeddings, and the base faces the generator and the k-Same methods start from.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from kssgan_hpc.artefacts import cluster_faces_path, load_cluster_faces, load_clusters, load_siamese
from kssgan_hpc.config.train import ClusterConfig, DuplicateConfig
from kssgan_hpc.data.dataset import FaceShards, collate_faces
from kssgan_hpc.data.shards import atomic_write_json, verify_dataset
from kssgan_hpc.errors import InputError
from kssgan_hpc.folders import claim_file
from kssgan_hpc.ksame.aligned import mean_frame, render, to_frame
from kssgan_hpc.ksame.clusters import average_faces, cluster_identities, surrogate_targets
from kssgan_hpc.ksame.duplicates import Duplicates, find_duplicates, thumbnails
from kssgan_hpc.train.run import to_unit

log = logging.getLogger(__name__)


@dataclass
class IdentityStatistics:
    """Per identity of one population (rows in `ids` order)."""

    ids: np.ndarray
    """Sorted identity ids."""
    embeddings: np.ndarray
    """[n, d] normalised mean Siamese embedding."""
    faces: np.ndarray | None
    """[n, C, H, W] mean face, 0..255 (k-Same-Pixel's input)."""
    aligned: np.ndarray | None
    """[n, C, H, W] mean face after moving every image onto `frame` (k-Same-Aligned's input)."""
    frame: np.ndarray | None
    """[5, 2] the population's mean landmark frame."""
    landmarks: np.ndarray | None = None
    """[n, 5, 2] mean landmarks of each person (NaN where none are known)."""
    thumbnails: np.ndarray | None = None
    """[images, 256] every image's grey thumbnail (ksame/duplicates.py), in dataset order."""
    thumbnail_ids: np.ndarray | None = None
    """[images] the identity of each thumbnail."""


def identity_landmarks(data: FaceShards, ids: np.ndarray) -> np.ndarray:
    """Per identity (rows in `ids` order), the mean of its images' 5 landmarks: the geometry that is
    the person's, as opposed to the pose of one image. From the labels alone (no image is read)."""
    labels = data.labels
    out = np.full((len(ids), 5, 2), np.nan, np.float32)
    for row, identity in enumerate(ids):
        points = labels["landmarks"][labels["identity"] == identity]
        points = points[np.isfinite(points).all(axis=(1, 2))]
        if len(points):
            out[row] = points.mean(0)
    return out


@torch.no_grad()
def identity_statistics(model: torch.nn.Module, data: FaceShards, batch_size: int,
                        device: torch.device | str = "cpu", faces: bool = True) -> IdentityStatistics:
    """One pass over `data`: per identity, the mean embedding and, with `faces`, the plain and the
    landmark-aligned mean face (identities x pixels of memory)."""
    ids = np.unique(data.labels["identity"])
    position = {int(i): n for n, i in enumerate(ids)}
    frame = mean_frame(data.labels["landmarks"]) if faces else None
    emb_sum = np.zeros((len(ids), 0))
    shape = (len(ids), data.channels, data.resolution, data.resolution)
    face_sum, aligned_sum = (np.zeros(shape), np.zeros(shape)) if faces else (None, None)
    counts = np.zeros(len(ids))
    thumbs: list[np.ndarray] = []
    for start in range(0, len(data), batch_size):
        images, labels = collate_faces(data.__getitems__(list(range(start, min(start + batch_size, len(data))))))
        emb = model(to_unit(images).to(device)).float().cpu().numpy()
        if emb_sum.shape[1] == 0:
            emb_sum = np.zeros((len(ids), emb.shape[1]))
        rows = np.array([position[int(i)] for i in labels["identity"]])
        np.add.at(emb_sum, rows, emb)
        if faces:
            np.add.at(face_sum, rows, images.numpy().astype(np.float64))
            moved = to_frame(images.float(), labels["landmarks"].numpy(), frame)
            np.add.at(aligned_sum, rows, moved.numpy().astype(np.float64))
        np.add.at(counts, rows, 1)
        thumbs.append(thumbnails(images))
    emb_mean = emb_sum / counts[:, None]
    emb_mean /= np.maximum(np.linalg.norm(emb_mean, axis=1, keepdims=True), 1e-12)
    per = counts[:, None, None, None]
    return IdentityStatistics(ids, emb_mean, face_sum / per if faces else None,
                              aligned_sum / per if faces else None, frame, identity_landmarks(data, ids),
                              np.concatenate(thumbs) if thumbs else np.zeros((0, 256), np.float32),
                              np.asarray(data.labels["identity"]))


@dataclass
class KSame:
    """k-Same over one population: every identity in one cluster of >= k identities."""

    k: int
    ids: np.ndarray
    groups: list[list[int]]
    """Clusters as rows of `ids`."""
    surrogates: np.ndarray
    """[clusters, d] the Siamese surrogate embedding of every cluster."""
    pixel: np.ndarray | None = None
    """[clusters, C, H, W] uint8 k-Same-Pixel faces."""
    aligned: np.ndarray | None = None
    """[clusters, C, H, W] uint8 k-Same-Aligned templates in `frame`."""
    frame: np.ndarray | None = None
    identity_landmarks: np.ndarray | None = None
    """[n, 5, 2] each person's mean landmarks (identity_landmarks); private, used to take identity
    geometry out of the landmark cue."""
    duplicates: Duplicates | None = None
    """Identities found to be one person, and merged (each cluster then counts people)."""

    def __post_init__(self) -> None:
        self._cluster = {int(self.ids[i]): c for c, group in enumerate(self.groups) for i in group}
        self._row = {int(identity): row for row, identity in enumerate(self.ids)}
        self.cluster_landmarks = None if self.identity_landmarks is None else np.stack(
            [np.nanmean(self.identity_landmarks[group], axis=0) for group in self.groups]).astype(np.float32)
        """[clusters, 5, 2] the mean geometry of each cluster's people (each person weighs the same)."""

    def pose_landmarks(self, identities: np.ndarray | torch.Tensor, landmarks: np.ndarray | torch.Tensor) -> np.ndarray:
        """The landmark cue with the person taken out: the image's offset from its person's mean
        landmarks (pose, expression) carried onto its cluster's mean landmarks. The raw landmarks
        identify people (the parrot attack re-identified k-Same-Aligned posed on them at 0.51 for
        k = 4, 32 ORL people at 32 px); what is left of a person's geometry is the cluster's, shared
        by >= k."""
        if self.identity_landmarks is None or self.cluster_landmarks is None:
            raise ValueError("this k-Same population has no landmark statistics")
        landmarks = np.asarray(landmarks, np.float32)
        rows = np.array([self._row[int(i)] for i in np.asarray(identities)], np.int64)
        return self.cluster_landmarks[self.clusters_of(identities)] + (landmarks - self.identity_landmarks[rows])

    def clusters_of(self, identities: np.ndarray | torch.Tensor) -> np.ndarray:
        """Cluster index of each identity; an identity outside the population is an error."""
        try:
            return np.array([self._cluster[int(i)] for i in np.asarray(identities)], np.int64)
        except KeyError as err:
            raise ValueError(f"identity {err} is in no k-Same cluster of this population") from None

    def base_faces(self, identities: np.ndarray | torch.Tensor, landmarks: np.ndarray | torch.Tensor,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """k-Same-Aligned faces, float [N, C, H, W] in [-1, 1]: each identity's cluster template posed
        on the given (pose_landmarks) landmarks. Only the cluster and the landmarks go in, never a
        source image."""
        if self.aligned is None or self.frame is None:
            raise ValueError("this k-Same population has no aligned templates")
        templates = self._templates_on(device)[torch.from_numpy(self.clusters_of(identities)).to(device)]
        return to_unit(render(templates, self.frame, torch.as_tensor(landmarks, device=device)))

    def _templates_on(self, device: torch.device | str) -> torch.Tensor:
        cached = getattr(self, "_device_templates", None)
        if cached is None or cached.device != torch.device(device):
            cached = torch.from_numpy(self.aligned).to(device).float()
            self._device_templates = cached
        return cached

    def ids_of(self, cluster: int) -> list[int]:
        return [int(self.ids[i]) for i in self.groups[cluster]]


def ksame(stats: IdentityStatistics, k: int, *, method: str = "mdav", seed: int = 0,
          duplicates: DuplicateConfig | None = None) -> KSame:
    """k-Same over a population from identity_statistics' output (one pass serves several k). Identities
    found to be one person (ksame/duplicates.py) are clustered as one: every cluster holds >= k people."""
    bad = stats.ids[~np.isfinite(stats.embeddings).all(axis=1)]
    if len(bad):
        raise ValueError(f"non-finite Siamese embeddings for identities {bad[:10].tolist()}: is the Siamese "
                         "checkpoint diverged? k-Same cannot place them")
    found = (find_duplicates(stats.ids, stats.embeddings, stats.thumbnails, stats.thumbnail_ids,
                             duplicates or DuplicateConfig())
             if stats.thumbnails is not None else Duplicates(people=[[int(i)] for i in stats.ids]))
    row = {int(i): n for n, i in enumerate(stats.ids)}
    people = [[row[i] for i in person] for person in found.people]

    def per_person(values: np.ndarray | None) -> np.ndarray | None:  # each person weighs the same
        return None if values is None else np.stack([np.asarray(values, np.float64)[p].mean(0) for p in people])

    embeddings = per_person(stats.embeddings)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    person_groups = cluster_identities(embeddings, k, method=method, seed=seed)
    groups = [sorted(r for p in group for r in people[p]) for group in person_groups]

    def faces(means: np.ndarray | None) -> np.ndarray | None:
        return None if means is None else average_faces(means, person_groups).round().clip(0, 255).astype(np.uint8)

    return KSame(k=k, ids=stats.ids, groups=groups, surrogates=surrogate_targets(embeddings, person_groups),
                 pixel=faces(per_person(stats.faces)), aligned=faces(per_person(stats.aligned)), frame=stats.frame,
                 identity_landmarks=stats.landmarks, duplicates=found)


def ksame_from_file(path: str | Path, data: FaceShards, k: int | None = None) -> KSame:
    """The training population's k-Same as `kssgan cluster` wrote it (re-checked on load against `k`, the
    anonymity asked for); `data` is the population's split (for its people's mean landmarks)."""
    record = load_clusters(path, k)
    faces = load_cluster_faces(path)
    ids = np.array(sorted(i for c in record["clusters"] for i in c["identities"]))
    row = {int(i): n for n, i in enumerate(ids)}
    merged = record.get("duplicates", {}).get("merged", [])
    in_merged = {i for m in merged for i in m}
    people = merged + [[int(i)] for i in ids if int(i) not in in_merged]
    return KSame(k=int(record["k"]), ids=ids, groups=[[row[i] for i in c["identities"]] for c in record["clusters"]],
                 duplicates=Duplicates(pairs=record.get("duplicates", {}).get("pairs", []), people=people),
                 surrogates=np.array([c["surrogate"] for c in record["clusters"]], np.float32),
                 pixel=faces["pixel"].numpy(), aligned=faces["aligned"].numpy(), frame=faces["frame"].numpy(),
                 identity_landmarks=identity_landmarks(data, ids))


def build_clusters(cfg: ClusterConfig) -> dict[str, Any]:
    """Cluster the identities of `cfg.split`; write clusters.json and the cluster faces."""
    out = Path(cfg.out)
    claim_file(out, "clusters")  # checked first: nothing is computed for an output that would be refused
    model, siamese_cfg = load_siamese(cfg.siamese)
    manifest = verify_dataset(cfg.data, cfg.verify)
    data = FaceShards(Path(cfg.data), cfg.split)
    if (data.resolution, data.channels) != (siamese_cfg.model.resolution, siamese_cfg.model.channels):
        raise InputError(f"{cfg.data} is {data.resolution}px x{data.channels}, the Siamese in {cfg.siamese} "
                         f"expects {siamese_cfg.model.resolution}px x{siamese_cfg.model.channels}")
    population = ksame(identity_statistics(model, data, cfg.batch_size), cfg.k, method=cfg.method, seed=cfg.seed,
                       duplicates=cfg.duplicates)
    faces_path = cluster_faces_path(out)
    tmp = faces_path.with_name(f".{faces_path.name}.tmp-{os.getpid()}")
    save_file({"pixel": torch.from_numpy(population.pixel), "aligned": torch.from_numpy(population.aligned),
               "frame": torch.from_numpy(population.frame)}, tmp)
    os.replace(tmp, faces_path)
    result = {
        "kind": "clusters",
        "k": cfg.k,
        "method": cfg.method,
        "seed": cfg.seed,
        "split": cfg.split,
        "identities": len(population.ids),
        "dataset_shards": [s["sha256"] for s in manifest["shards"] if s["split"] == cfg.split],
        "cluster_faces": faces_path.name,
        "duplicates": {**dataclasses.asdict(cfg.duplicates), "pairs": population.duplicates.pairs,
                       "merged": population.duplicates.merged},
        "clusters": [{"cluster": c, "identities": population.ids_of(c), "surrogate": population.surrogates[c].tolist()}
                     for c in range(len(population.groups))],
    }
    atomic_write_json(out, result)
    sizes = [len(g) for g in population.groups]
    log.info("%d identities -> %d clusters (sizes %d..%d, k=%d)", len(population.ids), len(sizes), min(sizes),
             max(sizes), cfg.k)
    return result
