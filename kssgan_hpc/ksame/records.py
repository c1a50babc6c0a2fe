"""`kssgan cluster` and its artefact: clusters.json and the cluster faces beside it, written and read here.

clusters.json: k, method, seed, split, the dataset's shard digests, duplicate merges and, per cluster,
its identities and surrogate embedding. `<name>-faces.safetensors` beside it: per cluster the
k-Same-Pixel average face and the k-Same-Aligned template (members moved onto the mean landmark
frame, then averaged), both k-anonymous by construction (so they may be shown in logs), and the
mean frame itself. Every reader re-checks the guarantee: a hand-edited file must not slip through.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from kssgan_hpc.artefacts import load_siamese
from kssgan_hpc.config.train import ClusterConfig
from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.data.shards import sha256_file, verify_dataset
from kssgan_hpc.errors import InputError
from kssgan_hpc.files import atomic_output, atomic_write_json
from kssgan_hpc.folders import claim_file
from kssgan_hpc.ksame.build import KSame, identity_landmarks, identity_statistics, ksame
from kssgan_hpc.ksame.clusters import TooFewPeople, check_cluster_members, check_k
from kssgan_hpc.ksame.duplicates import Duplicates
from kssgan_hpc.weights import read_weights

log = logging.getLogger(__name__)


def cluster_faces_path(clusters: str | Path) -> Path:
    clusters = Path(clusters)
    return clusters.with_name(clusters.stem + "-faces.safetensors")


def load_clusters(path: str | Path, k: int | None = None) -> dict[str, Any]:
    """Read clusters.json and re-check the guarantee (a hand-edited file must not slip through): against
    `k`, the anonymity the user asked for, when given; a file that claims less is refused too."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no clusters file (run `kssgan cluster` first)")
    try:
        data = json.loads(path.read_text())
        members = [c["identities"] for c in data["clusters"]]
        claimed = data["k"]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON (truncated?): {err}") from None
    except (KeyError, TypeError) as err:
        raise InputError(f"{path}: not a clusters file: lacks {err}") from None
    try:
        if k is not None and check_k(k) > check_k(claimed):
            raise ValueError(f"the file is for k={claimed}, k={k} was asked for")
        check_cluster_members(members, claimed if k is None else k, data.get("duplicates", {}).get("merged", []))
    except ValueError as err:
        raise InputError(f"{path}: breaks k-anonymity: {err}") from None
    return data


def load_cluster_faces(path: str | Path, record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The k-anonymous faces beside clusters.json (`record`, its contents): `pixel` (k-Same-Pixel),
    `aligned` (k-Same-Aligned templates in the mean frame), uint8 [clusters, C, H, W], and `frame` [5, 2].
    The two files are two renames: the record names the faces' sha256, so a pair from two runs (one
    killed between its renames) is refused, never used together."""
    faces = cluster_faces_path(path)
    if not faces.is_file():
        raise InputError(f"{faces}: the cluster faces are missing (rerun `kssgan cluster`)")
    expected = record.get("cluster_faces_sha256")
    if expected is None:
        raise InputError(f"{path}: names no digest of {faces.name} (written by an older kssgan): rerun `kssgan cluster`")
    if sha256_file(faces) != expected:
        raise InputError(f"{faces}: is not the file {path} was written with (sha256 differs: a `kssgan cluster` "
                         "cut short between its two files?): rerun `kssgan cluster`")
    return read_weights(faces)


def ksame_from_file(path: str | Path, data: FaceShards, k: int | None = None) -> KSame:
    """The training people's k-Same as `kssgan cluster` wrote it (re-checked on load against `k`, the
    anonymity asked for); `data` is their split (for each person's mean landmarks)."""
    record = load_clusters(path, k)
    faces = load_cluster_faces(path, record)
    ids = np.array(sorted(i for c in record["clusters"] for i in c["identities"]))
    row = {int(i): n for n, i in enumerate(ids)}
    merged = record.get("duplicates", {}).get("merged", [])
    in_merged = {i for m in merged for i in m}
    people = merged + [[int(i)] for i in ids if int(i) not in in_merged]
    return KSame(k=int(record["k"]), ids=ids, groups=[[row[i] for i in c["identities"]] for c in record["clusters"]],
                 duplicates=Duplicates(pairs=record.get("duplicates", {}).get("pairs", []), people=people),
                 surrogates=np.array([c["surrogate"] for c in record["clusters"]], np.float32),
                 pixel=faces["pixel"].numpy(), aligned=faces["aligned"].numpy(), frame=faces["frame"].numpy(),
                 identity_landmarks=identity_landmarks(data, ids))


def build_clusters(cfg: ClusterConfig) -> dict[str, Any]:
    """Cluster the identities of `cfg.split`; write clusters.json and the cluster faces."""
    out = Path(cfg.out)
    claim_file(out, "clusters")  # checked first: nothing is computed for an output that would be refused
    model, siamese_cfg = load_siamese(cfg.siamese)
    manifest = verify_dataset(cfg.data, cfg.verify)
    data = FaceShards(Path(cfg.data), cfg.split)
    if (data.resolution, data.channels) != (siamese_cfg.model.resolution, siamese_cfg.model.channels):
        raise InputError(f"{cfg.data} is {data.resolution}px x{data.channels}, the Siamese in {cfg.siamese} "
                         f"expects {siamese_cfg.model.resolution}px x{siamese_cfg.model.channels}")
    try:
        clustering = ksame(identity_statistics(model, data, cfg.batch_size), cfg.k, method=cfg.method,
                           seed=cfg.seed, duplicates=cfg.duplicates)
    except TooFewPeople as err:
        raise TooFewPeople(f"{cfg.data}: split '{cfg.split}': {err} (lower k or use a larger split)") from None
    faces_path = cluster_faces_path(out)
    with atomic_output(faces_path) as tmp:
        save_file({"pixel": torch.from_numpy(clustering.pixel), "aligned": torch.from_numpy(clustering.aligned),
                   "frame": torch.from_numpy(clustering.frame)}, tmp)
    result = {
        "kind": "clusters",
        "k": cfg.k,
        "method": cfg.method,
        "seed": cfg.seed,
        "split": cfg.split,
        "identities": len(clustering.ids),
        "dataset_shards": [s["sha256"] for s in manifest["shards"] if s["split"] == cfg.split],
        "cluster_faces": faces_path.name,
        "cluster_faces_sha256": sha256_file(faces_path),
        "duplicates": {**dataclasses.asdict(cfg.duplicates), "pairs": clustering.duplicates.pairs,
                       "merged": clustering.duplicates.merged},
        "clusters": [{"cluster": c, "identities": clustering.ids_of(c), "surrogate": clustering.surrogates[c].tolist()}
                     for c in range(len(clustering.groups))],
    }
    atomic_write_json(out, result)
    sizes = [len(g) for g in clustering.groups]
    log.info("%d identities -> %d clusters (sizes %d..%d, k=%d)", len(clustering.ids), len(sizes), min(sizes),
             max(sizes), cfg.k)
    return result
