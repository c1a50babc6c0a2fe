"""k-Same clustering with the guarantee: every identity in exactly one cluster, every cluster >= k identities.

Two methods, both deterministic:
  mdav    k-Same-Select style greedy nearest groups (Maximum Distance to Average Vector
          microaggregation): the identity farthest from the centroid and its k-1 nearest
          neighbours form a group, repeat; the last < 2k identities form one group.
  kmeans  equal-size k-means: n // k centroids, capacity-constrained assignment so cluster
          sizes differ by at most one (each >= k); seeded.
"""

from __future__ import annotations

import numpy as np

from kssgan_hpc.errors import InputError

METHODS = ("mdav", "kmeans")


def check_k(k: object) -> int:
    """k of k-anonymity: an int >= 2 (not a bool, not 2.5); anything else is an error."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k={k!r} is invalid; k-anonymity needs an integer k >= 2")
    return int(k)


class TooFewPeople(InputError):
    """Fewer people than k: no cluster could hold k of them (the callers name the data and split)."""


def cluster_identities(embeddings: np.ndarray, k: int, *, method: str = "mdav", seed: int = 0,
                       iterations: int = 10) -> list[list[int]]:
    """Group the rows of `embeddings` (one per identity) into clusters of at least k rows."""
    k = check_k(k)
    embeddings = np.asarray(embeddings, np.float64)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [identities, dims], got shape {embeddings.shape}")
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if len(bad):
        raise ValueError(f"non-finite embeddings for identity rows {bad[:10].tolist()}: a diverged Siamese? "
                         "k-Same cannot place them")
    n = len(embeddings)
    if n < k:
        raise TooFewPeople(f"k={k} needs at least {k} identities, got {n}: no cluster could reach k")
    if method == "mdav":
        clusters = _mdav(embeddings, k)
    elif method == "kmeans":
        clusters = _equal_size_kmeans(embeddings, k, seed, iterations)
    else:
        raise ValueError(f"unknown clustering method {method!r}; use one of {', '.join(METHODS)}")
    check_clusters(clusters, n, k)
    return clusters


def check_clusters(clusters: list[list[int]], n: int, k: int) -> None:
    """Raise if the k-anonymity guarantee does not hold (used on every result, and on loaded files)."""
    members = sorted(i for c in clusters for i in c)
    if members != list(range(n)):
        raise ValueError(f"clusters must hold each of the {n} identities exactly once")
    small = [len(c) for c in clusters if len(c) < k]
    if small:
        raise ValueError(f"{len(small)} cluster(s) smaller than k={k} (sizes {small})")


def check_cluster_members(members: list[list[int]], k: int, merged: list[list[int]] = ()) -> None:
    """check_clusters for clusters written as identity ids (clusters.json, release records). `merged`:
    groups of identity ids that are one person (ksame/duplicates.py): a cluster counts people."""
    k = check_k(k)
    ids = sorted(i for group in members for i in group)
    if len(ids) != len(set(ids)):
        raise ValueError("an identity appears in two clusters")
    position = {identity: n for n, identity in enumerate(ids)}
    check_clusters([[position[i] for i in group] for group in members], len(ids), k)
    person = {i: min(group) for group in merged for i in group}
    short = [len({person.get(i, i) for i in group}) for group in members]
    short = [n for n in short if n < k]
    if short:
        raise ValueError(f"{len(short)} cluster(s) of fewer than k={k} people once identities that are one "
                         f"person are counted once (people {short})")


def _mdav(x: np.ndarray, k: int) -> list[list[int]]:
    remaining = np.arange(len(x))
    clusters: list[list[int]] = []

    def farthest(origin: np.ndarray) -> int:
        return int(remaining[np.argmax(((x[remaining] - origin) ** 2).sum(1))])

    def take_group(anchor: int) -> None:
        nonlocal remaining
        nearest = np.argsort(((x[remaining] - x[anchor]) ** 2).sum(1), kind="stable")[:k]
        clusters.append(sorted(remaining[nearest].tolist()))
        remaining = np.delete(remaining, nearest)

    while len(remaining) >= 3 * k:
        r = farthest(x[remaining].mean(0))
        take_group(r)
        take_group(farthest(x[r]))  # the point farthest from r, among those left
    if len(remaining) >= 2 * k:
        take_group(farthest(x[remaining].mean(0)))
    clusters.append(sorted(remaining.tolist()))  # k <= len(remaining) < 2k: one group, never dropped
    return clusters


def _equal_size_kmeans(x: np.ndarray, k: int, seed: int, iterations: int) -> list[list[int]]:
    n = len(x)
    m = n // k
    base, extra = divmod(n, m)  # `extra` clusters take base+1; base >= k
    rng = np.random.default_rng(seed)
    centers = x[rng.choice(n, m, replace=False)]
    labels = np.zeros(n, int)
    for _ in range(iterations):
        dist = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
        labels = _capacity_assign(dist, base, extra)
        new = np.stack([x[labels == c].mean(0) for c in range(m)])
        if np.allclose(new, centers):
            break
        centers = new
    return [sorted(np.flatnonzero(labels == c).tolist()) for c in range(m)]


def _capacity_assign(dist: np.ndarray, size_lo: int, extra: int) -> np.ndarray:
    """Greedy assignment by increasing distance, each cluster filled to size_lo, `extra` of them to +1."""
    n, m = dist.shape
    labels = np.full(n, -1)
    size = np.zeros(m, int)
    big = 0
    for flat in np.argsort(dist, axis=None, kind="stable"):
        i, c = divmod(int(flat), m)
        if labels[i] >= 0:
            continue
        if size[c] < size_lo or (size[c] == size_lo and big < extra):
            big += size[c] == size_lo
            labels[i] = c
            size[c] += 1
    return labels


def surrogate_targets(embeddings: np.ndarray, clusters: list[list[int]]) -> np.ndarray:
    """Per cluster: the L2-normalised mean of its members' embeddings."""
    embeddings = np.asarray(embeddings, np.float64)
    means = np.stack([embeddings[c].mean(0) for c in clusters])
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def average_faces(identity_means: np.ndarray, clusters: list[list[int]]) -> np.ndarray:
    """k-Same-Pixel: per cluster, the mean of its members' mean faces (each person weighs the same)."""
    return np.stack([np.asarray(identity_means, np.float64)[c].mean(0) for c in clusters]).astype(np.float32)
