"""What the rest of a photo gives away: attackers on whole photos whose faces kSS-GAN replaced.

Per population (the people of one split) the probes' kSS-GAN faces (the report's, at one k) are
pasted back into their source photos (release/photos.py) with each mask, and attacked against a
gallery of the same people's original photos in three views:
  whole    the pasted photo as it is released;
  face     the replaced region only (its bounding box, the rest grey);
  context  the photo with the replaced region and its soft edge greyed out, in the probe and in
           each gallery photo alike (the attacker masks their own photos the same way): hair, ears,
           neck, clothes and background are all that is left.
Attackers: low-pass nearest neighbour (16x16 grey), eigenfaces (PCA on the gallery), a generic image
descriptor (HOG: no pretrained generic CNN can be downloaded here) and, where a face is left to find,
SFace. Each view is also attacked on the original photos (nothing replaced): what the same attacker
gets when nobody de-identifies. Rank-1 beside chance and 1/k, the one-sided binomial p-value against
1/k and the worst attacker, as in the report. A context rank-1 above 1/k is identity that k-Same of
the face cannot remove: the threat model says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kssgan_hpc.attack.attackers import Eigenfaces, Gallery, LowPass, run_attack, worst
from kssgan_hpc.attack.population import Population
from kssgan_hpc.data.shards import SOURCES_NAME, open_shard
from kssgan_hpc.errors import InputError
from kssgan_hpc.release.photos import PhotoFace, face_region, paste_faces, photo_root, read_photo

log = logging.getLogger(__name__)

VIEW = 96
"""Side of the square every view is resized to before an attacker sees it."""
VIEWS = ("whole", "face", "context")
GREY = 128


class ImageDescriptor:
    """A generic image descriptor (HOG on 64x64 grey, cosine nearest neighbour), identity-agnostic."""

    name = "generic image descriptor (HOG, 64x64 grey)"

    def __init__(self) -> None:
        self._hog = cv2.HOGDescriptor((64, 64), (16, 16), (8, 8), (8, 8), 9)

    def fit(self, gallery: np.ndarray) -> None:
        pass

    def embed(self, images: np.ndarray) -> np.ndarray:
        features = np.stack([self._hog.compute(cv2.resize(image.mean(-1).astype(np.uint8), (64, 64),
                                                          interpolation=cv2.INTER_AREA)).ravel()
                             for image in images]).astype(np.float64)
        features -= features.mean(1, keepdims=True)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def views(photo: np.ndarray, region: np.ndarray, weight: np.ndarray) -> dict[str, np.ndarray]:
    """The three views of one photo, each [VIEW, VIEW, 3] uint8."""
    def square(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (VIEW, VIEW), interpolation=cv2.INTER_AREA)

    face = np.where(region[..., None], photo, GREY).astype(np.uint8)
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    if len(rows):
        face = face[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    context = np.where(weight[..., None] > 0, GREY, photo).astype(np.uint8)
    return {"whole": square(photo), "face": square(face), "context": square(context)}


class PhotoGeometry:
    """Where each face of a prepped split sits in its source photo, and the photo itself."""

    def __init__(self, pop: Population, folder: str | None) -> None:
        data = pop.data
        self.quads = np.concatenate([_read(path, "quad") for path in data.paths])
        self.sources = np.concatenate([_read(path, "source_index") for path in data.paths])
        if data.rows is not None:
            self.quads, self.sources = self.quads[data.rows], self.sources[data.rows]
        self.root = photo_root(data.manifest, folder)
        lines = (Path(data.paths[0]).parent / SOURCES_NAME).read_text().splitlines()
        self.entries = [json.loads(line) for line in lines if line.strip()]

    def photo(self, row: int) -> np.ndarray:
        """The source photo of a split row, checked against the sha256 prep recorded."""
        from data_prep.decode import SkipImage

        entry = self.entries[int(self.sources[row])]
        try:
            return read_photo(self.root / entry["path"], entry["sha256"], max_pixels=1 << 62)[0]
        except SkipImage as reason:
            raise InputError(f"{self.root / entry['path']}: {reason}; the photo attack needs the photos the "
                             "dataset was made from") from None


def _read(path: str, name: str) -> np.ndarray:
    with open_shard(path) as f:
        return f[name][:]


def photo_attacks(pop: Population, outputs: np.ndarray, k: int, attackers: dict[str, Any], masks: list[str],
                  folder: str | None, feather: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every view, every attacker, per mask, on one population (see the module's doc). Also the whole
    photos, [N, VIEW, VIEW, 3] per mask and for the originals, for a contact sheet."""
    geometry = PhotoGeometry(pop, folder)
    size = pop.data.resolution
    gallery_views: dict[str, dict[str, list[np.ndarray]]] = {m: {v: [] for v in VIEWS} for m in masks}
    for row in pop.gallery_rows:
        photo = geometry.photo(row)
        for mask in masks:
            region, weight = face_region(photo.shape[:2], geometry.quads[row], size, mask, feather)
            for view, image in views(photo, region, weight).items():
                gallery_views[mask][view].append(image)
    probe_views = {m: {source: {v: [] for v in VIEWS} for source in ("original", "kssgan")} for m in masks}
    for row, output in zip(pop.probe_rows, outputs):
        photo = geometry.photo(row)
        face = PhotoFace(0, geometry.quads[row], image=output)
        for mask in masks:
            pasted, region, weight = paste_faces(photo, [face], mask, feather)
            for source, image in (("original", photo), ("kssgan", pasted)):
                for view, seen in views(image, region, weight).items():
                    probe_views[mask][source][view].append(seen)
    results: dict[str, Any] = {"k": k, "chance": 1 / pop.identities, "k_bound": 1 / k, "probes": len(pop.probe_rows),
                               "masks": {}}
    for mask in masks:
        entry: dict[str, Any] = {}
        for source in ("original", "kssgan"):
            for view in VIEWS:
                gallery = Gallery(np.stack(gallery_views[mask][view]), pop.gallery.identities)
                probes = np.stack(probe_views[mask][source][view])
                found = {name: run_attack(name, attacker, gallery, probes, pop.probe_ids, k)
                         for name, attacker in _attackers(attackers, view).items()}
                name, rank1 = worst(found)
                entry.setdefault(source, {})[view] = {"attackers": found, "worst": {
                    "attacker": name, "rank1": rank1, "p_value": found[name]["p_value"]}}
                log.info("photos (%s mask, %s, %s view): worst %s rank-1 %.3f (1/k %.3f)", mask, source, view, name,
                         rank1, 1 / k)
        results["masks"][mask] = entry
    whole = {mask: np.stack(probe_views[mask]["kssgan"]["whole"]) for mask in masks}
    whole["original"] = np.stack(probe_views[masks[0]]["original"]["whole"])
    return results, whole


def _attackers(attackers: dict[str, Any], view: str) -> dict[str, Any]:
    """The attackers of a view: fresh pixel attackers (eigenfaces fits each gallery), SFace where a face is."""
    chosen: dict[str, Any] = {"lowpass16": LowPass(16), "eigenfaces": Eigenfaces(), "descriptor": ImageDescriptor()}
    if view != "context" and "sface" in attackers:
        chosen["sface"] = attackers["sface"]
    return chosen


def format_photo_table(photos: dict[str, Any]) -> str:
    """One line per population, mask, view and source: the worst attacker, its rank-1 and p against 1/k."""
    lines = [f"{'people':>8}  {'mask':>4}  {'view':>7}  {'photos':>8}  {'worst':>10}  {'rank-1':>6}  {'p(1/k)':>7}  "
             f"{'chance':>6}  {'1/k':>5}"]
    for label, result in photos.items():
        for mask, entry in result["masks"].items():
            for source, by_view in entry.items():
                for view, found in by_view.items():
                    best = found["worst"]
                    p = best["p_value"]
                    lines.append(f"{label:>8}  {mask:>4}  {view:>7}  {source:>8}  {best['attacker']:>10}  "
                                 f"{best['rank1']:6.3f}  {(f'{p:.0e}' if p < 0.001 else f'{p:.3f}'):>7}  "
                                 f"{result['chance']:6.3f}  {result['k_bound']:5.3f}")
    return "\n".join(lines)
