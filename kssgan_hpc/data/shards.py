"""The shard format, defined once: HDF5 shards of aligned faces plus manifest.json.

A shard `{split}-{index:05d}.h5` holds:
  images         uint8  [N, H, W, C]  one image per chunk (fast random reads)
  identity       int32  [N]           dense person id, 0..identities-1 (names stay in sources.jsonl)
  expression     int16  [N]           index into vocab.expression, -1 unknown
  pose           int16  [N]           index into vocab.pose, -1 unknown
  gaze           int16  [N]           index into vocab.gaze, -1 unknown
  attributes     int8   [N, A]        0/1 per vocab.attributes name, -1 unknown (A may be 0)
  landmarks      float32[N, 5, 2]     eye L/R, nose, mouth L/R (image left first) in aligned pixels; NaN unknown
  quad           float32[N, 4, 2]     the crop's corners in source pixels; NaN when not aligned
  source_sha256  S64    [N]           sha256 of the source file's bytes
  source_index   int64  [N]           line of sources.jsonl the image came from
and attributes format_version, resolution, channels, split, index, kind.

A de-identified release (`kssgan anonymize`, kind "release") has the same layout without the
fields that point back to a source (TRACEABLE_FIELDS); its identity is the k-Same cluster the face
was generated toward, shared by at least k source people.

manifest.json describes the whole dataset (splits, shards with sha256 and counts, label
vocabularies, skipped inputs). Source names never enter a shard or the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from kssgan_hpc.errors import InputError, RunFailure
from kssgan_hpc.files import fsync_file, temp_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"
SOURCES_NAME = "sources.jsonl"
NUM_LANDMARKS = 5

# Per-image label datasets: name -> (dtype, shape after N, fill value when unknown).
LABEL_FIELDS: dict[str, tuple[Any, tuple[int, ...], Any]] = {
    "identity": (np.int32, (), None),
    "expression": (np.int16, (), -1),
    "pose": (np.int16, (), -1),
    "gaze": (np.int16, (), -1),
    "landmarks": (np.float32, (NUM_LANDMARKS, 2), np.nan),
    "quad": (np.float32, (4, 2), np.nan),
    "source_sha256": ("S64", (), b""),
    "source_index": (np.int64, (), None),
}
# Fields that point back to a source image: never part of a de-identified release.
TRACEABLE_FIELDS = ("landmarks", "quad", "source_sha256", "source_index")
RELEASE_FIELDS = {name: spec for name, spec in LABEL_FIELDS.items() if name not in TRACEABLE_FIELDS}


class ShardError(InputError):
    """A shard or manifest is missing, truncated, altered or of another format; names the file."""


class NoSpace(RunFailure):
    """Too little free space for a shard: refused before HDF5 writes (HDF5 crashes the process, rc 139,
    when the disk fills under it)."""


SHARD_OVERHEAD = 1 << 20
"""Bytes beyond the images a shard may need (labels, HDF5 metadata): a generous bound."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.h5"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ShardInfo:
    name: str
    split: str
    images: int
    sha256: str
    bytes: int


class ShardWriter:
    """Writes one shard to a temp file; `close()` makes it final by rename, `abort()` discards it.

    Images stream to disk one chunk each, so memory stays flat at any resolution.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        split: str,
        index: int,
        resolution: int,
        channels: int,
        num_attributes: int = 0,
        compression: str = "none",
        expected: int = 0,
        release: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        self.path = Path(path)
        self.split = split
        self.tmp = temp_path(self.path)
        self.shape = (resolution, resolution, channels)
        self.num_attributes = num_attributes
        self.fields = RELEASE_FIELDS if release else LABEL_FIELDS
        need = max(expected, 1) * (int(np.prod(self.shape)) + 64 + num_attributes) + SHARD_OVERHEAD
        free = shutil.disk_usage(self.path.parent).free
        if free < need:  # the upper bound (uncompressed): the shard fits whatever its compression
            raise NoSpace(f"{self.path.parent}: {free / 2**20:.1f} MiB free, shard {self.path.name} needs up to "
                          f"{need / 2**20:.1f} MiB; free space and run again (finished shards are kept)")
        self._file = h5py.File(self.tmp, "w")
        self._file.attrs.update(
            format_version=FORMAT_VERSION, resolution=resolution, channels=channels,
            split=split, index=index, kind="release" if release else "dataset",
        )
        self._images = self._file.create_dataset(
            "images", shape=(0, *self.shape), maxshape=(None, *self.shape), dtype=np.uint8,
            chunks=(1, *self.shape), compression=None if compression == "none" else compression,
            track_times=False,  # byte-identical shards for identical inputs: checksums compare across runs
        )
        self._reserve = max(expected, 1)
        self._images.resize(self._reserve, axis=0)
        self._labels: dict[str, list] = {name: [] for name in self.fields}
        self._attributes: list[np.ndarray] = []
        self.count = 0

    def add(self, image: np.ndarray, *, attributes: np.ndarray | None = None, **labels: Any) -> None:
        """Append one aligned image [H, W, C] uint8 with its labels (see LABEL_FIELDS)."""
        if image.shape != self.shape or image.dtype != np.uint8:
            raise ValueError(f"image {image.shape} {image.dtype} does not match shard {self.shape} uint8")
        unknown = set(labels) - set(self.fields)
        if unknown:
            raise ValueError(f"unknown label fields {sorted(unknown)}; valid: {list(self.fields)}")
        if self.count == self._reserve:
            self._reserve *= 2
            self._images.resize(self._reserve, axis=0)
        self._images[self.count] = image
        for name, (dtype, shape, fill) in self.fields.items():
            if name in labels:
                value = labels[name]
            elif fill is None:
                raise ValueError(f"label {name!r} is required")
            else:
                value = np.full(shape, fill, dtype) if shape else fill
            self._labels[name].append(value)
        attrs = np.full(self.num_attributes, -1, np.int8) if attributes is None else attributes
        self._attributes.append(np.asarray(attrs, np.int8).reshape(self.num_attributes))
        self.count += 1

    def close(self) -> ShardInfo:
        """Write labels, flush, fsync and rename the temp file to its final name."""
        self._images.resize(self.count, axis=0)
        for name, (dtype, shape, _) in self.fields.items():
            data = np.asarray(self._labels[name], dtype=dtype).reshape(self.count, *shape)
            self._file.create_dataset(name, data=data, track_times=False)
        attrs = np.stack(self._attributes) if self._attributes else np.zeros((0, self.num_attributes))
        attrs = attrs.astype(np.int8).reshape(self.count, self.num_attributes)
        self._file.create_dataset("attributes", data=attrs, track_times=False)
        self._file.close()
        fsync_file(self.tmp)
        digest = sha256_file(self.tmp)
        size = self.tmp.stat().st_size
        os.replace(self.tmp, self.path)
        return ShardInfo(self.path.name, self.split, self.count, digest, size)

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def open_shard(path: str | Path) -> h5py.File:
    """Open a shard read-only, checking that it is one of ours and of this format version."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise ShardError(f"{path}: shard is missing") from None
    except OSError as err:
        raise ShardError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {err}") from None
    version = f.attrs.get("format_version")
    if version != FORMAT_VERSION or "images" not in f:
        f.close()
        raise ShardError(f"{path}: shard format_version {version!r}, expected {FORMAT_VERSION}")
    return f


def manifest_path(path: str | Path) -> Path:
    """The manifest file of a dataset folder (or the file itself)."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


_SHARD_KEYS = {"name": str, "split": str, "images": int, "sha256": str, "bytes": int}


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read manifest.json and check its structure; accepts the dataset folder or the file itself.

    Shard names must be plain file names in the dataset folder (a manifest cannot send a reader
    elsewhere); every value a reader uses is checked for its type, so damage is an error naming the
    file, never a traceback deep inside a stage."""
    path = manifest_path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(f"{path}: no manifest (run `kssgan prep` first, or finish it with --merge)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"{path}: manifest is not valid JSON (truncated?): {err}") from None
    except OSError as err:
        raise ShardError(f"{path}: manifest unreadable: {err.strerror or err}") from None
    if not isinstance(manifest, dict):
        raise ShardError(f"{path}: manifest is a JSON {type(manifest).__name__}, expected an object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{path}: manifest format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    for key, kind in (("resolution", int), ("channels", int), ("shards", list), ("splits", dict), ("vocab", dict)):
        if key not in manifest:
            raise ShardError(f"{path}: manifest lacks '{key}'")
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise ShardError(f"{path}: manifest '{key}' is {manifest[key]!r}, expected a {kind.__name__}")
    if manifest["channels"] not in (1, 3) or manifest["resolution"] < 1:
        raise ShardError(f"{path}: manifest resolution {manifest['resolution']} x{manifest['channels']} channels "
                         "is not an image size")
    seen = set()
    for i, shard in enumerate(manifest["shards"]):
        where = f"{path}: shards[{i}]"
        if not isinstance(shard, dict):
            raise ShardError(f"{where} is {shard!r}, expected an object")
        for key, kind in _SHARD_KEYS.items():
            if key not in shard:
                raise ShardError(f"{where} lacks '{key}'")
            if not isinstance(shard[key], kind) or isinstance(shard[key], bool):
                raise ShardError(f"{where}: '{key}' is {shard[key]!r}, expected a {kind.__name__}")
        name = shard["name"]
        if Path(name).name != name or name.startswith(".") or not name.endswith(".h5"):
            raise ShardError(f"{where}: shard name {name!r} is not a file name inside the dataset folder")
        if name in seen:
            raise ShardError(f"{where}: shard {name} is listed twice")
        seen.add(name)
        if shard["split"] not in SPLITS:
            raise ShardError(f"{where}: split {shard['split']!r} is not one of {SPLITS}")
        if len(shard["sha256"]) != 64 or not all(c in "0123456789abcdef" for c in shard["sha256"]):
            raise ShardError(f"{where}: sha256 {shard['sha256']!r} is not a hex sha256")
        if shard["images"] < 0 or shard["bytes"] < 0:
            raise ShardError(f"{where}: negative count")
    return manifest


VERIFY_MODES = ("full", "quick")
"""full: every shard's sha256 against the manifest, plus `quick`; quick: size, HDF5 structure,
format, resolution, channels, split and image count of every shard (seconds even at 600 GB)."""


def check_shard(root: Path, shard: dict[str, Any], manifest: dict[str, Any], *, full: bool) -> str | None:
    """What is wrong with one shard of a dataset (None: nothing). Size first (cheap), then the HDF5
    structure against the manifest, then, when `full`, the streamed sha256."""
    path = root / shard["name"]
    if not path.is_file():
        return f"{path}: missing"
    size = path.stat().st_size
    if size != shard["bytes"]:
        return f"{path}: {size} bytes, the manifest says {shard['bytes']} (truncated or replaced)"
    try:
        with open_shard(path) as f:
            shape = f["images"].shape
            attrs = {key: f.attrs.get(key) for key in ("resolution", "channels", "split")}
            lengths = {name: f[name].shape[0] for name in ("identity", "expression", "pose") if name in f}
    except (ShardError, OSError, KeyError) as err:
        return f"{path}: unreadable: {err}"
    expected = (shard["images"], manifest["resolution"], manifest["resolution"], manifest["channels"])
    if tuple(shape) != expected:
        return f"{path}: images {tuple(shape)}, the manifest says {expected}"
    if (attrs["resolution"], attrs["channels"]) != (manifest["resolution"], manifest["channels"]):
        return (f"{path}: shard is {attrs['resolution']}px x{attrs['channels']}, the manifest says "
                f"{manifest['resolution']}px x{manifest['channels']}")
    if attrs["split"] != shard["split"]:
        return f"{path}: shard of split {attrs['split']!r}, the manifest says {shard['split']!r}"
    if "identity" not in lengths or any(n != shard["images"] for n in lengths.values()):
        return f"{path}: label arrays {lengths} do not match {shard['images']} images"
    if full:
        digest = sha256_file(path)
        if digest != shard["sha256"]:
            return (f"{path}: checksum mismatch (sha256 {digest[:12]}…, manifest {shard['sha256'][:12]}…): "
                    "altered or corrupted")
    return None


def file_identity(path: Path) -> list[int]:
    """What changes whenever a file's bytes may have: device, inode, size, mtime and ctime (ns). ctime
    cannot be set back by a user, so an edit that restores the mtime still shows."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def verify_dataset(path: str | Path, mode: str = "full", *, workers: int = 8,
                   hashed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the manifest and check every shard (see VERIFY_MODES) with `workers` threads (hashing and
    reading release the GIL); raises ShardError listing every bad shard. Returns the manifest.

    `hashed` (mode full): shards already hashed, {name: {"sha256", "file": file_identity}}, e.g. by
    the same run before a requeue. A shard whose file is unchanged since and whose manifest digest is
    the one hashed gets the quick check only; on success the dict holds every shard, for the next time."""
    if mode not in VERIFY_MODES:
        raise ShardError(f"verify={mode!r} is invalid; use one of {VERIFY_MODES}")
    file = manifest_path(path)
    manifest = load_manifest(file)
    shards = manifest["shards"]
    known = hashed if hashed is not None else {}

    def check(shard: dict[str, Any]) -> tuple[str | None, list[int] | None, bool]:
        """(problem, the file's identity before it was read, whether it was hashed before)."""
        try:
            identity = file_identity(file.parent / shard["name"])
        except OSError:
            identity = None
        seen = known.get(shard["name"])
        unchanged = (identity is not None and isinstance(seen, dict) and seen.get("sha256") == shard["sha256"]
                     and seen.get("file") == identity)
        return check_shard(file.parent, shard, manifest, full=mode == "full" and not unchanged), identity, unchanged

    with ThreadPoolExecutor(max(1, min(workers, len(shards)))) as pool:
        results = list(pool.map(check, shards))
    problems = [problem for problem, _, _ in results if problem is not None]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ShardError(f"{file}: {len(problems)} bad shard(s): " + "; ".join(problems[:5]) + more)
    if mode == "full" and hashed is not None:
        skipped = sum(unchanged for _, _, unchanged in results)
        log.info("%s: %d shard(s) hashed, %d unchanged since they were hashed", file.parent,
                 len(shards) - skipped, skipped)
        # The identity from before the read: a file changed while it was hashed is hashed again next time.
        hashed.clear()
        hashed.update({shard["name"]: {"sha256": shard["sha256"], "file": identity}
                       for shard, (_, identity, _) in zip(shards, results)})
    return manifest


def split_shards(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    return [s for s in manifest["shards"] if s["split"] == split]
