"""The people under attack: per person, a gallery of originals for the attacker and probes to de-identify.

Per person, the first gallery_per_identity images (dataset order) are the attacker's gallery of
originals and the next probes_per_identity are de-identified by the method under test and attacked
by every attacker. `attack_population` is the one measurement shared by the release gate,
checkpoint selection and the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kssgan_hpc.attack.attackers import Gallery, run_attack, worst
from kssgan_hpc.data.dataset import FaceShards, read_images
from kssgan_hpc.ksame.deidentify import cue_labels


def gallery_and_probes(identities: np.ndarray, gallery: int, probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per identity, its first images (dataset order) for the gallery and the next ones as probes;
    identities with fewer than 2 images are left out."""
    g, p = [], []
    for identity in np.unique(identities):
        rows = np.flatnonzero(identities == identity)
        if len(rows) < 2:
            continue
        n_gallery = min(gallery, len(rows) - 1)
        g.extend(rows[:n_gallery])
        p.extend(rows[n_gallery:n_gallery + probes])
    return np.array(g, np.int64), np.array(p, np.int64)


@dataclass
class Population:
    """The people of one split, ready to be attacked: their gallery of originals and their probes."""

    data: FaceShards
    gallery_rows: np.ndarray
    probe_rows: np.ndarray
    gallery: Gallery
    probe_images: np.ndarray

    @property
    def probe_ids(self) -> np.ndarray:
        return self.data.labels["identity"][self.probe_rows]

    @property
    def identities(self) -> int:
        return len(np.unique(self.probe_ids))

    def cues(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return cue_labels(self.data.labels, rows)


def population_of(data: FaceShards, gallery_per_identity: int, probes_per_identity: int) -> Population:
    gallery_rows, probe_rows = gallery_and_probes(data.labels["identity"], gallery_per_identity, probes_per_identity)
    return Population(data, gallery_rows, probe_rows,
                      Gallery(read_images(data, gallery_rows), data.labels["identity"][gallery_rows]),
                      read_images(data, probe_rows))


def attack_population(population: Population, probes: np.ndarray, gallery_deidentified: np.ndarray | None,
                      k: int | None, attackers: dict[str, Any], cache: dict[str, Any]) -> dict[str, Any]:
    """Every attacker against one method's outputs on one population; the worst of them."""
    results = {name: run_attack(name, attacker, population.gallery, probes, population.probe_ids, k,
                                gallery_deidentified, cache) for name, attacker in attackers.items()}
    name, rank1 = worst(results)
    return {"attackers": results, "worst": {"attacker": name, "rank1": rank1,
                                            "p_value": results[name]["p_value"]}}
