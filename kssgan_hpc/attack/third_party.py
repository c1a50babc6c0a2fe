"""Third-party leak: does the generator paint its *training* people into other people's faces?

A realistic generator can memorise the faces it trained on and hand them out: then a released face
of anyone may be recognised as one of the training people, who never agreed to be in this release.
For every released face, its best match among the training people's images (excluding the people
of its own k-Same cluster, whose likeness it may legitimately share), with each recognizer's own
match rule: SFace cosine >= 0.363 (OpenCV's published threshold), dlib Euclidean distance <= 0.6 on
its raw descriptors (dlib's). The share of faces matched is read beside the same share for the real
faces of the same people against the same third parties (the false-match baseline of strangers)
and, for a generator, beside the share of its own inputs, the k-Same-Aligned base faces: averages
match strangers more often than photos do (they look like everyone a little), and what the base
already matches is not the generator's doing. The excess over the larger baseline is the leak.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kssgan_hpc.attack.recognizers import Recognizer

MATCH_RULES = {"sface": ("cosine", 0.363), "dlib": ("euclidean", 0.6)}
"""Each recognizer's own rule for 'the same person': (metric, threshold)."""


def _similarity(metric: str, probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """[P, G] higher = more alike: cosine of unit rows, or minus the Euclidean distance of raw ones."""
    if metric == "cosine":
        return probes @ gallery.T
    squared = (probes ** 2).sum(1)[:, None] + (gallery ** 2).sum(1)[None] - 2 * probes @ gallery.T
    return -np.sqrt(np.maximum(squared, 0))


class ThirdParties:
    """The training people's images as one recognizer sees them, set up once, matched against any faces."""

    def __init__(self, name: str, recognizer: Recognizer, images: np.ndarray, identities: np.ndarray) -> None:
        if name not in MATCH_RULES:
            raise ValueError(f"no match rule for recognizer {name!r}; use one of {', '.join(MATCH_RULES)}")
        self.name, self.recognizer = name, recognizer
        self.metric, threshold = MATCH_RULES[name]
        self.unit = self.metric == "cosine"
        self.threshold = threshold if self.unit else -threshold  # on _similarity's scale: higher = more alike
        self.rule = f"{self.metric} {'>=' if self.unit else '<='} {threshold}"
        self.identities = np.asarray(identities)
        self.embeddings = recognizer.embed(images, unit=self.unit)

    def best_match(self, faces: np.ndarray, excluded: list[np.ndarray]) -> np.ndarray:
        """Per face, its similarity to the most alike training image of anyone but `excluded[i]`
        (the people of face i's cluster; -inf when nobody is left)."""
        scores = _similarity(self.metric, self.recognizer.embed(faces, unit=self.unit), self.embeddings)
        for i, people in enumerate(excluded):
            scores[i, np.isin(self.identities, people)] = -np.inf
        return scores.max(axis=1) if scores.shape[1] else np.full(len(faces), -np.inf)

    def share_matched(self, faces: np.ndarray, excluded: list[np.ndarray]) -> float:
        return float((self.best_match(faces, excluded) >= self.threshold).mean()) if len(faces) else 0.0

    def leak(self, released: np.ndarray, originals: np.ndarray, excluded: list[np.ndarray],
             base: np.ndarray | None = None) -> dict[str, Any]:
        """The share of `released` faces matched to a third party, beside the share of the same people's
        `originals` and (for a generator) of its `base` faces; the excess over the larger of the two."""
        matched = self.share_matched(released, excluded)
        real = self.share_matched(originals, excluded)
        from_base = None if base is None else self.share_matched(base, excluded)
        baseline = max(real, from_base or 0.0)
        return {"matched": matched, "baseline": baseline, "baseline_real": real, "baseline_base": from_base,
                "excess": matched - baseline, "faces": len(released), "rule": self.rule,
                "training_people": len(np.unique(self.identities))}


def excluded_people(identities: np.ndarray, clustering: Any | None) -> list[np.ndarray]:
    """Per face, the people its likeness may legitimately be: its cluster's (with a k-Same
    `clustering`), else its own person's."""
    if clustering is None:
        return [np.array([int(i)]) for i in identities]
    return [np.asarray(clustering.ids_of(c)) for c in clustering.clusters_of(identities)]
