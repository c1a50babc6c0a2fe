"""Re-identification attackers: each holds a gallery of original faces and names the person behind a
de-identified probe (rank-1, CMC), beside the k-Same bound 1/k and a one-sided binomial p-value.

  siamese, dlib, sface   face recognizers (recognizers.py): the system's own and two independent ones
  lowpass8, lowpass16    grey thumbnails (8x8, 16x16), normalised, nearest neighbour: what survives a
                         generator that keeps a face's low frequencies
  eigenfaces             PCA fitted on the gallery (Turk & Pentland 1991), nearest neighbour
  parrot                 (Newton, Sweeney & Malin 2005) the attacker runs the same de-identification
                         on the gallery and matches de-identified to de-identified (32x32 grey)
  posehabit, labels      what a face carries beyond its cluster (cues.py)

A privacy claim is these attacks, run: on training and on held-out people.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.stats import binom, binomtest

from kssgan_hpc.attack.measures import cmc, identity_gallery
from kssgan_hpc.config.gate import ALL_ATTACKERS, CUE_ATTACKERS


def _unit(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def grey_thumbnails(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W, C] -> [N, size*size] grey, area-downsampled, zero mean and unit norm per image."""
    grey = images.astype(np.float32).mean(-1)
    small = np.stack([cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA) for g in grey]).reshape(len(grey), -1)
    return _unit(small - small.mean(1, keepdims=True))


class LowPass:
    def __init__(self, size: int) -> None:
        self.size = size
        self.name = f"low-pass nearest neighbour ({size}x{size} grey)"

    def fit(self, gallery: np.ndarray) -> None:
        pass

    def embed(self, images: np.ndarray) -> np.ndarray:
        return grey_thumbnails(images, self.size)


class Eigenfaces:
    """PCA of the gallery's grey faces (32x32), up to 50 components; probes projected, cosine NN."""

    name = "eigenfaces (PCA on the gallery, nearest neighbour)"

    def __init__(self, size: int = 32, components: int = 50) -> None:
        self.size, self.components = size, components
        self.mean: np.ndarray | None = None
        self.basis: np.ndarray | None = None

    def fit(self, gallery: np.ndarray) -> None:
        x = grey_thumbnails(gallery, self.size)
        self.mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.basis = vt[: min(self.components, len(x) - 1)]

    def embed(self, images: np.ndarray) -> np.ndarray:
        if self.basis is None:
            raise RuntimeError("Eigenfaces.fit(gallery) first")
        return _unit((grey_thumbnails(images, self.size) - self.mean) @ self.basis.T)


class Recognizing:
    """A face recognizer (recognizers.py) as an attacker; nothing to fit."""

    def __init__(self, recognizer: Any) -> None:
        self.recognizer = recognizer
        self.name = recognizer.name

    def fit(self, gallery: np.ndarray) -> None:
        pass

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.recognizer.embed(images)


PARROT_FEATURES = 32
"""Side of the grey thumbnails the parrot attacker compares de-identified faces with."""


def make_attacker(name: str, siamese_run: str | Path, device: Any = "cpu") -> Any:
    from kssgan_hpc.attack.recognizers import make_recognizer

    if name in ("siamese", "dlib", "sface"):
        return Recognizing(make_recognizer(name, siamese_run, device))
    if name == "lowpass8":
        return LowPass(8)
    if name == "lowpass16":
        return LowPass(16)
    if name == "eigenfaces":
        return Eigenfaces()
    if name == "parrot":
        return LowPass(PARROT_FEATURES)
    if name in CUE_ATTACKERS:
        from kssgan_hpc.attack.cues import make_cue_attacker

        return make_cue_attacker(name)
    raise ValueError(f"unknown attacker {name!r}; use one of {', '.join(ALL_ATTACKERS)}")


def p_value(rank1: float, probes: int, k: int | None) -> float | None:
    """One-sided binomial test of 'the attacker does no better than 1/k' (None without a k)."""
    if k is None or probes == 0:
        return None
    return float(binomtest(int(round(rank1 * probes)), probes, 1 / k, alternative="greater").pvalue)


def p_within(rank1: float, probes: int, bound: float) -> float | None:
    """One-sided binomial test of 'the attacker does worse than `bound`': a small p-value is evidence
    that its rank-1 is within the bound; few probes cannot give that evidence (None without probes)."""
    if probes == 0:
        return None
    return float(binomtest(int(round(rank1 * probes)), probes, min(bound, 1.0), alternative="less").pvalue)


def detectable_excess(probes: int, k: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest excess of rank-1 over 1/k that `probes` probes reveal (the one-sided binomial test
    at `alpha` rejects "no better than 1/k" with probability >= `power`); None without probes. An
    excess below it can pass unseen: the gate reports it beside its tolerance."""
    if probes == 0:
        return None
    # The least count of correct probes that the test calls significant...
    critical = int(binom.isf(alpha, probes, 1 / k)) + 1
    # ...and the least true rank-1 at which that count is reached often enough.
    for step in range(1, 1001):
        rate = 1 / k + step / 1000 * (1 - 1 / k)
        if binom.sf(critical - 1, probes, rate) >= power:
            return rate - 1 / k
    return 1 - 1 / k


@dataclass
class Gallery:
    """The attacker's side: original gallery images of every person in the population."""

    images: np.ndarray
    identities: np.ndarray


def run_attack(name: str, attacker: Any, gallery: Gallery, probes: np.ndarray, probe_ids: np.ndarray,
               k: int | None, deidentified_gallery: np.ndarray | None = None,
               cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """One attacker against one method's outputs: rank-1, CMC, chance, 1/k and the p-value.
    `parrot` matches against `deidentified_gallery` (the method applied to the gallery)."""
    cache = {} if cache is None else cache
    if name == "parrot":
        if deidentified_gallery is None:
            raise ValueError("the parrot attack needs the de-identified gallery")
        gids, templates = identity_gallery(attacker.embed(deidentified_gallery), gallery.identities)
    else:
        if name not in cache:  # the gallery's templates serve every method
            attacker.fit(gallery.images)
            cache[name] = identity_gallery(attacker.embed(gallery.images), gallery.identities)
        gids, templates = cache[name]
    curve = cmc(attacker.embed(probes), probe_ids, gids, templates)
    rank1 = float(curve[0])
    return {"rank1": rank1, "cmc": [round(float(v), 4) for v in curve], "probes": len(probes),
            "chance": 1 / len(gids), "k_bound": None if k is None else 1 / k,
            "p_value": p_value(rank1, len(probes), k)}


def worst(results: dict[str, dict[str, Any]]) -> tuple[str, float]:
    """The attacker with the highest rank-1 and that rank-1."""
    name = max(results, key=lambda n: results[n]["rank1"])
    return name, results[name]["rank1"]
