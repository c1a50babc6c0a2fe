"""The two de-identifications that ship: kSS-GAN and k-Same-Aligned. Neither takes a source image.

Both read only what a source declares: its identity (-> its k-Same cluster), its 5 landmarks (with
the person's own geometry replaced by the cluster's: KSame.pose_landmarks) and its expression/pose
labels. kSS-GAN adds noise z, drawn from a seeded generator, so a release is
reproducible from its (secret) seed.

Which image's cues a released face shows is `draw_cues`' choice. A person's own cues identify them
within their cluster (people have habits: one sits still, another turns and tilts), so by default
("cluster") every face shows the cues of an image drawn from its cluster by a secret permutation: a
pose, expression and labels that belong to the cluster, consistent with each other, but not
necessarily its source's. What a face carries beyond its cluster then cannot tell the cluster's
members apart, and the cluster keeps exactly its sources' variety of poses and expressions. "own"
(each face its source's cues) is for measurement: the gate and the report show what it leaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kssgan_hpc.data.pixels import channels_last
from kssgan_hpc.ksame.build import KSame

METHODS = ("kssgan", "ksame_aligned")
CUE_POLICIES = ("cluster", "own")


def drawn_entries(count: int, pool: int, seed: list[int]) -> np.ndarray:
    """`count` entries of a pool of `pool` cues, drawn without replacement from `seed` (one
    permutation after another when more are needed than the pool holds)."""
    rng = np.random.default_rng(seed)
    rounds = [rng.permutation(pool) for _ in range(-(-count // pool))] if pool else []
    return np.concatenate(rounds)[:count] if rounds else np.zeros(0, np.int64)


def draw_cues(identities: np.ndarray, clustering: KSame, secret: int, policy: str = "cluster",
              replica: int = 0) -> np.ndarray:
    """For every image of a split (`identities`, in dataset order), the row whose declared cues it is
    released with: a permutation of its cluster's images drawn from (`secret`, cluster) ("cluster"),
    or its own row ("own"). `replica` > 0: another draw of the same kind (an evaluation attacks the cue
    draw over many secrets, not one)."""
    if policy not in CUE_POLICIES:
        raise ValueError(f"unknown cue policy {policy!r}; use one of {', '.join(CUE_POLICIES)}")
    drawn = np.arange(len(identities))
    if policy == "own":
        return drawn
    clusters = clustering.clusters_of(identities)
    for cluster in np.unique(clusters):
        rows = np.flatnonzero(clusters == cluster)
        # Its own stream per cluster: a cluster's draw does not depend on the others'.
        drawn[rows] = rows[drawn_entries(len(rows), len(rows), [secret, 1, int(cluster), replica])]
    return drawn


@dataclass
class CuePool:
    """What a cluster's faces show beyond the cluster, one entry per image it was read from: the pose
    offset (landmarks minus the person's mean) and the labels that go with it. A release draws its
    faces' cues from its clusters' pools; a later release of the same cluster draws from the pool as
    first released (release/ledger.py), so that a withdrawal cannot show whose cues went missing."""

    offsets: np.ndarray
    """[N, 5, 2] float32 (NaN: the image had no landmarks)."""
    labels: dict[str, np.ndarray]
    """expression, pose, gaze [N] and attributes [N, A], int64."""
    source: np.ndarray
    """[N] int64 source_index of the image each entry was read from (private; -1: its person withdrew)."""

    def __len__(self) -> int:
        return len(self.source)

    def take(self, entries: np.ndarray) -> CuePool:
        return CuePool(self.offsets[entries], {name: value[entries] for name, value in self.labels.items()},
                       self.source[entries])


POOL_LABELS = ("expression", "pose", "gaze", "attributes")


def cue_pool(clustering: KSame, labels: dict[str, Any], rows: np.ndarray, origin: np.ndarray) -> CuePool:
    """The pool of the images `rows` of a split (FaceShards.labels, `origin`: their source_index)."""
    return CuePool(clustering.pose_offsets(labels["identity"][rows], labels["landmarks"][rows]).astype(np.float32),
                   {name: np.asarray(labels[name][rows]).astype(np.int64) for name in POOL_LABELS},
                   np.asarray(origin[rows], np.int64))


def draw_from_pools(clusters: np.ndarray, pools: list[CuePool], secret: int) -> tuple[CuePool, np.ndarray]:
    """For images of the given clusters (dataset order): the cues each face shows, drawn from its
    cluster's pool by (`secret`, cluster) as draw_cues draws rows; and which entry of its pool each is."""
    offsets = np.full((len(clusters), 5, 2), np.nan, np.float32)
    labels: dict[str, np.ndarray] = {}
    source, entries = np.zeros(len(clusters), np.int64), np.zeros(len(clusters), np.int64)
    for cluster in np.unique(clusters):
        rows = np.flatnonzero(clusters == cluster)
        pool = pools[cluster]
        entries[rows] = drawn_entries(len(rows), len(pool), [secret, 1, int(cluster), 0])
        drawn = pool.take(entries[rows])
        offsets[rows], source[rows] = drawn.offsets, drawn.source
        for name, value in drawn.labels.items():
            labels.setdefault(name, np.zeros((len(clusters), *value.shape[1:]), np.int64))[rows] = value
    return CuePool(offsets, labels, source), entries


def cue_labels(labels: dict[str, Any], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The declared cues of some images: identity, landmarks, expression, pose (from FaceShards.labels
    or a batch's labels), as numpy rows."""
    picked = {}
    for name in ("identity", "landmarks", "expression", "pose"):
        value = labels[name]
        value = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        picked[name] = value if rows is None else value[rows]
    return picked


def noise(keys: np.ndarray, z_dim: int, seed: int) -> torch.Tensor:
    """z per image, drawn from (seed, the image's key): the same image gets the same z whatever the
    batching, rank or resume (a release is byte-identical when finished in pieces)."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, int(key)]).generate_state(1, np.uint64)[0] >> 1)))
        for key in keys]) if len(keys) else torch.zeros(0, z_dim)


@torch.no_grad()
def deidentify(method: str, clustering: KSame, cues: dict[str, np.ndarray], *, generator: torch.nn.Module | None,
               seed: int, keys: np.ndarray | None = None, device: torch.device | str = "cpu",
               batch_size: int = 64) -> np.ndarray:
    """uint8 [N, H, W, C] faces for the images whose cues are given (identity, expression, pose and
    either landmarks or pose `offsets`); `keys` (default 0..N-1) name the images for their noise z."""
    if method not in METHODS:
        raise ValueError(f"unknown de-identification {method!r}; use one of {', '.join(METHODS)}")
    if method == "kssgan" and generator is None:
        raise ValueError("kssgan needs a generator")
    out = []
    count = len(cues["identity"])
    keys = np.arange(count) if keys is None else np.asarray(keys)
    for start in range(0, count, batch_size):
        part = slice(start, min(start + batch_size, count))
        posed = (clustering.posed(cues["identity"][part], cues["offsets"][part]) if "offsets" in cues else
                 clustering.pose_landmarks(cues["identity"][part], cues["landmarks"][part]))
        landmarks = torch.from_numpy(posed).to(device)
        base = clustering.base_faces(cues["identity"][part], landmarks, device)
        if method == "kssgan":
            faces = generator(base, landmarks, torch.from_numpy(cues["expression"][part]).long().to(device),
                              torch.from_numpy(cues["pose"][part]).long().to(device),
                              noise(keys[part], generator.cfg.z_dim, seed).to(device))
        else:
            faces = base
        out.append(channels_last(faces))
    return np.concatenate(out) if out else np.zeros((0,), np.uint8)
