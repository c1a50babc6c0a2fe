"""What a release must satisfy before it ships: k-anonymous clusters, nothing that points back."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
from PIL import Image

from kssgan_hpc.data.shards import TRACEABLE_FIELDS
from kssgan_hpc.ksame.clusters import check_cluster_members, check_k

MANIFEST_KEYS = {"format_version", "kind", "created_by", "resolution", "channels", "k", "method",
                 "deidentification", "images", "identities", "splits", "shards", "vocab"}
SHARD_DATASETS = {"images", "identity", "expression", "pose", "gaze", "attributes"}


def check_release_clusters(private: str | Path, k: int | None = None) -> dict:
    """Every released identity (cluster) stands for >= k source identities, each identity in one
    cluster: from the cluster records in out/private. Raises ValueError naming the file otherwise."""
    private = Path(private)
    records = sorted(private.glob("clusters-*.json"))
    if not records:
        raise FileNotFoundError(f"{private}: no cluster records (clusters-<split>.json)")
    sizes = []
    for path in records:
        record = json.loads(path.read_text())
        need = k if k is not None else record["k"]
        try:
            need = check_k(need)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        members = [c["identities"] for c in record["clusters"]]
        try:
            check_cluster_members(members, need)
        except ValueError as err:
            raise ValueError(f"{path}: breaks {need}-anonymity: {err}") from None
        sizes.extend(len(g) for g in members)
    return {"clusters": len(sizes), "min_size": min(sizes), "max_size": max(sizes), "records": len(records)}


def scan_release(release: str | Path, source_names: list[str] = ()) -> list[str]:
    """Every way the release points back to a source: traceable shard fields, manifest keys beyond
    the release's own, PNG metadata, stray files, source names in any text. Empty when clean."""
    release = Path(release)
    problems: list[str] = []
    names = [n for n in source_names if len(n) >= 4]
    texts: list[tuple[str, str]] = []
    manifest = release / "manifest.json"
    if not manifest.is_file():
        return [f"{manifest}: missing"]
    data = json.loads(manifest.read_text())
    extra = sorted(set(data) - MANIFEST_KEYS)
    if extra:
        problems.append(f"{manifest}: keys that do not belong in a release: {extra}")
    texts.append((str(manifest), manifest.read_text()))
    for path in sorted(release.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(release)
        if path.suffix == ".h5":
            with h5py.File(path, "r") as f:
                leaked = sorted(set(f.keys()) & set(TRACEABLE_FIELDS))
                if leaked:
                    problems.append(f"{path}: traceable fields {leaked}")
                unknown = sorted(set(f.keys()) - SHARD_DATASETS - set(TRACEABLE_FIELDS))
                if unknown:
                    problems.append(f"{path}: unexpected datasets {unknown}")
                texts.append((str(path), " ".join(f"{k}={v}" for k, v in f.attrs.items())))
        elif path.suffix == ".png":
            with Image.open(path) as image:
                if image.info or image.getexif():
                    problems.append(f"{path}: carries metadata {sorted(image.info)}")
        elif path.name != "manifest.json":
            problems.append(f"{rel}: a file that does not belong in a release")
    for where, text in texts:
        for name in names:
            if name in text:
                problems.append(f"{where}: names a source ({name!r})")
                break
    return problems
