"""k-Same over one group of people: frozen Siamese -> one embedding per identity -> clusters of >= k people.

`identity_statistics` reads a split once (embeddings, mean faces, landmarks); `ksame` clusters it
for any k into a `KSame`: clusters, surrogate embeddings, and the base faces the generator and the
k-Same methods start from. The people are the training split (`kssgan cluster`, records.py) or
each released or attacked split, clustered among themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kssgan_hpc.config.train import DuplicateConfig
from kssgan_hpc.data.dataset import FaceShards, collate_faces
from kssgan_hpc.data.pixels import to_unit
from kssgan_hpc.ksame.aligned import mean_frame, render, to_frame
from kssgan_hpc.ksame.clusters import average_faces, cluster_identities, surrogate_targets
from kssgan_hpc.ksame.duplicates import Duplicates, find_duplicates, thumbnails
from kssgan_hpc.models import siamese_embeddings


@dataclass
class IdentityStatistics:
    """Per identity of one group of people (rows in `ids` order)."""

    ids: np.ndarray
    """Sorted identity ids."""
    embeddings: np.ndarray
    """[n, d] normalised mean Siamese embedding."""
    faces: np.ndarray | None
    """[n, C, H, W] mean face, 0..255 (k-Same-Pixel's input)."""
    aligned: np.ndarray | None
    """[n, C, H, W] mean face after moving every image onto `frame` (k-Same-Aligned's input)."""
    frame: np.ndarray | None
    """[5, 2] the group's mean landmark frame."""
    landmarks: np.ndarray | None = None
    """[n, 5, 2] mean landmarks of each person (NaN where none are known)."""
    thumbnails: np.ndarray | None = None
    """[images, 256] every image's grey thumbnail (ksame/duplicates.py), in dataset order."""
    thumbnail_ids: np.ndarray | None = None
    """[images] the identity of each thumbnail."""

    def of(self, rows: np.ndarray) -> IdentityStatistics:
        """The statistics of some of these people (`rows` of `ids`), in the same frame."""
        rows = np.asarray(rows, np.int64)

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[rows]

        thumbs = None if self.thumbnail_ids is None else np.isin(self.thumbnail_ids, self.ids[rows])
        return IdentityStatistics(self.ids[rows], self.embeddings[rows], pick(self.faces), pick(self.aligned),
                                  self.frame, pick(self.landmarks),
                                  None if thumbs is None else self.thumbnails[thumbs],
                                  None if thumbs is None else self.thumbnail_ids[thumbs])


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
        emb = siamese_embeddings(model, images, device, batch_size=len(images)).numpy()
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
    """k-Same over one group of people: every identity in one cluster of >= k people."""

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
    cluster_landmarks: np.ndarray | None = None
    """[clusters, 5, 2] the mean geometry of each cluster's people (each person weighs the same); given
    when frozen by an earlier release (release/ledger.py), else computed from `identity_landmarks`."""

    def __post_init__(self) -> None:
        self._cluster = {int(self.ids[i]): c for c, group in enumerate(self.groups) for i in group}
        self._row = {int(identity): row for row, identity in enumerate(self.ids)}
        if self.cluster_landmarks is None and self.identity_landmarks is not None:
            self.cluster_landmarks = np.stack([np.nanmean(self.identity_landmarks[group], axis=0)
                                               for group in self.groups]).astype(np.float32)

    def pose_landmarks(self, identities: np.ndarray | torch.Tensor, landmarks: np.ndarray | torch.Tensor) -> np.ndarray:
        """The landmark cue with the person taken out: the image's offset from its person's mean
        landmarks (pose, expression) carried onto its cluster's mean landmarks. The raw landmarks
        identify people (the parrot attack; README, threat model); what is left of a person's
        geometry is the cluster's, shared by >= k."""
        return self.posed(identities, self.pose_offsets(identities, landmarks))

    def posed(self, identities: np.ndarray | torch.Tensor, offsets: np.ndarray) -> np.ndarray:
        """[N, 5, 2] pose offsets (pose_offsets, of any image of the cluster) carried onto the clusters'
        mean landmarks of `identities`."""
        if self.cluster_landmarks is None:
            raise ValueError("this k-Same clustering has no landmark statistics")
        return self.cluster_landmarks[self.clusters_of(identities)] + np.asarray(offsets, np.float32)

    def pose_offsets(self, identities: np.ndarray | torch.Tensor, landmarks: np.ndarray | torch.Tensor) -> np.ndarray:
        """[N, 5, 2] each image's landmarks minus its person's mean landmarks: the pose and expression
        it shows, without the person's geometry (NaN where the image has no landmarks)."""
        if self.identity_landmarks is None:
            raise ValueError("this k-Same clustering has no landmark statistics")
        landmarks = np.asarray(landmarks, np.float32)
        rows = np.array([self._row[int(i)] for i in np.asarray(identities)], np.int64)
        return landmarks - self.identity_landmarks[rows]

    def clusters_of(self, identities: np.ndarray | torch.Tensor) -> np.ndarray:
        """Cluster index of each identity; an identity outside the group is an error."""
        try:
            return np.array([self._cluster[int(i)] for i in np.asarray(identities)], np.int64)
        except KeyError as err:
            raise ValueError(f"identity {err} is in no k-Same cluster of these people") from None

    def base_faces(self, identities: np.ndarray | torch.Tensor, landmarks: np.ndarray | torch.Tensor,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """k-Same-Aligned faces, float [N, C, H, W] in [-1, 1]: each identity's cluster template posed
        on the given (pose_landmarks) landmarks. Only the cluster and the landmarks go in, never a
        source image."""
        if self.aligned is None or self.frame is None:
            raise ValueError("this k-Same clustering has no aligned templates")
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
    """k-Same over a group of people from identity_statistics' output (one pass serves several k). Identities
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
