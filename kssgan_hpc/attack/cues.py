"""Attackers that read what a released face carries beyond its cluster: its pose and its labels.

A released face is its cluster's face moved by a pose offset; registering it to the cluster's mean
face recovers that offset almost exactly, and the cluster's mean face decomposes into its members'
(so cluster membership is recoverable too). These attackers are given both as recovered, which
bounds every registration attack from above:

  posehabit   per person, a zero-mean Gaussian of the pose offsets in the attacker's own photos
              (covariance shrunk to the pooled one): people have habits, one sits still, another
              turns and tilts; a probe goes to the most likely member of its cluster
  labels      per person, the frequencies of expression, pose and gaze labels in the attacker's
              photos (add-one smoothed); a probe goes to the member whose labels fit best

Both return what the appearance attackers return (rank-1, CMC, p-value against 1/k), so a release
is held to the same bound for everything it carries. Where the cues are a secret draw, one draw's
rank-1 is the mechanism's plus the luck of that draw (about 0.05 on 80 probes): the attack runs on
CUE_DRAWS draws and reports their mean, the chance that the attacker is right over the secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kssgan_hpc.attack.attackers import p_value
from kssgan_hpc.attack.measures import cmc_of_scores

LABELS = ("expression", "pose", "gaze")
CUE_DRAWS = 16
"""Secret cue draws each cue attack is run on (the first is the one the de-identified faces show)."""
SHRINKAGE = 5.0
"""Weight of the pooled covariance in each person's, in images: a 5-photo gallery cannot fit 10 dims."""


@dataclass
class ReleasedCues:
    """What each de-identified probe carries beyond its face, as the attacker recovers it."""

    offsets: np.ndarray
    """[N, 5, 2] the pose offset each output shows (its landmarks minus its person's mean); NaN: none."""
    labels: dict[str, np.ndarray]
    """expression, pose, gaze: [N] label indices released with each output (-1: none)."""
    candidates: list[np.ndarray] | None
    """Per probe, the identities it can be (its cluster's people); None: every person attacked."""


def _gallery_offsets(landmarks: np.ndarray, identities: np.ndarray, people: np.ndarray) -> list[np.ndarray]:
    """Per person, [n, 10] offsets of their gallery photos' landmarks from their own gallery mean."""
    out = []
    for person in people:
        points = landmarks[identities == person].reshape(-1, 10).astype(np.float64)
        points = points[np.isfinite(points).all(axis=1)]
        out.append(points - points.mean(0) if len(points) else np.zeros((0, 10)))
    return out


class PoseHabit:
    name = "pose habit (per-person Gaussian of gallery pose offsets; offsets and cluster as registration recovers them)"

    def scores(self, landmarks: np.ndarray, labels: dict[str, np.ndarray], identities: np.ndarray,
               people: np.ndarray, released: ReleasedCues) -> np.ndarray:
        offsets = _gallery_offsets(landmarks, identities, people)
        scatter = sum(x.T @ x for x in offsets)
        dof = sum(max(len(x) - 1, 0) for x in offsets)
        pooled = scatter / max(dof, 1) + 1e-6 * np.eye(10)
        probes = released.offsets.reshape(len(released.offsets), 10).astype(np.float64)
        known = np.isfinite(probes).all(axis=1)
        out = np.zeros((len(probes), len(people)))
        for column, x in enumerate(offsets):
            n = max(len(x) - 1, 0)
            covariance = (x.T @ x + SHRINKAGE * pooled) / (n + SHRINKAGE)
            _, logdet = np.linalg.slogdet(covariance)
            solved = np.linalg.solve(covariance, probes[known].T).T
            out[known, column] = -0.5 * ((probes[known] * solved).sum(1) + logdet)
        return out


class LabelFrequencies:
    name = "label frequencies (per-person expression / pose / gaze frequencies in the gallery)"

    def scores(self, landmarks: np.ndarray, labels: dict[str, np.ndarray], identities: np.ndarray,
               people: np.ndarray, released: ReleasedCues) -> np.ndarray:
        out = np.zeros((len(released.offsets), len(people)))
        for field in LABELS:
            given, probe = labels[field], released.labels[field]
            values = max(int(given.max(initial=-1)), int(probe.max(initial=-1))) + 1
            if values == 0:
                continue  # nothing labelled: nothing to read
            for column, person in enumerate(people):
                seen = given[(identities == person) & (given >= 0)]
                frequency = (np.bincount(seen, minlength=values) + 1.0) / (len(seen) + values)
                out[probe >= 0, column] += np.log(frequency[probe[probe >= 0]])
        return out


def make_cue_attacker(name: str) -> PoseHabit | LabelFrequencies:
    if name == "posehabit":
        return PoseHabit()
    if name == "labels":
        return LabelFrequencies()
    raise ValueError(f"unknown cue attacker {name!r}; use posehabit or labels")


def run_cue_attack(attacker: Any, gallery_landmarks: np.ndarray, gallery_labels: dict[str, np.ndarray],
                   gallery_ids: np.ndarray, released: list[ReleasedCues], probe_ids: np.ndarray,
                   k: int | None) -> dict[str, Any]:
    """One cue attacker against one method's outputs, over each of its cue draws (`released`): each
    probe's score for every person, restricted to its candidates; rank-1 and CMC with ties split at
    random, as the appearance attackers', averaged over the draws. The p-value counts the probes once."""
    people = np.unique(gallery_ids)
    curves = []
    for draw in released:
        scores = attacker.scores(gallery_landmarks, gallery_labels, gallery_ids, people, draw)
        if draw.candidates is not None:
            allowed = np.array([np.isin(people, c) for c in draw.candidates]).reshape(scores.shape)
            scores = np.where(allowed, scores, -np.inf)
        curves.append(cmc_of_scores(scores, np.searchsorted(people, probe_ids)))
    curve = np.mean(curves, axis=0)
    rank1 = float(curve[0])
    return {"rank1": rank1, "cmc": [round(float(v), 4) for v in curve], "probes": len(probe_ids),
            "draws": len(released), "chance": 1 / len(people), "k_bound": None if k is None else 1 / k,
            "p_value": p_value(rank1, len(probe_ids), k)}
