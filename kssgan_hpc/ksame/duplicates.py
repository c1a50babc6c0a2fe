"""One person under two names (the same photos filed twice) would let a k-Same cluster of k names hold
fewer than k people. Before clustering, pairs of identities that two independent measures call the
same are found and, by default, merged into one person: they then always share a cluster, and a
cluster counts people, not names.

The two measures: the Siamese (mean embeddings' cosine) and the pixels themselves (normalised 16x16
grey thumbnails of the aligned images: a re-saved copy correlates almost perfectly with its original,
two photos of one person, or of two people, clearly less; the thresholds are DuplicateConfig's, and
the README says which measurements chose them). A pair is merged when the Siamese agrees and at
least half of the smaller identity's images have a near-copy among the other's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from kssgan_hpc.config.train import DuplicateConfig

log = logging.getLogger(__name__)

THUMBNAIL = 16


@dataclass
class Duplicates:
    """The identity pairs found, and the people after merging (each a sorted list of identity ids)."""

    pairs: list[dict] = field(default_factory=list)
    people: list[list[int]] = field(default_factory=list)

    @property
    def merged(self) -> list[list[int]]:
        return [p for p in self.people if len(p) > 1]


def thumbnails(images: torch.Tensor) -> np.ndarray:
    """uint8/float [N, C, H, W] -> [N, 256] zero-mean unit-norm grey 16x16 thumbnails."""
    grey = images.float().mean(1, keepdim=True)
    t = F.adaptive_avg_pool2d(grey, THUMBNAIL).flatten(1)
    t = t - t.mean(1, keepdim=True)
    return (t / t.norm(dim=1, keepdim=True).clamp_min(1e-6)).numpy().astype(np.float32)


def find_duplicates(ids: np.ndarray, embeddings: np.ndarray, thumbs: np.ndarray, thumb_ids: np.ndarray,
                    cfg: DuplicateConfig) -> Duplicates:
    """Pairs of `ids` that are one person by both measures, and the people (union of the pairs)."""
    cosine = embeddings @ embeddings.T
    rows_of = {int(i): np.flatnonzero(thumb_ids == i) for i in ids}
    pairs = []
    for a, b in zip(*np.nonzero(np.triu(cosine >= cfg.siamese_min, 1))):
        ia, ib = int(ids[a]), int(ids[b])
        ra, rb = rows_of[ia], rows_of[ib]
        small, large = (ra, rb) if len(ra) <= len(rb) else (rb, ra)
        if not len(small) or not len(large):
            continue
        share = float(((thumbs[small] @ thumbs[large].T).max(1) >= cfg.pixel_min).mean())
        if share >= cfg.share_min:
            pairs.append({"identities": [ia, ib], "siamese_cosine": round(float(cosine[a, b]), 4),
                          "near_copies": round(share, 3)})
    parent = {int(i): int(i) for i in ids}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if cfg.merge:
        for pair in pairs:
            a, b = map(root, pair["identities"])
            parent[max(a, b)] = min(a, b)
    people: dict[int, list[int]] = {}
    for i in ids:
        people.setdefault(root(int(i)), []).append(int(i))
    for pair in pairs:
        log.warning("identities %d and %d look like one person (Siamese cosine %.3f, %.0f%% near-copies): %s",
                    *pair["identities"], pair["siamese_cosine"], 100 * pair["near_copies"],
                    "merged" if cfg.merge else "NOT merged (duplicates.merge=false)")
    return Duplicates(pairs=pairs, people=sorted(people.values()))
