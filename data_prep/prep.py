"""`kssgan prep`: list a source, plan identity-disjoint shards, align and pack faces, write the manifest.

Stages, each resumable:
  plan   list inputs, hash their bytes (duplicates, changes), split identities, cut shards
         -> <out>/.prep/plan.json (reused by every rerun and every array part)
  pack   per shard: read, decode, align, write a temp shard, rename; a sidecar
         <out>/.prep/<shard>.json records its checksum, so a rerun skips it
  merge  all shards complete -> sources.jsonl, then manifest.json (written last)
`--part i --parts n` packs every n-th shard so a Slurm array can share the work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data_prep.align import FaceDetector, align_face
from data_prep.decode import SkipImage, decode_image
from data_prep.faces import expand_faces
from data_prep.sources import SourceListing, list_source
from kssgan_hpc import __version__
from kssgan_hpc.config import PrepConfig, to_dict
from kssgan_hpc.data.shards import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SOURCES_NAME,
    SPLITS,
    ShardWriter,
    check_shard,
    sha256_file,
    shard_name,
)
from kssgan_hpc.errors import InputError, RunFailure
from kssgan_hpc.files import atomic_write_json, atomic_write_text, stale_temp_files
from kssgan_hpc.folders import claim_folder
from kssgan_hpc.testhooks import hold_prep_worker

log = logging.getLogger(__name__)
STATE_DIR = ".prep"
PLAN_NAME = "plan.json"
# Settings that do not change what is written: a rerun may change them freely.
RUN_ONLY_KEYS = ("out", "input", "workers")


class PrepError(InputError):
    """Prep cannot go on (output not writable, other settings in --out, nothing usable)."""


@dataclass
class ShardPlan:
    split: str
    index: int
    sources: list[int]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


@dataclass
class PrepPlan:
    config_fingerprint: str
    listing_fingerprint: str
    method: str
    sha256: list[str | None]
    skipped: dict[int, str]
    identity_ids: dict[str, int]
    identity_split: dict[str, str]
    shards: list[ShardPlan]


@dataclass
class PrepResult:
    out: Path
    shards_total: int
    shards_written: int
    shards_reused: int
    manifest: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- plan

def config_fingerprint(cfg: PrepConfig) -> str:
    settings = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def listing_fingerprint(listing: SourceListing) -> str:
    digest = hashlib.sha256()
    for record in listing.records:
        path = listing.root / record.path
        stat = path.stat() if path.is_file() else None
        entry = [record.path, record.identity, stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1]
        digest.update(json.dumps(entry).encode())
    return digest.hexdigest()


def _hash_file(path: Path) -> tuple[str | None, str | None]:
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        return sha256_file(path), None
    except OSError as err:
        return None, f"unreadable: {err.strerror or err}"


def split_identities(
    identities: list[str], cfg: PrepConfig, partitions: dict[str, Counter] | None = None
) -> dict[str, str]:
    """Assign whole identities to splits: the dataset's partition (majority per person) or seeded fractions."""
    if partitions and cfg.split.use_source_partition:
        return {
            name: max(SPLITS, key=lambda s: (partitions.get(name, Counter())[s], -SPLITS.index(s)))
            for name in identities
        }
    n = len(identities)
    fractions = np.array([cfg.split.train, cfg.split.val, cfg.split.test])
    counts = np.floor(fractions * n).astype(int)
    # Every split asked for gets at least one person when there are enough people.
    wanted = fractions > 0
    if n >= wanted.sum():
        counts[wanted & (counts == 0)] = 1
    while counts.sum() > n:
        counts[np.argmax(counts)] -= 1
    while counts.sum() < n:
        counts[np.argmax(fractions * n - counts)] += 1
    order = np.random.default_rng(cfg.split.seed).permutation(n)
    assignment = {}
    start = 0
    for split, count in zip(SPLITS, counts):
        for position in order[start:start + count]:
            assignment[identities[position]] = split
        start += count
    return assignment


def make_plan(cfg: PrepConfig, listing: SourceListing, workers: int, progress: bool) -> PrepPlan:
    records = listing.records
    skipped = {i: r.skip for i, r in enumerate(records) if r.skip}
    todo = [i for i in range(len(records)) if i not in skipped]
    paths = [listing.root / records[i].path for i in todo]
    sha256: list[str | None] = [None] * len(records)
    hashed = _map(_hash_file, paths, workers, chunksize=32)
    seen: dict[tuple[str | None, int | None], int] = {}
    for i, (digest, problem) in zip(todo, tqdm(hashed, total=len(todo), desc="hash inputs", disable=not progress)):
        if problem:
            skipped[i] = problem
        elif (digest, records[i].face) in seen:  # one photo's faces share its digest
            skipped[i] = f"duplicate content of source #{seen[digest, records[i].face]}"
        else:
            seen[digest, records[i].face] = i
        sha256[i] = digest
    kept = [i for i in todo if i not in skipped]
    names = sorted({records[i].identity for i in kept})
    partitions: dict[str, Counter] = {}
    for i in kept:
        if records[i].partition:
            partitions.setdefault(records[i].identity, Counter())[records[i].partition] += 1
    identity_split = split_identities(names, cfg, partitions)

    method = cfg.align.method
    if method == "auto":
        method = "landmarks" if any(records[i].landmarks for i in kept) else "detector"
    shards = []
    for split in SPLITS:
        members = [i for i in kept if identity_split[records[i].identity] == split]
        for index, start in enumerate(range(0, len(members), cfg.images_per_shard)):
            shards.append(ShardPlan(split, index, members[start:start + cfg.images_per_shard]))
    return PrepPlan(
        config_fingerprint=config_fingerprint(cfg),
        listing_fingerprint=listing_fingerprint(listing),
        method=method,
        sha256=sha256,
        skipped=skipped,
        identity_ids={name: i for i, name in enumerate(names)},
        identity_split=identity_split,
        shards=shards,
    )


def load_or_make_plan(cfg: PrepConfig, listing: SourceListing, state: Path, progress: bool) -> PrepPlan:
    path = state / PLAN_NAME
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["config_fingerprint"] != config_fingerprint(cfg):
            old = saved.get("config", {})
            new = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS}
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k])
            raise PrepError(
                f"{cfg.out}: already holds a prep made with other settings ({diff}); "
                "use a new --out or delete the folder"
            )
        if saved["listing_fingerprint"] != listing_fingerprint(listing):
            raise PrepError(
                f"{cfg.out}: the input files changed since this prep was planned "
                f"({listing.root}); use a new --out or delete the folder"
            )
        saved["shards"] = [ShardPlan(**s) for s in saved["shards"]]
        saved["skipped"] = {int(k): v for k, v in saved["skipped"].items()}
        saved.pop("config", None)
        return PrepPlan(**saved)
    plan = make_plan(cfg, listing, cfg.workers, progress)
    data = dataclasses.asdict(plan)
    data["config"] = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS}
    atomic_write_json(path, data)
    return plan


# ----------------------------------------------------------------------------- pack
# Each worker process packs whole shards, so aligned images never cross a process boundary
# (pickling them through a pipe cost the main process ~2 ms per image); shards are many on any
# real dataset, and the largest go first to balance the tail.

@dataclass
class _PackContext:
    cfg: PrepConfig
    listing: SourceListing
    plan: PrepPlan
    out: Path
    state: Path
    done: Any  # shared counter of images handled, for the progress bar
    detector: FaceDetector | None = None


_context: _PackContext | None = None


def _init_packer(context: _PackContext) -> None:
    global _context
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = context.cfg
    if context.plan.method == "detector":
        context.detector = FaceDetector(cfg.align.detector_score, cfg.align.detector_min_side)
    _context = context


def _align_source(source: int) -> tuple[Any, list[str], str | None]:
    """Read, verify, decode and align one input: (AlignedFace | None, conversions, skip reason)."""
    ctx = _context
    cfg, record = ctx.cfg, ctx.listing.records[source]
    try:
        with open(ctx.listing.root / record.path, "rb") as fh:
            data = fh.read()
        if hashlib.sha256(data).hexdigest() != ctx.plan.sha256[source]:
            raise SkipImage("file changed after planning (checksum differs)")
        rgb, conversions = decode_image(data, min_size=cfg.min_size, max_pixels=cfg.max_pixels)
        landmarks = None if record.landmarks is None else np.asarray(record.landmarks, np.float64)
        face = align_face(
            rgb, size=cfg.resolution, method=ctx.plan.method, landmarks=landmarks,
            detector=ctx.detector, crop_scale=cfg.align.crop_scale,
        )
        if cfg.channels == 1:
            grey = np.asarray(face.image, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            face.image = grey.round().clip(0, 255).astype(np.uint8)[:, :, None]
        return face, conversions, None
    except SkipImage as reason:
        return None, [], str(reason)
    except OSError as err:
        return None, [], f"unreadable: {err.strerror or err}"


def _pack_shard(shard: ShardPlan) -> dict[str, Any]:
    """Align every input of one shard and write it (temp file, rename), then its sidecar."""
    ctx = _context
    cfg, listing, plan = ctx.cfg, ctx.listing, ctx.plan
    skipped: list[dict[str, Any]] = []
    converted: dict[str, list[int]] = {}
    with ShardWriter(
        ctx.out / shard.name, split=shard.split, index=shard.index, resolution=cfg.resolution,
        channels=cfg.channels, num_attributes=len(listing.vocab["attributes"]),
        compression=cfg.compression, expected=len(shard.sources),
    ) as writer:
        for source in shard.sources:
            face, conversions, reason = _align_source(source)
            with ctx.done.get_lock():
                ctx.done.value += 1
            if reason is not None:
                skipped.append({"source": source, "reason": reason})
                continue
            for what in conversions:
                converted.setdefault(what, []).append(source)
            record = listing.records[source]
            writer.add(
                face.image,
                identity=plan.identity_ids[record.identity],
                expression=listing.label_index("expression", record.expression),
                pose=listing.label_index("pose", record.pose),
                gaze=listing.label_index("gaze", record.gaze),
                attributes=None if record.attributes is None else np.asarray(record.attributes, np.int8),
                landmarks=face.landmarks,
                quad=face.quad,
                source_sha256=plan.sha256[source].encode(),
                source_index=source,
            )
        hold_prep_worker(ctx.state)  # a test hook; nothing unless a test sets it
        info = writer.close()
    sidecar = {**dataclasses.asdict(info), "index": shard.index, "skipped": skipped, "converted": converted}
    # Recorded only after the shard on disk reads back whole, with the planned count.
    problem = check_shard(ctx.out, sidecar, {"resolution": cfg.resolution, "channels": cfg.channels}, full=True)
    if problem is not None or info.images != len(shard.sources) - len(skipped):
        raise PrepError(f"{problem or ctx.out / shard.name}: the shard did not read back as written "
                        f"({info.images} of {len(shard.sources) - len(skipped)} images); rerun prep")
    atomic_write_json(ctx.state / f"{shard.name}.json", sidecar)
    return sidecar


def _map(fn: Callable, items: list, workers: int, *, chunksize: int = 1, ordered: bool = True,
         initializer: Callable | None = None, initargs: tuple = (), poll: float | None = None) -> Iterator:
    """map() over a forked process pool (in-process for one worker). With `poll` (chunksize 1), yields
    None every `poll` seconds while waiting, so the caller can refresh its progress bar."""
    if workers <= 1 or len(items) <= 1:
        if initializer:
            initializer(*initargs)
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(min(workers, len(items)), initializer=initializer, initargs=initargs) as pool:
        results = (pool.imap if ordered else pool.imap_unordered)(fn, items, chunksize)
        if poll is None:
            yield from results
            return
        while True:
            try:
                yield results.next(timeout=poll)
            except multiprocessing.TimeoutError:
                yield None  # lets the caller refresh progress while workers are busy
            except StopIteration:
                return


def _shard_complete(cfg: PrepConfig, out: Path, state: Path, shard: ShardPlan) -> bool:
    """A record is trusted only while its shard passes the full check against it (size, structure,
    count, sha256): a record of a broken shard, however it came about, means pack it again."""
    sidecar = state / f"{shard.name}.json"
    if not sidecar.is_file():
        return False
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    problem = check_shard(out, record, {"resolution": cfg.resolution, "channels": cfg.channels}, full=True)
    if problem is not None:
        log.warning("%s: recorded as complete but %s; packing it again", shard.name, problem.split(": ", 1)[-1])
    return problem is None


def _remove_temp_files(out: Path, state: Path, shard: ShardPlan) -> None:
    for stale in [*stale_temp_files(out / shard.name), *stale_temp_files(state / f"{shard.name}.json")]:
        log.info("removing half-written %s", stale)
        stale.unlink(missing_ok=True)


def _pack(cfg: PrepConfig, listing: SourceListing, plan: PrepPlan, shards: list[ShardPlan],
          out: Path, state: Path, progress: bool) -> None:
    done = multiprocessing.get_context("fork").Value("q", 0)
    context = _PackContext(cfg=cfg, listing=listing, plan=plan, out=out, state=state, done=done)
    largest_first = sorted(shards, key=lambda s: -len(s.sources))
    bar = tqdm(total=sum(len(s.sources) for s in shards), desc="align + pack", unit="img", disable=not progress)
    for sidecar in _map(_pack_shard, largest_first, cfg.workers, ordered=False, poll=0.5,
                        initializer=_init_packer, initargs=(context,)):
        bar.update(done.value - bar.n)
        if sidecar is not None:
            log.info("wrote %s: %d images, %d skipped", sidecar["name"], sidecar["images"], len(sidecar["skipped"]))
    bar.close()


# ----------------------------------------------------------------------------- merge

def _write_manifest(cfg: PrepConfig, listing: SourceListing, plan: PrepPlan, out: Path,
                    state: Path) -> dict[str, Any]:
    sidecars = [json.loads((state / f"{s.name}.json").read_text()) for s in plan.shards]
    skipped = [{"source": i, "reason": r} for i, r in plan.skipped.items()]
    converted: dict[str, list[int]] = {}
    splits: dict[str, dict[str, Any]] = {s: {"images": 0, "identities": [], "shards": []} for s in SPLITS}
    for sidecar in sidecars:
        skipped.extend(sidecar["skipped"])
        for what, sources in sidecar["converted"].items():
            converted.setdefault(what, []).extend(sources)
        split = splits[sidecar["split"]]
        split["images"] += sidecar["images"]
        split["shards"].append(sidecar["name"])
    by_name = {shard.name: shard for shard in plan.shards}
    for sidecar in sidecars:
        dropped = {s["source"] for s in sidecar["skipped"]}
        ids = {plan.identity_ids[listing.records[i].identity]
               for i in by_name[sidecar["name"]].sources if i not in dropped}
        splits[sidecar["split"]]["identities"].extend(ids)
    for split in splits.values():
        split["identities"] = sorted(set(split["identities"]))
    total = sum(s["images"] for s in splits.values())
    if total == 0:
        reasons = Counter(s["reason"] for s in skipped).most_common(3)
        raise PrepError(
            f"{out}: no usable image among {len(listing.records)} inputs from {listing.root}; "
            f"most common reasons: {reasons}"
        )
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_by": f"kssgan-hpc {__version__}",
        "source": cfg.source,
        "resolution": cfg.resolution,
        "channels": cfg.channels,
        "align": plan.method,
        "images": total,
        "identities": sum(len(s["identities"]) for s in splits.values()),
        "splits": splits,
        "shards": [{k: s[k] for k in ("name", "split", "images", "sha256", "bytes")} for s in sidecars],
        "vocab": listing.vocab,
        "skipped": sorted(skipped, key=lambda s: s["source"]),
        "converted": {k: sorted(v) for k, v in sorted(converted.items())},
        "config": {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS},
    }
    lines = [
        json.dumps({"source": i, "path": r.path, "identity": r.identity, "sha256": plan.sha256[i],
                    **({"face": r.face} if r.face is not None else {})})
        for i, r in enumerate(listing.records)
    ]
    atomic_write_text(out / SOURCES_NAME, "\n".join(lines) + "\n")
    atomic_write_json(out / MANIFEST_NAME, manifest)
    return manifest


# ----------------------------------------------------------------------------- entry

def run_prep(cfg: PrepConfig, *, part: int | None = None, parts: int = 1, merge: bool = False,
             progress: bool = True) -> PrepResult:
    """Prep `cfg.source` into `cfg.out`. With part/parts only every parts-th shard; merge only writes the manifest."""
    if parts < 1 or (part is not None and not 0 <= part < parts):
        raise PrepError(f"--part {part} --parts {parts} is invalid; use 0 <= part < parts")
    out = Path(cfg.out)
    state = out / STATE_DIR
    listing = list_source(cfg.source, cfg.input)  # the input is checked before anything is written
    claim_folder(out, "data")
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PrepError(f"{out}: output folder is not writable: {err.strerror or err}") from None
    if cfg.align.faces == "all":  # one record per face of each photo, people grouped (data_prep/faces.py)
        listing = expand_faces(listing, cfg, state, cfg.workers, progress, _map)
    plan = load_or_make_plan(cfg, listing, state, progress)
    mine = [s for j, s in enumerate(plan.shards) if part is None or j % parts == part]
    result = PrepResult(out=out, shards_total=len(plan.shards), shards_written=0, shards_reused=0)
    pending = []
    for shard in mine:
        _remove_temp_files(out, state, shard)
        if _shard_complete(cfg, out, state, shard):
            result.shards_reused += 1
        else:
            pending.append(shard)
    if merge and pending:
        raise RunFailure(
            f"{out}: cannot merge, {len(pending)} shard(s) not complete: "
            f"{', '.join(s.name for s in pending[:5])}; rerun the parts that own them"
        )
    if pending:
        _pack(cfg, listing, plan, pending, out, state, progress)
        result.shards_written = len(pending)
    if part is not None and not merge:
        return result  # the merge step (`--merge`) writes the manifest once every part is done
    result.manifest = _write_manifest(cfg, listing, plan, out, state)
    return result
