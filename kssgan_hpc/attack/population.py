"""The people under attack: per person, a gallery of originals for the attacker and probes to de-identify.

Per person, the first gallery_per_identity images (dataset order) are the attacker's gallery of
originals and the next probes_per_identity are de-identified by the method under test and attacked
by every attacker. `attack_population` is the one measurement shared by the release gate,
checkpoint selection and the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from kssgan_hpc.attack.attackers import Gallery, run_attack, worst
from kssgan_hpc.attack.cues import CUE_DRAWS, LABELS, ReleasedCues, run_cue_attack
from kssgan_hpc.config.gate import CUE_ATTACKERS
from kssgan_hpc.data.dataset import FaceShards, read_images
from kssgan_hpc.ksame.build import KSame, identity_landmarks
from kssgan_hpc.ksame.deidentify import cue_labels, draw_cues


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

    @cached_property
    def _person_landmarks(self) -> tuple[np.ndarray, np.ndarray]:
        """(every person of the split, their mean landmarks): what is a person's, not a pose's."""
        people = np.unique(self.data.labels["identity"])
        return people, identity_landmarks(self.data, people)

    def cues(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return cue_labels(self.data.labels, rows)

    def shown_cues(self, clustering: KSame, secret: int, policy: str) -> tuple[np.ndarray, list[ReleasedCues]]:
        """Whose cues each image of the split shows in a release with this `policy` and `secret`
        (draw_cues), and what the probes then carry: in that draw, then in CUE_DRAWS - 1 others."""
        ids = self.data.labels["identity"]
        draws = 1 if policy == "own" else CUE_DRAWS
        shown = [draw_cues(ids, clustering, secret, policy, replica) for replica in range(draws)]
        return shown[0], [self.released_cues(s[self.probe_rows], clustering) for s in shown]

    def released_cues(self, shown: np.ndarray | None, clustering: KSame | None) -> ReleasedCues:
        """What the probes carry beyond their faces when probe i shows the cues of image `shown[i]`:
        that image's pose offset (its landmarks minus its person's mean) and labels; None: nothing
        (k-Same-Pixel's one face per cluster). With a `clustering`, each probe can only be one of its
        cluster's people (recoverable from the cluster's face); without, anyone."""
        labels = self.data.labels
        if shown is None:
            offsets = np.full((len(self.probe_rows), *labels["landmarks"].shape[1:]), np.nan, np.float32)
            shown_labels = {f: np.full(len(self.probe_rows), -1, np.int64) for f in LABELS}
        else:
            people, means = self._person_landmarks
            offsets = labels["landmarks"][shown] - means[np.searchsorted(people, labels["identity"][shown])]
            shown_labels = {f: labels[f][shown].astype(np.int64) for f in LABELS}
        candidates = None if clustering is None else [np.asarray(clustering.ids_of(c))
                                                      for c in clustering.clusters_of(self.probe_ids)]
        return ReleasedCues(offsets=offsets, labels=shown_labels, candidates=candidates)


def population_of(data: FaceShards, gallery_per_identity: int, probes_per_identity: int) -> Population:
    gallery_rows, probe_rows = gallery_and_probes(data.labels["identity"], gallery_per_identity, probes_per_identity)
    return Population(data, gallery_rows, probe_rows,
                      Gallery(read_images(data, gallery_rows), data.labels["identity"][gallery_rows]),
                      read_images(data, probe_rows))


def attack_population(population: Population, probes: np.ndarray, gallery_deidentified: np.ndarray | None,
                      k: int | None, attackers: dict[str, Any], cache: dict[str, Any],
                      released: list[ReleasedCues] | None = None) -> dict[str, Any]:
    """Every attacker against one method's outputs on one population; the worst of them. The cue
    attackers read `released`, what each probe carries beyond its face, in each cue draw."""
    rows = population.gallery_rows
    labels = {f: population.data.labels[f][rows] for f in LABELS}
    results = {}
    for name, attacker in attackers.items():
        if name in CUE_ATTACKERS:
            if released is None:
                raise ValueError(f"the {name} attacker needs what the probes carry beyond their faces")
            results[name] = run_cue_attack(attacker, population.data.labels["landmarks"][rows], labels,
                                           population.gallery.identities, released, population.probe_ids, k)
        else:
            results[name] = run_attack(name, attacker, population.gallery, probes, population.probe_ids, k,
                                       gallery_deidentified, cache)
    name, rank1 = worst(results)
    return {"attackers": results, "worst": {"attacker": name, "rank1": rank1,
                                            "p_value": results[name]["p_value"]}}
