"""`kssgan anonymize`: a prepped split -> its k-anonymous, de-identified release.

Per split: the identities in it are k-Same-clustered among themselves with the frozen Siamese (the
guarantee is over the released set: new people need k per cluster too), and every face is made
from its cluster only: the cluster's k-Same-Aligned base face posed on declared landmarks, then
(when the generator passed the gate) the generator's bounded residual from that base, the cues and
z. The source image itself never enters. The cues are those of an image of the same cluster, drawn
by a secret permutation (`cues=cluster`, ksame/deidentify.py): a face shows a pose and expression,
and carries the labels, of its cluster, not necessarily of its source.

Before writing, the gate (release/gate.py) attacks the generator on held-out people; a generator
that fails is not used: the release is made with k-Same-Aligned instead, or refused (gate.fallback).

Written as shards of the project's format (kind "release") under out/release/, in an order drawn
from a secret seed (drawn per release with `secrets`, kept in out/private/settings.json), with:
  identity      the released identity: the k-Same cluster (ids unique across splits), >= k people
  expression, pose, gaze, attributes   the utility labels of the image whose cues the face shows
and nothing that points back (no source names, digests, landmarks or quads; PNGs carry no
metadata). What stays with the data holder, in out/private/: which source identity went to which
cluster, the gate's verdict, and mapping.jsonl (release image -> prepped source_index, and the
source_index whose cues it shows) for audits and withdrawal requests.

Streaming (one batch in memory), resumable per shard (a shard with a matching record is kept),
multi-process under torchrun: rank r writes shards r, r + world, ...; rank 0 writes the manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from kssgan_hpc import __version__
from kssgan_hpc.artefacts import load_generator, load_siamese, siamese_weights
from kssgan_hpc.config.release import AnonymizeConfig
from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.data.shards import (
    FORMAT_VERSION,
    ShardError,
    ShardWriter,
    load_manifest,
    open_shard,
    sha256_file,
    shard_name,
    verify_dataset,
)
from kssgan_hpc.distributed import barrier, join_process_group
from kssgan_hpc.errors import InputError
from kssgan_hpc.files import atomic_output, atomic_write_json, atomic_write_text
from kssgan_hpc.folders import claim_folder
from kssgan_hpc.ksame.build import KSame
from kssgan_hpc.ksame.clusters import TooFewPeople
from kssgan_hpc.ksame.deidentify import CuePool, cue_pool, deidentify, draw_from_pools
from kssgan_hpc.release.gate import gate_release, public_record
from kssgan_hpc.release.ledger import (
    Ledger,
    check_plans,
    ledger_folder,
    ledger_lock,
    plan_split,
    record_release,
    source_names,
)
from kssgan_hpc.release.photos import PhotoWriter, photo_root

log = logging.getLogger(__name__)


def release_order(count: int, images_per_shard: int, seed: int) -> list[np.ndarray]:
    """The release's image order (a permutation from the release's secret seed: it must follow
    neither the source order nor a seed anyone else knows), in shards."""
    order = np.random.default_rng(seed).permutation(count)
    return [order[i:i + images_per_shard] for i in range(0, count, images_per_shard)]


def source_indices(data: FaceShards) -> np.ndarray:
    """The prepped shards' source_index of every image of a split (for the private mapping)."""
    parts = []
    for path in data.paths:
        with open_shard(path) as f:
            parts.append(f["source_index"][:])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _shard_done(path: Path, record: Path) -> bool:
    if not (path.is_file() and record.is_file()):
        return False
    return json.loads(record.read_text()).get("sha256") == sha256_file(path)


def _prepared_input(cfg: AnonymizeConfig, resolution: int) -> Path:
    """`input` folder -> a prepped dataset in out/private/input (all people in the test split; with
    photos, every face of each photo)."""
    from data_prep.prep import run_prep
    from kssgan_hpc.config import PrepConfig, load_config

    out = Path(cfg.out) / "private" / "input"
    # Photos: every face of each photo; a folder without identity folders names nobody (people from faces).
    folder = Path(cfg.input)
    source = ("photos" if cfg.photos.enabled and folder.is_dir() and not any(p.is_dir() for p in folder.iterdir())
              else "folder")
    faces = ["align.faces=all"] if cfg.photos.enabled else []
    prep = load_config(PrepConfig, overrides=[
        f"source={source}", f"input={cfg.input}", f"out={out}", f"resolution={resolution}",
        "split.train=0.0", "split.val=0.0", "split.test=1.0", *faces])
    if dist.is_initialized():
        if dist.get_rank() == 0:
            run_prep(prep, progress=False)
        barrier()
    else:
        run_prep(prep, progress=False)
    return out


def anonymize(cfg: AnonymizeConfig, progress: bool = True) -> Path:
    """Write (or finish) the release; returns out/release."""
    env, device = join_process_group(cfg.device)
    generator, gan_cfg, weights = load_generator(cfg.gan, device)
    siamese, _ = load_siamese(gan_cfg.siamese, device)
    verify = cfg.verify if env.rank == 0 else "quick"  # one rank reads every byte
    if not cfg.input:
        verify_dataset(cfg.data, verify)
    try:  # the gate's third-party check needs G's training people: whom it could have memorised
        load_manifest(gan_cfg.data)
    except ShardError as err:
        raise InputError(f"{err} — the generator's training data ({gan_cfg.data}, from {cfg.gan}) is needed by the "
                         "release gate's third-party check") from None
    if cfg.photos.enabled and not cfg.input:
        photo_root(load_manifest(cfg.data), cfg.photos.input)  # the photos are there (checked again per photo)
    out = claim_folder(cfg.out, "release")  # every input above is checked before this first write
    data_dir = _prepared_input(cfg, gan_cfg.model.resolution) if cfg.input else Path(cfg.data)
    splits = ["test"] if cfg.input else cfg.splits
    source = verify_dataset(data_dir, verify) if cfg.input else load_manifest(data_dir)
    release, private = out / "release", out / "private"
    folder = ledger_folder(cfg)
    # One release at a time extends the ledger: rank 0 holds its lock from the check to the record.
    lock = ledger_lock(folder, f"a release to {out}") if env.rank == 0 else contextlib.nullcontext()
    try:
        with lock:
            barrier()
            ledger = Ledger(folder)
            names, plans = source_names(data_dir), []
            for split in splits:
                data = FaceShards(data_dir, split)
                if data.resolution != gan_cfg.model.resolution or data.channels != gan_cfg.model.channels:
                    raise InputError(f"{data_dir}: {data.resolution}px x{data.channels}, the generator in {cfg.gan} "
                                     f"makes {gan_cfg.model.resolution}px x{gan_cfg.model.channels}")
                try:
                    plans.append(plan_split(ledger, cfg, siamese, data, names, source_indices(data), device))
                except TooFewPeople as err:  # before any write but the folder's marker
                    raise TooFewPeople(f"{data_dir}: split '{split}': {err} (lower k or leave the split out: "
                                       "splits=[...])") from None
            weight_files = {"generator": weights, "siamese": siamese_weights(gan_cfg.siamese)[0]}
            started = private / "settings.json"
            # A resumed release keeps its settings (checked first) and is in the ledger already.
            settings = (_check_settings(cfg, started, source, weight_files, folder, env.rank) if started.is_file()
                        else None)
            resumed = ledger.release_of(out, settings["secret_seed"]) if settings else None
            check_plans(ledger, plans, cfg.k, exclude=resumed["id"] if resumed else None)  # before any write
            settings = settings or _check_settings(cfg, started, source, weight_files, folder, env.rank)
            method = gate_release(cfg, private / "gate.json", data_dir, siamese, gan_cfg.siamese, generator, device,
                                  env.rank, Path(gan_cfg.data))
            if env.rank == 0 and resumed is None:
                record_release(ledger, cfg, out, data_dir, settings["secret_seed"], plans)
            barrier()
        release.mkdir(parents=True, exist_ok=True)
        (private / "state").mkdir(parents=True, exist_ok=True)  # per-shard records: the resume points
        offset, summary = 0, {}
        for split_number, plan in enumerate(plans):
            split, data, clustering = plan.split, plan.data, plan.clustering
            if env.rank == 0:
                atomic_write_json(private / f"clusters-{split}.json", {
                    "k": cfg.k, "method": cfg.method, "seed": cfg.seed, "split": split, "cluster_offset": offset,
                    "merged": clustering.duplicates.merged, "duplicate_pairs": clustering.duplicates.pairs,
                    "clusters": [{"cluster": offset + c, "ledger_cluster": plan.uids[c],
                                  "identities": clustering.ids_of(c)} for c in range(len(clustering.groups))]})
            secret = settings["secret_seed"] + split_number  # one stream per split
            shards = release_order(len(data), cfg.images_per_shard, secret)
            # Whose cues each face shows: drawn from its cluster's pool (as first released), or its own.
            clusters = clustering.clusters_of(data.labels["identity"])
            shown, entries = ((cue_pool(clustering, data.labels, np.arange(len(data)), plan.origin), None)
                              if cfg.cues == "own" else draw_from_pools(clusters, plan.pools, secret))
            cue_of = [{"ledger_cluster": plan.uids[c], "cue_entry": None if entries is None else int(entries[row])}
                      for row, c in enumerate(clusters)]
            mine = [i for i in range(len(shards)) if i % env.world_size == env.rank]
            for index in tqdm(mine, desc=f"anonymize {split}", disable=not progress or env.rank != 0):
                _write_shard(cfg, data, shards[index], index, split, clustering, shown, cue_of, offset, method,
                             generator, secret, plan.origin, release, private / "state", device)
            summary[split] = {"images": len(data), "identities": len(clustering.groups), "shards": len(shards),
                              "source_identities": len(clustering.ids)}
            offset += len(clustering.groups)
        barrier()
        photos = None
        if cfg.photos.enabled:  # every photo of the released people, its faces replaced in place
            photo_cfg = dataclasses.replace(cfg.photos, input=cfg.input or cfg.photos.input)
            writer = PhotoWriter(photo_cfg, data_dir, release, private, settings["secret_seed"],
                                 cfg.images_per_shard, env.rank, env.world_size, device)
            writer.write(splits)
            barrier()
            photos = writer.summary(splits) if env.rank == 0 else None
        if env.rank == 0:
            _write_manifest(cfg, source, summary, method, release, private, photos)
        barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return release


def _check_settings(cfg: AnonymizeConfig, path: Path, source: dict[str, Any], weights: dict[str, Path],
                    ledger: Path, rank: int) -> dict[str, Any]:
    """A resumed release must be finished with the settings (and weights) it was started with; a new
    one draws its secret seed here. Returns the settings, secret included (rank 0 writes them)."""
    settings = {"k": cfg.k, "method": cfg.method, "cues": cfg.cues, "seed": cfg.seed,
                "images_per_shard": cfg.images_per_shard,
                "splits": cfg.splits, "png": cfg.png, "gate_split": cfg.gate_split,
                "photos": dataclasses.asdict(cfg.photos),
                "duplicates": dataclasses.asdict(cfg.duplicates), "ledger": str(ledger.resolve()),
                "sticky_clusters": cfg.sticky_clusters, "withdrawal_slack": cfg.withdrawal_slack,
                **{name: {"file": str(file), "sha256": sha256_file(file)} for name, file in weights.items()},
                "data_shards": sorted(s["sha256"] for s in source["shards"])}
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(key for key in settings if before.get(key) != settings[key])
        if changed:
            raise InputError(f"{path.parent.parent}: a release made with other settings ({', '.join(changed)}) is "
                             "there; finish it with the same ones, or write to another out")
    elif rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Drawn per release, never from config: anyone who knows the seed can undo the order.
        atomic_write_json(path, {**settings, "secret_seed": secrets.randbits(62)})
    barrier()
    return json.loads(path.read_text())


def _write_shard(cfg: AnonymizeConfig, data: FaceShards, indices: np.ndarray, index: int, split: str,
                 clustering: KSame, shown: CuePool, cue_of: list[dict[str, Any]], offset: int, method: str,
                 generator: torch.nn.Module,
                 secret: int, origin: np.ndarray, release: Path, state: Path, device: torch.device) -> None:
    path = release / shard_name(split, index)
    record = state / f"{path.name}.json"
    if _shard_done(path, record):
        return
    first_id = index * cfg.images_per_shard
    png_dir = release / "png" / split
    if cfg.png:
        png_dir.mkdir(parents=True, exist_ok=True)
    identities = data.labels["identity"]
    with ShardWriter(path, split=split, index=index, resolution=data.resolution, channels=data.channels,
                     num_attributes=shown.labels["attributes"].shape[1], expected=len(indices), release=True) as writer:
        for start in range(0, len(indices), cfg.batch_size):
            rows = indices[start:start + cfg.batch_size]
            # Only declared cues are read (those drawn for these faces): no source image is opened.
            cues = {"identity": identities[rows], "offsets": shown.offsets[rows],
                    "expression": shown.labels["expression"][rows], "pose": shown.labels["pose"][rows]}
            outputs = deidentify(method, clustering, cues, generator=generator, seed=secret, keys=rows, device=device,
                                 batch_size=cfg.batch_size)
            clusters = clustering.clusters_of(identities[rows])
            for j, (row, image) in enumerate(zip(rows, outputs)):
                # The face shows the drawn pose and expression: their labels go with it.
                writer.add(np.ascontiguousarray(image), identity=int(offset + clusters[j]),
                           expression=int(shown.labels["expression"][row]), pose=int(shown.labels["pose"][row]),
                           gaze=int(shown.labels["gaze"][row]), attributes=shown.labels["attributes"][row])
                if cfg.png:  # whole or absent, as every file of a release
                    with atomic_output(png_dir / f"{first_id + start + j:07d}.png") as tmp:
                        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(tmp)
        info = writer.close()
    # Which source each released image stands for, and whose cues it shows: the source (null: that person
    # withdrew) and the entry of its cluster's pool in the ledger (for audits and withdrawals).
    mapping = "".join(json.dumps({"split": split, "release_index": first_id + j, "source_index": int(origin[row]),
                                  "cue_source_index": int(shown.source[row]) if shown.source[row] >= 0 else None,
                                  **cue_of[row]}) + "\n" for j, row in enumerate(indices))
    atomic_write_text(state / f"{path.name}.mapping.jsonl", mapping)
    atomic_write_json(record, {"name": info.name, "split": split, "images": info.images, "sha256": info.sha256,
                               "bytes": info.bytes})


def _write_manifest(cfg: AnonymizeConfig, source: dict[str, Any], summary: dict[str, Any], method: str,
                    release: Path, private: Path, photos: dict[str, Any] | None) -> None:
    state = private / "state"
    names = [shard_name(split, index) for split, counts in summary.items() for index in range(counts["shards"])]
    shards = [json.loads((state / f"{name}.json").read_text()) for name in names]
    atomic_write_text(private / "mapping.jsonl", "".join((state / f"{name}.mapping.jsonl").read_text()
                                                         for name in names))
    manifest = {
        "format_version": FORMAT_VERSION, "kind": "release", "created_by": f"kssgan-hpc {__version__}",
        "resolution": source["resolution"], "channels": source["channels"], "k": cfg.k, "method": cfg.method,
        "deidentification": method,
        "gate": public_record(cfg, json.loads((private / "gate.json").read_text())),
        "images": sum(c["images"] for c in summary.values()),
        "identities": sum(c["identities"] for c in summary.values()),
        "splits": {split: {"images": c["images"], "identities": c["identities"]} for split, c in summary.items()},
        "shards": shards,
        "vocab": {name: source["vocab"].get(name, []) for name in ("expression", "pose", "gaze", "attributes")},
        **({"photos": photos} if photos is not None else {}),
    }
    atomic_write_json(release / "manifest.json", manifest)
    log.info("release: %d images of %d released identities (k=%d, %s) in %s", manifest["images"],
             manifest["identities"], cfg.k, method, release)
