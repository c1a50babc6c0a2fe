"""The private ledger of a dataset's releases: k holds over time, and a withdrawal exposes no one.

One ledger per dataset (default <data>/ledger; with `input`, <input>.ledger beside the folder). Every
`kssgan anonymize` reads it and extends it before it writes a single image; `kssgan withdraw`
(withdraw below) records who left. In the ledger folder (it never ships):

  ledger.json                      the releases (id, date, k, method, slack, splits, out, secret seed,
                                   per cluster the people it released, by source identity name),
                                   the people who withdrew
  clusters/<cluster>.safetensors   what each cluster first released, frozen: its k-Same-Aligned
                                   template and frame, its mean landmarks, its cue pool (CuePool)
  erasures.jsonl                   one line per withdrawal and release: who, when, what went

The invariant (`breaches`): for every person, the people who share every one of their clusters over
all releases number at least the largest k any of those releases promised them. Whoever holds
several releases intersects a person's clusters (cluster membership is recoverable from a cluster's
face), so that intersection is the person's anonymity. A release that would break it is refused,
naming the people and the releases.

Clusters are sticky: a person already released keeps their cluster, and the cluster keeps what it
first released (template, mean landmarks, cue pool). Each of these, recomputed, would differ from the
old by what the leaver (or a newcomer) added: the template by their face, the pool by their poses
(benchmarks/releases_over_time.py measures both attacks). New people form clusters of their own
(k + withdrawal_slack people each) or, too few for one, join the nearest clusters. The slack lets a
cluster lose a member and keep k; one that falls below what it promised is withheld from then on.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from data_prep.faces import PUTATIVE
from kssgan_hpc.config.release import AnonymizeConfig, WithdrawConfig
from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.data.shards import SOURCES_NAME
from kssgan_hpc.errors import InputError
from kssgan_hpc.files import atomic_output, atomic_write_json, atomic_write_text, exclusive_lock
from kssgan_hpc.folders import claim_folder
from kssgan_hpc.ksame.aligned import render
from kssgan_hpc.ksame.build import KSame, identity_statistics, ksame
from kssgan_hpc.ksame.clusters import surrogate_targets
from kssgan_hpc.ksame.deidentify import POOL_LABELS, CuePool, cue_pool
from kssgan_hpc.ksame.duplicates import Duplicates
from kssgan_hpc.weights import read_weights

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.json"
LOCK_NAME = ".lock"


def ledger_folder(cfg: AnonymizeConfig | WithdrawConfig) -> Path:
    """Where the dataset's ledger lives: `ledger`, else beside the dataset (or the input folder)."""
    if cfg.ledger:
        return Path(cfg.ledger)
    given = getattr(cfg, "input", None)
    return Path(given).with_name(Path(given).name + ".ledger") if given else Path(cfg.data) / "ledger"


def ledger_lock(folder: Path, what: str) -> Any:
    """The ledger's lock: one release or withdrawal at a time reads, checks and extends it."""
    claim_folder(folder, "ledger", lock=False)  # its own lock, held from check to record
    return exclusive_lock(folder / LOCK_NAME, what)


def source_names(data_dir: Path) -> list[str]:
    """The source identity name of every line of a dataset's sources.jsonl: the ledger's key for a
    person, the same in every release of the dataset (dense ids are not)."""
    path = Path(data_dir) / SOURCES_NAME
    if not path.is_file():
        raise InputError(f"{path}: missing; the ledger keys people by the source names it holds")
    return [json.loads(line)["identity"] for line in path.read_text().splitlines() if line.strip()]


@dataclass
class SplitPlan:
    """One split of a release as the ledger allows it: who is released, in which clusters, with what."""

    split: str
    data: FaceShards
    """The split without the people who withdrew or are withheld."""
    origin: np.ndarray
    """[images] source_index of each image of `data`."""
    clustering: KSame
    pools: list[CuePool]
    """Per cluster, the cues its faces are drawn from."""
    uids: list[str]
    """Per cluster, its ledger id."""
    people: list[list[str]]
    """Per cluster, the names of the people it releases."""
    merged: list[list[list[str]]]
    """Per cluster, groups of names found to be one person."""
    new: list[bool]
    """Per cluster, whether this release forms it (its frozen record is written with the release)."""
    withheld: list[str] = field(default_factory=list)


class Ledger:
    """ledger.json and the frozen cluster records beside it."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LEDGER_NAME
        self.record: dict[str, Any] = {"kind": "ledger", "releases": [], "withdrawn": {}}
        self.reserved: set[str] = set()
        if self.path.is_file():
            try:
                self.record = json.loads(self.path.read_text())
                if not (isinstance(self.record["releases"], list) and isinstance(self.record["withdrawn"], dict)):
                    raise TypeError("releases must be a list, withdrawn a mapping")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
                raise InputError(f"{self.path}: not a readable ledger ({err}); restore it from a backup: "
                                 "without it, k over time cannot be checked") from None

    @property
    def releases(self) -> list[dict[str, Any]]:
        return self.record["releases"]

    @property
    def withdrawn(self) -> set[str]:
        return set(self.record["withdrawn"])

    def latest_clusters(self) -> dict[str, str]:
        """Each person released so far -> the cluster of their latest release."""
        return {name: c["cluster"] for r in self.releases for c in r["clusters"] for name in c["people"]}

    def release_of(self, out: Path, secret: int) -> dict[str, Any] | None:
        """The recorded release written to `out` with this secret (a resumed release), if any."""
        return next((r for r in self.releases if r["out"] == str(Path(out).resolve())
                     and r["secret_seed"] == secret), None)

    def cluster_file(self, uid: str) -> Path:
        return self.folder / "clusters" / f"{uid}.safetensors"

    def frozen(self, uid: str) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in read_weights(self.cluster_file(uid)).items()}

    def next_uids(self, count: int) -> list[str]:
        """Ids for `count` new clusters, unused by any release and by earlier calls (other splits)."""
        used = {c["cluster"] for r in self.releases for c in r["clusters"]} | self.reserved
        start = 1 + max((int(u[1:]) for u in used), default=0)
        uids = [f"c{start + i:05d}" for i in range(count)]
        self.reserved.update(uids)
        return uids

    def breaches(self, proposal: list[tuple[list[str], list[list[str]]]], k: int,
                 exclude: str | None = None) -> list[str]:
        """Who a release of these clusters (people, merged names) at `k` would leave with fewer than the
        promised k people in all their clusters: one line per person, naming the releases."""
        same = {name: min(group) for r in self.releases for c in r["clusters"] for group in c.get("merged", [])
                for name in group}
        same.update({name: min(group) for _, merged in proposal for group in merged for name in group})
        history = [r for r in self.releases if r["id"] != exclude]
        found = []
        for people, _ in proposal:
            for name in people:
                together, promised, seen = set(people), k, []
                for r in history:
                    cluster = next((c for c in r["clusters"] if name in c["people"]), None)
                    if cluster is not None:
                        together &= set(cluster["people"])
                        promised = max(promised, int(r["k"]))
                        seen.append(r["id"])
                persons = len({same.get(n, n) for n in together})
                if persons < promised:
                    found.append(f"{name}: {persons} people share all their clusters over "
                                 f"{', '.join(seen + ['this release'])}, k={promised} was promised")
        return found

    def save(self) -> None:
        atomic_write_json(self.path, self.record)


def plan_split(ledger: Ledger, cfg: AnonymizeConfig, siamese: torch.nn.Module, data: FaceShards, sources: list[str],
               origin: np.ndarray, device: torch.device) -> SplitPlan:
    """Cluster one split as the ledger allows: withdrawn people out, sticky clusters kept as they first
    released, new people in clusters of their own (or joining). The invariant is check_plans' job."""
    names = np.array([sources[i] for i in origin], dtype=object)  # `sources`: source_names of the dataset
    keep = ~np.isin(names, list(ledger.withdrawn))
    data, origin, names = data.subset(np.flatnonzero(keep)), origin[keep], names[keep]
    stats = identity_statistics(siamese, data, cfg.batch_size, device)
    name_of = dict(zip(data.labels["identity"].tolist(), names.tolist()))
    person = [name_of[int(i)] for i in stats.ids]
    latest = ledger.latest_clusters() if cfg.sticky_clusters else {}
    old: dict[str, list[int]] = {}
    for row, name in enumerate(person):
        if name in latest:
            old.setdefault(latest[name], []).append(row)
    fresh = [row for row, name in enumerate(person) if name not in latest]

    # Sticky clusters that lost members to a withdrawal and now break their promise are withheld.
    withheld: list[str] = []
    released_in = {c["cluster"]: set(c["people"]) for r in ledger.releases for c in r["clusters"]}
    for uid, rows in list(old.items()):
        people = [person[r] for r in rows]
        if released_in[uid] & ledger.withdrawn and ledger.breaches([(people, [])], cfg.k):
            withheld += people
            del old[uid]
    if withheld:
        log.warning("ledger: %d people withheld from this release: their clusters lost members to withdrawals and "
                    "can no longer keep k (names in %s)", len(withheld), ledger.path)

    groups, templates, geometry, pools, uids, new = [], [], [], [], [], []
    frame = stats.frame
    merged_in = {c["cluster"]: c.get("merged", []) for r in ledger.releases for c in r["clusters"]}
    identity_of = {name: identity for identity, name in name_of.items()}
    kept_people = []  # names found to be one person when a kept cluster was formed, as this split's ids
    for uid, rows in sorted(old.items()):  # in the order first released (ids count up)
        kept_people += [sorted(identity_of[n] for n in group if n in identity_of) for group in merged_in[uid]]
        record = ledger.frozen(uid)
        template = torch.from_numpy(record["template"]).float()[None]
        if not np.allclose(record["frame"], frame, atol=1e-4):  # the split's mean frame moved: re-pose it
            template = render(template, record["frame"], torch.from_numpy(frame)[None]).clamp(0, 255)
        groups.append(rows)
        templates.append(template[0].round().to(torch.uint8).numpy())
        geometry.append(record["landmarks"])
        pools.append(CuePool(record["offsets"], {name: record[name] for name in POOL_LABELS}, record["source"]))
        uids.append(uid)
        new.append(False)
    duplicates = Duplicates(pairs=[], people=[])
    if fresh:
        size = cfg.k + cfg.withdrawal_slack
        if len(fresh) >= size or not old:  # clusters of their own (k + slack people, or k when fewer)
            sub = ksame(stats.of(fresh), size if len(fresh) >= size else cfg.k, method=cfg.method, seed=cfg.seed,
                        duplicates=cfg.duplicates)
            duplicates = sub.duplicates
            for c, group in enumerate(sub.groups):
                groups.append([fresh[r] for r in group])
                templates.append(sub.aligned[c])
                geometry.append(sub.cluster_landmarks[c])
                pools.append(None)
                uids.append(None)
                new.append(True)
        else:  # too few for a cluster: each joins the nearest kept cluster (its record stays as released)
            centres = np.stack([stats.embeddings[rows].mean(0) for rows in groups])
            for row in fresh:
                groups[int(np.argmin(((centres - stats.embeddings[row]) ** 2).sum(1)))].append(row)
    duplicates = Duplicates(pairs=duplicates.pairs, people=duplicates.people + [p for p in kept_people if len(p) > 1])
    if not groups:
        raise InputError(f"{ledger.path}: nobody of split '{data.split}' can be released: everyone in it withdrew "
                         "or is withheld")
    for uid in ledger.next_uids(sum(u is None for u in uids)):
        uids[uids.index(None)] = uid
    rows = sorted(r for g in groups for r in g)  # the people released (the withheld are not)
    position = {r: n for n, r in enumerate(rows)}
    groups = [sorted(position[r] for r in g) for g in groups]
    clustering = KSame(k=cfg.k, ids=stats.ids[rows], groups=groups,
                       surrogates=surrogate_targets(stats.embeddings[rows], groups), aligned=np.stack(templates),
                       frame=frame, identity_landmarks=stats.landmarks[rows], duplicates=duplicates,
                       cluster_landmarks=np.stack(geometry).astype(np.float32))
    person = [person[r] for r in rows]
    images = np.flatnonzero(np.isin(data.labels["identity"], clustering.ids))
    data, origin = data.subset(images), origin[images]
    cluster_of_image = clustering.clusters_of(data.labels["identity"])
    for c in range(len(groups)):
        if pools[c] is None:
            pools[c] = cue_pool(clustering, data.labels, np.flatnonzero(cluster_of_image == c), origin)
    merged_names = [[name_of[i] for i in group] for group in duplicates.merged]
    merged = [[g for g in merged_names if set(g) <= {person[r] for r in group}] for group in groups]
    return SplitPlan(split=data.split, data=data, origin=origin, clustering=clustering, pools=pools, uids=uids,
                     people=[[person[r] for r in group] for group in groups], merged=merged, new=new,
                     withheld=withheld)


def check_plans(ledger: Ledger, plans: list[SplitPlan], k: int, exclude: str | None) -> None:
    """The invariant over the whole release (all its splits), before anything is written."""
    putative = sorted({name for plan in plans for people in plan.people for name in people
                       if name.startswith(PUTATIVE)})
    earlier = [r["id"] for r in ledger.releases if r["id"] != exclude]
    if putative and earlier:
        # Groups of faces are numbered anew by every prep: ~person-0003 now need not be ~person-0003 then.
        raise InputError(f"{ledger.path}: {len(putative)} people of this release were grouped from their faces "
                         f"({putative[0]}, ...), which prep names anew each time, so the ledger cannot follow them "
                         f"from release {earlier[-1]} to this one; give this release a ledger of its own (ledger=...) "
                         "or name its people with identity folders")
    found = ledger.breaches([(p, m) for plan in plans for p, m in zip(plan.people, plan.merged)], k, exclude)
    if found:
        shown = "; ".join(found[:8]) + (f"; and {len(found) - 8} more" if len(found) > 8 else "")
        raise InputError(f"{ledger.path}: this release would break k over time for {len(found)} people ({shown}). "
                         "A person's clusters over all releases must share >= k people: keep sticky clusters "
                         "(sticky_clusters=true) and a k no larger than any earlier release promised them")


def record_release(ledger: Ledger, cfg: AnonymizeConfig, out: Path, data_dir: Path, secret: int,
                   plans: list[SplitPlan]) -> str:
    """Add the release to the ledger (its new clusters' frozen records first, ledger.json last)."""
    (ledger.folder / "clusters").mkdir(parents=True, exist_ok=True)
    for plan in plans:
        for c, uid in enumerate(plan.uids):
            if plan.new[c]:
                pool = plan.pools[c]
                tensors = {"template": plan.clustering.aligned[c], "frame": plan.clustering.frame,
                           "landmarks": plan.clustering.cluster_landmarks[c], "offsets": pool.offsets,
                           "source": pool.source, **pool.labels}
                with atomic_output(ledger.cluster_file(uid)) as tmp:
                    save_file({name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in tensors.items()}, tmp)
    release_id = f"r{len(ledger.releases) + 1}"
    ledger.releases.append({
        "id": release_id, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "out": str(Path(out).resolve()),
        "data": str(Path(data_dir).resolve()), "k": cfg.k, "method": cfg.method,
        "withdrawal_slack": cfg.withdrawal_slack, "sticky_clusters": cfg.sticky_clusters, "cues": cfg.cues,
        "secret_seed": secret, "splits": [plan.split for plan in plans],
        "clusters": [{"cluster": uid, "split": plan.split, "people": people, "merged": merged}
                     for plan in plans for uid, people, merged in zip(plan.uids, plan.people, plan.merged)],
        "withheld": sorted(name for plan in plans for name in plan.withheld)})
    ledger.save()
    log.info("ledger: release %s recorded in %s", release_id, ledger.path)
    return release_id


def withdraw(cfg: WithdrawConfig) -> list[dict[str, Any]]:
    """Take people out of every later release of the dataset: the ledger marks them withdrawn (later
    releases skip their images; their clusters keep what they first released), each earlier
    release's private mapping loses their lines, the frozen cue pools forget which entries were
    theirs, and each step is recorded in erasures.jsonl. Returns the erasure records."""
    folder = ledger_folder(cfg)
    if not (folder / LEDGER_NAME).is_file():
        raise InputError(f"{folder / LEDGER_NAME}: no ledger (no release was made from {cfg.data} yet)")
    with ledger_lock(folder, "a release or a withdrawal"):
        ledger = Ledger(folder)
        released = {name for r in ledger.releases for c in r["clusters"] for name in c["people"]}
        putative = [name for name in cfg.people if name.startswith(PUTATIVE)]
        if putative:
            raise InputError(f"{ledger.path}: {putative[0]} was grouped from faces, not named by the data: remove "
                             "that person's photos from the input and release it again with a new ledger")
        unknown = sorted(set(cfg.people) - released - ledger.withdrawn)
        if unknown:
            raise InputError(f"{ledger.path}: {', '.join(unknown)} appear in no release of this ledger")
        erasures, names_of = [], {}  # names_of: each release's dataset -> its source_names, read once
        for name in cfg.people:
            if name in ledger.withdrawn:
                log.info("withdraw: %s already withdrew on %s", name, ledger.record["withdrawn"][name]["date"])
                continue
            for release in ledger.releases:
                clusters = [c["cluster"] for c in release["clusters"] if name in c["people"]]
                if clusters:
                    names = names_of.setdefault(release["data"], source_names(Path(release["data"])))
                    erasures.append(_erase(ledger, release, {i for i, n in enumerate(names) if n == name}, name,
                                           clusters))
            ledger.record["withdrawn"][name] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                "releases": [e["release"] for e in erasures if e["person"] == name]}
        lines = "".join(json.dumps(e) + "\n" for e in erasures)
        erasure_log = ledger.folder / "erasures.jsonl"
        atomic_write_text(erasure_log, (erasure_log.read_text() if erasure_log.is_file() else "") + lines)
        ledger.save()  # last: a withdrawal cut short is finished by running it again
    return erasures


def _erase(ledger: Ledger, release: dict[str, Any], sources: set[int], name: str,
           clusters: list[str]) -> dict[str, Any]:
    """One person (`sources`: their source indices) out of one release's private records and of its
    clusters' frozen pools."""
    removed = cleared = 0
    private = Path(release["out"]) / "private"
    files = [private / "mapping.jsonl", *sorted((private / "state").glob("*.mapping.jsonl"))]
    for path in files:
        if not path.is_file():
            continue
        kept = []
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["source_index"] in sources:
                removed += path.name == "mapping.jsonl"
                continue
            if entry.get("cue_source_index") in sources:
                entry["cue_source_index"] = None
                cleared += path.name == "mapping.jsonl"
            kept.append(json.dumps(entry) + "\n")
        atomic_write_text(path, "".join(kept))
    for uid in clusters:
        record = ledger.frozen(uid)
        mine = np.isin(record["source"], list(sources))
        if mine.any():
            record["source"] = np.where(mine, -1, record["source"])
            with atomic_output(ledger.cluster_file(uid)) as tmp:
                save_file({key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in record.items()}, tmp)
    erasure = {"person": name, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "release": release["id"],
               "out": release["out"], "mapping_lines_removed": removed, "cue_references_cleared": cleared,
               "found": private.is_dir()}
    if private.is_dir():
        log_path = private / "erasures.jsonl"
        atomic_write_text(log_path, (log_path.read_text() if log_path.is_file() else "") + json.dumps(erasure) + "\n")
    else:
        log.warning("withdraw: %s of release %s is gone; only the ledger records the erasure", private, release["id"])
    return erasure
