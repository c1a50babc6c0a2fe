"""What a release must satisfy before it ships: k-anonymous clusters, nothing that points back."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from kssgan_hpc.data.shards import SOURCES_NAME, TRACEABLE_FIELDS, load_manifest
from kssgan_hpc.ksame.clusters import check_cluster_members, check_k

MANIFEST_KEYS = {"format_version", "kind", "created_by", "resolution", "channels", "k", "method",
                 "deidentification", "gate", "images", "identities", "splits", "shards", "vocab", "photos"}
SHARD_DATASETS = {"images", "identity", "expression", "pose", "gaze", "attributes"}
PHOTO_SUFFIXES = (".jpg", ".png", ".pgm", ".ppm", ".bmp", ".tif", ".webp")
FORMAT_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "compression", "loop", "background",
               "resolution"}
"""What PIL reads from a file it wrote itself with no metadata (format headers, not metadata)."""
TIFF_STRUCTURE = {256, 257, 258, 259, 262, 273, 277, 278, 279, 282, 283, 284, 296, 317, 338, 339}
"""Baseline TIFF tags that describe the pixels (size, samples, strips, compression, resolution)."""


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
            check_cluster_members(members, need, record.get("merged", []))
        except ValueError as err:
            raise ValueError(f"{path}: breaks {need}-anonymity: {err}") from None
        sizes.extend(len(g) for g in members)
    return {"clusters": len(sizes), "min_size": min(sizes), "max_size": max(sizes), "records": len(records)}


@dataclass
class SourceSecrets:
    """What must never appear in a release: every source's path, identity name and digest (hex and raw
    bytes), and the landmark and quad arrays that locate each face in its source."""

    names: list[str] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)

    @classmethod
    def of_datasets(cls, *folders: str | Path) -> SourceSecrets:
        """From prepped datasets' sources.jsonl and shards (the data a release was made from)."""
        names: set[str] = set()
        blobs: set[bytes] = set()
        for data in map(Path, folders):
            sources = [json.loads(line) for line in (data / SOURCES_NAME).read_text().splitlines() if line.strip()]
            names |= {s["path"] for s in sources} | {s["identity"] for s in sources}
            names |= {s["sha256"] for s in sources if s.get("sha256")}
            blobs |= {bytes.fromhex(s["sha256"]) for s in sources if s.get("sha256")}
            for shard in load_manifest(data)["shards"]:
                with h5py.File(data / shard["name"], "r") as f:
                    for field_name in ("landmarks", "quad"):
                        if field_name in f:
                            arrays = np.asarray(f[field_name][:], np.float32)
                            blobs |= {a.tobytes() for a in arrays if np.isfinite(a).all()}
        return cls(names=sorted(n for n in names if n), blobs=sorted(blobs))


def _name_pattern(names: list[str]) -> re.Pattern | None:
    """Any of `names` as a whole token (`s12` matches in "s12/3.pgm" and "id s12", not in "s120").
    Names that are only digits are left out: a number alone names nobody outside its dataset, and the
    release's own cluster ids and counts are numbers."""
    names = [n for n in names if not n.isdigit()]
    if not names:
        return None
    body = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(f"(?<![A-Za-z0-9])(?:{body})(?![A-Za-z0-9])")


class _Blobs:
    """Byte strings (each >= 8 bytes) to find in buffers: every 8-byte window of a buffer, at every
    offset, is looked up among the blobs' first 8 bytes (numpy), and only a hit is compared in full."""

    def __init__(self, blobs: list[bytes]) -> None:
        self.by_prefix: dict[int, list[bytes]] = {}
        for blob in blobs:
            if len(blob) >= 8:
                self.by_prefix.setdefault(int.from_bytes(blob[:8], "little"), []).append(blob)
        self.prefixes = np.array(sorted(self.by_prefix), np.uint64)

    def find(self, buffer: bytes) -> bytes | None:
        """The first blob found anywhere in `buffer`, else None."""
        if len(buffer) < 8 or not len(self.prefixes):
            return None
        for shift in range(8):
            windows = np.frombuffer(buffer, dtype="<u8", count=(len(buffer) - shift) // 8, offset=shift)
            for hit in np.flatnonzero(np.isin(windows, self.prefixes)):
                at = shift + 8 * int(hit)
                for blob in self.by_prefix[int(windows[hit])]:
                    if buffer.startswith(blob, at):
                        return blob
        return None


def scan_release(release: str | Path, secrets: SourceSecrets | None = None) -> list[str]:
    """Every way the release points back to a source: traceable shard fields, manifest keys beyond
    the release's own, PNG metadata, stray files; and any source path, identity name or digest in any
    text (file names, the manifest, every HDF5 attribute and string at every level), and any digest
    or landmark/quad array in the bytes of any dataset. Empty when clean."""
    release = Path(release)
    secrets = secrets or SourceSecrets()
    pattern = _name_pattern(secrets.names)
    blobs = _Blobs(secrets.blobs)
    problems: list[str] = []
    texts: list[tuple[str, str]] = []
    manifest = release / "manifest.json"
    if not manifest.is_file():
        return [f"{manifest}: missing"]
    data = json.loads(manifest.read_text())
    extra = sorted(set(data) - MANIFEST_KEYS)
    if extra:
        problems.append(f"{manifest}: keys that do not belong in a release: {extra}")
    texts.append((str(manifest), manifest.read_text()))

    def scan_h5(path: Path) -> None:
        with h5py.File(path, "r") as f:
            leaked = sorted(set(f.keys()) & set(TRACEABLE_FIELDS))
            if leaked:
                problems.append(f"{path}: traceable fields {leaked}")
            unknown = sorted(set(f.keys()) - SHARD_DATASETS - set(TRACEABLE_FIELDS))
            if unknown:
                problems.append(f"{path}: unexpected datasets {unknown}")
            objects: list[tuple[str, Any]] = [("/", f)]
            f.visititems(lambda name, obj: objects.append((name, obj)))
            for name, obj in objects:
                where = f"{path}:{name}"
                texts.append((where, f"{name} " + " ".join(f"{k}={_text(v)}" for k, v in obj.attrs.items())))
                for value in obj.attrs.values():
                    if isinstance(value, (bytes, np.ndarray)) and blobs.find(_raw(value)):
                        problems.append(f"{where}: an attribute holds a source digest or landmarks")
                if isinstance(obj, h5py.Dataset):
                    found = None
                    for values in _blocks(obj):
                        if obj.dtype.kind in "SOU":
                            texts.append((where, _text(values)))
                        found = found or blobs.find(_raw(values))
                    if found is not None:
                        problems.append(f"{where}: holds a source's {'digest' if len(found) == 32 else 'landmarks'}"
                                        " in its bytes")

    for path in sorted(release.rglob("*")):
        texts.append((str(path), str(path.relative_to(release))))
        if path.is_dir():
            continue
        rel = path.relative_to(release)
        if path.suffix == ".h5":
            scan_h5(path)
        elif path.suffix == ".png" or (rel.parts[0] == "photos" and path.suffix in PHOTO_SUFFIXES):
            with Image.open(path) as image:
                carried = sorted(set(image.info) - FORMAT_INFO)
                # A TIFF's own structure is tags too: only tags beyond it are metadata.
                tags = sorted(set(image.getexif()) - (TIFF_STRUCTURE if image.format == "TIFF" else set()))
                if carried or tags:
                    problems.append(f"{path}: carries metadata {carried or ['exif tags ' + str(tags)]}")
        elif path.name != "manifest.json":
            problems.append(f"{rel}: a file that does not belong in a release")
    if pattern is not None:
        for where, text in texts:
            match = pattern.search(text)
            if match:
                problems.append(f"{where}: names a source ({match.group(0)!r})")
    return problems


def _blocks(dataset: h5py.Dataset, size: int = 64 << 20) -> Any:
    """A dataset's values in blocks of whole rows of about `size` bytes (a 1024 px shard is ~800 MB)."""
    if dataset.shape == () or dataset.nbytes <= size:
        yield dataset[()]
        return
    rows = max(1, size // max(1, dataset.nbytes // dataset.shape[0]))
    for start in range(0, dataset.shape[0], rows):
        yield dataset[start:start + rows]


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else np.ascontiguousarray(value).tobytes()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return " ".join(_text(v) for v in value.ravel().tolist())
    return str(value)
