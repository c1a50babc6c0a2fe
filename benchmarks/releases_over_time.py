"""Releases over time, attacked: composition of two releases, and withdrawal (release/ledger.py).

On the demo's held-out people (test split; the demo's trained GAN, `bash scripts/demo.sh` first):

  composition  release 1 (k=4, mdav) and, with the same ledger, second releases of the same people
               (method=kmeans; k=5; then k=6 and non-sticky kmeans, which the ledger must refuse).
               Linkage: each image of release 1 linked to the image of release 2 whose pose is
               nearest (the pose as registration recovers it: its true cue offset, an upper bound) or
               whose pixels are nearest, within the same cluster; how often the link joins two
               images of one source person, against chance. Re-identification: the pose-habit
               attacker (attack/cues.py) on each linked pair, candidates the people in both clusters,
               gallery 5 other photos per person, over 8 random gallery splits.
  withdrawal   every held-out person in turn withdraws (`kssgan withdraw`) after release 1 and the
               others are released again (k=4): who withdrew, guessed from the release-1 images whose
               pose links to nothing in release 2 (pose habit, summed over those images), and the
               differencing attack on the cluster face (old face x n - new face x (n-1) = the leaver's
               mean face, nearest gallery person by the Siamese). Both for the shipped policy (a
               cluster keeps the face and cue pool it first released) and for the one it replaced
               (recomputed without the leaver).

    python benchmarks/releases_over_time.py [--gan runs/demo/gan --data runs/demo/data]
Prints the figures and writes benchmarks/results/releases_over_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from report import write_report

SPLIT = "test"
SPLITS = 8
GALLERY = 5


def kssgan(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "kssgan_hpc.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())})
    if check and proc.returncode != 0:
        raise RuntimeError(f"kssgan {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


class Release:
    """One release as the attacker sees it (images, cluster of each) with the private truth beside it."""

    def __init__(self, out: Path, ledger: Path, names: list[str]) -> None:
        from kssgan_hpc.data.dataset import FaceShards, read_images
        from kssgan_hpc.release.ledger import Ledger

        rows = sorted((json.loads(line) for line in (out / "private" / "mapping.jsonl").read_text().splitlines()),
                      key=lambda m: m["release_index"])
        released = FaceShards(out / "release", SPLIT)
        index = np.array([m["release_index"] for m in rows])
        self.images = read_images(released, index).reshape(len(rows), -1).astype(np.float32)
        self.person = np.array([names[m["source_index"]] for m in rows])
        self.source = np.array([m["source_index"] for m in rows])
        self.cluster = np.array([m["ledger_cluster"] for m in rows])
        self.entry = np.array([m["cue_entry"] for m in rows])
        book = Ledger(ledger)  # read once
        frozen = {uid: book.frozen(uid) for uid in np.unique(self.cluster)}
        self.offsets = np.stack([frozen[c]["offsets"][e] for c, e in zip(self.cluster, self.entry)]).reshape(-1, 10)
        self.labels = {name: np.array([frozen[c][name][e] for c, e in zip(self.cluster, self.entry)])
                       for name in ("expression", "pose", "gaze")}
        record = json.loads((ledger / "ledger.json").read_text())
        self.members = {c["cluster"]: sorted(c["people"]) for r in record["releases"] for c in r["clusters"]
                        if r["out"] == str(out.resolve())}


def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    distance = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.argmin(np.where(np.isfinite(distance), distance, np.inf), axis=1)


def linkage(one: Release, two: Release) -> dict[str, float]:
    """Per image of `one`, its nearest image of `two` in the same cluster, by pose and by pixels."""
    out = {}
    for cue, (a, b) in {"pose": (one.offsets, two.offsets), "pixels": (one.images, two.images)}.items():
        same_person, same_source, chance = [], [], []
        for cluster in np.unique(one.cluster):
            i, j = np.flatnonzero(one.cluster == cluster), np.flatnonzero(two.cluster == cluster)
            linked = j[nearest(np.nan_to_num(a[i], nan=1e6), np.nan_to_num(b[j], nan=1e6))]
            same_person += list(one.person[i] == two.person[linked])
            same_source += list(one.source[i] == two.source[linked])
            chance += [np.mean(two.person[j] == p) for p in one.person[i]]
        out[cue] = {"same_person": float(np.mean(same_person)), "chance_same_person": float(np.mean(chance)),
                    "same_source_image": float(np.mean(same_source))}
    return out


def pose_habit(data, people: dict[str, int], gallery: np.ndarray, offsets: np.ndarray, labels: dict,
               candidates: list[list[str]]) -> np.ndarray:
    """Pose-habit scores [probes, people] (attack/cues.py) from the gallery images' landmarks."""
    from kssgan_hpc.attack.cues import PoseHabit, ReleasedCues

    ids = data.labels["identity"][gallery]
    cues = ReleasedCues(offsets.reshape(-1, 5, 2), labels, None)
    scores = PoseHabit().scores(data.labels["landmarks"][gallery], {}, ids, np.unique(ids), cues)
    order = np.unique(ids)
    allowed = np.array([[people_id in {people[n] for n in c} for people_id in order] for c in candidates])
    return np.where(allowed.reshape(scores.shape), scores, -np.inf), order


def gallery_split(data, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = data.labels["identity"]
    return np.concatenate([rng.choice(np.flatnonzero(ids == i), GALLERY, replace=False) for i in np.unique(ids)])


def composition_reid(data, sources: np.ndarray, people: dict[str, int], one: Release, two: Release,
                     k: int) -> dict:
    """Pose habit on each release-1 image and its pose-linked release-2 image, candidates the people in
    both clusters; probes are the images whose source is not in the attacker's gallery."""
    from kssgan_hpc.attack.attackers import p_value

    linked = np.zeros(len(one.person), np.int64)
    for cluster in np.unique(one.cluster):
        i, j = np.flatnonzero(one.cluster == cluster), np.flatnonzero(two.cluster == cluster)
        linked[i] = j[nearest(np.nan_to_num(one.offsets[i], nan=1e6), np.nan_to_num(two.offsets[j], nan=1e6))]
    offsets = (one.offsets + two.offsets[linked]) / 2
    candidates = [sorted(set(one.members[a]) & set(two.members[b])) for a, b in zip(one.cluster, two.cluster[linked])]
    hits, probes = [], 0
    for seed in range(SPLITS):
        gallery = gallery_split(data, seed)
        keep = ~np.isin(one.source, sources[gallery])
        scores, order = pose_habit(data, people, gallery, offsets[keep], {},
                                   [c for c, kept in zip(candidates, keep) if kept])
        hits += list(order[np.argmax(scores, axis=1)] == np.array([people[p] for p in one.person[keep]]))
        probes = int(keep.sum())
    rank1 = float(np.mean(hits))
    return {"rank1": rank1, "probes_per_split": probes, "splits": SPLITS, "p_value": p_value(rank1, probes, k),
            "bound": 1 / k + 0.05}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gan", default="runs/demo/gan")
    parser.add_argument("--data", default="runs/demo/data")
    parser.add_argument("--people", type=int, default=0, help="withdraw only the first N people (0: all)")
    parser.add_argument("--out", default="benchmarks/results/releases_over_time.json")
    args = parser.parse_args()
    import torch

    from kssgan_hpc.artefacts import load_generator, load_siamese
    from kssgan_hpc.data.dataset import FaceShards
    from kssgan_hpc.ksame.build import identity_statistics
    from kssgan_hpc.models import siamese_embeddings
    from kssgan_hpc.release.anonymize import source_indices
    from kssgan_hpc.release.checks import check_release_clusters
    from kssgan_hpc.release.ledger import Ledger

    torch.set_num_threads(os.cpu_count())
    data_dir = Path(args.data)
    names = [json.loads(line)["identity"] for line in (data_dir / "sources.jsonl").read_text().splitlines()]
    data = FaceShards(data_dir, SPLIT)
    sources = source_indices(data)
    people = {names[s]: int(i) for s, i in zip(sources, data.labels["identity"])}
    common = [f"gan={args.gan}", f"data={data_dir}", f"splits=[{SPLIT}]", "--no-progress"]
    results: dict = {"split": SPLIT, "people": len(people), "images": len(data)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ledger = tmp / "ledger"
        kssgan("anonymize", *common, f"out={tmp / 'r1'}", f"ledger={ledger}", "k=4")
        snapshot = tmp / "ledger-after-r1"
        shutil.copytree(ledger, snapshot)
        first = Release(tmp / "r1", ledger, names)
        results["release_1"] = {"k": 4, "clusters": {c: len(m) for c, m in first.members.items()}}

        # Composition: second releases of the same people, on the same ledger.
        results["composition"] = {}
        for name, change in {"kmeans": ["method=kmeans"], "k5": ["k=5"], "k6": ["k=6"],
                             "kmeans_not_sticky": ["method=kmeans", "sticky_clusters=false"]}.items():
            proc = kssgan("anonymize", *common, f"out={tmp / name}", f"ledger={ledger}", *change, check=False)
            if proc.returncode != 0:
                message = proc.stderr.strip().splitlines()[-1]
                results["composition"][name] = {"refused": True, "message": message[:300]}
                print(f"{name:18s} refused: {message[:160]}")
                continue
            second = Release(tmp / name, ledger, names)
            k = int(change[0].split("=")[1]) if change[0].startswith("k=") else 4
            entry = {"refused": False, "same_clusters": first.members == {c: second.members[c] for c in first.members},
                     "linkage": linkage(first, second),
                     "reidentification": composition_reid(data, sources, people, first, second, k)}
            results["composition"][name] = entry
            link = entry["linkage"]
            print(f"{name:18s} link same person: pose {link['pose']['same_person']:.3f}, pixels "
                  f"{link['pixels']['same_person']:.3f} (chance {link['pose']['chance_same_person']:.3f}); "
                  f"re-id rank-1 {entry['reidentification']['rank1']:.3f} (bound {entry['reidentification']['bound']:.2f}, "
                  f"p {entry['reidentification']['p_value']:.3f})")

        # Withdrawal: each held-out person in turn, from release 1's state.
        generator, gan_cfg, _ = load_generator(args.gan, "cpu")
        siamese, _ = load_siamese(gan_cfg.siamese, "cpu")
        stats = identity_statistics(siamese, data, 64)
        row_of = {int(i): n for n, i in enumerate(stats.ids)}
        trials = []
        leavers = sorted(people)[: args.people or None]
        for leaver in leavers:
            work = tmp / f"w-{leaver}"
            shutil.copytree(tmp / "r1", work / "r1")
            shutil.copytree(snapshot, work / "ledger")
            record = json.loads((work / "ledger" / "ledger.json").read_text())
            record["releases"][0]["out"] = str((work / "r1").resolve())  # the copy stands for release 1
            (work / "ledger" / "ledger.json").write_text(json.dumps(record))
            kssgan("withdraw", f"data={data_dir}", f"ledger={work / 'ledger'}", f"people=[{leaver}]")
            kssgan("anonymize", *common, f"out={work / 'r2'}", f"ledger={work / 'ledger'}", "k=4")
            second = Release(work / "r2", work / "ledger", names)
            uid = next(c for c, m in first.members.items() if leaver in m)
            members = first.members[uid]
            in_cluster = np.flatnonzero(first.cluster == uid)
            offset_of = {int(first.entry[i]): first.offsets[i] for i in in_cluster}  # each entry shown once
            missing = sorted(set(offset_of) - set(second.entry[second.cluster == uid].tolist()))
            pool_source = Ledger(snapshot).frozen(uid)["source"]  # release 1's pool: entry -> source image
            own = [e for e in offset_of if names[pool_source[e]] == leaver]  # the leaver's own poses
            cue_guess = {"frozen": [], "recomputed": []}
            # What goes missing from release 1's poses: a random n of the frozen pool (shipped), or the
            # leaver's own poses (a pool rebuilt without them). Who left = the member they fit best.
            for policy, gone in (("frozen", missing), ("recomputed", own)):
                for seed in range(SPLITS):
                    scores, order = pose_habit(data, people, gallery_split(data, seed),
                                               np.stack([offset_of[e] for e in gone]), {}, [members] * len(gone))
                    total = np.where(np.isfinite(scores), scores, -1e9).sum(0)
                    cue_guess[policy].append(order[np.argmax(total)] == people[leaver])
            # Differencing: the shipped policy keeps the face (identical bytes); a recomputed one is a mean.
            face_kept = bool(np.array_equal(Ledger(work / "ledger").frozen(uid)["template"],
                                            Ledger(snapshot).frozen(uid)["template"]))
            rows = [row_of[people[m]] for m in members]
            rest = [row_of[people[m]] for m in members if m != leaver]
            old, new = stats.aligned[rows].mean(0), stats.aligned[rest].mean(0)
            recovered = (len(rows) * old - len(rest) * new).round().clip(0, 255).astype(np.uint8)
            differencing = []
            for seed in range(SPLITS):
                gallery = gallery_split(data, seed)
                images = data.__getitems__(gallery.tolist()).images
                emb = siamese_embeddings(siamese, images).numpy()
                ids = data.labels["identity"][gallery]
                templates = np.stack([emb[ids == people[m]].mean(0) for m in members])
                probe = siamese_embeddings(siamese, torch.from_numpy(recovered[None])).numpy()[0]
                differencing.append(members[int(np.argmax(templates @ probe))] == leaver)
            kept = check_release_clusters(work / "r2" / "private")
            trials.append({"person_cluster_size": len(members), "missing_poses": len(missing),
                           "pose_link_frozen_hit": float(np.mean(cue_guess["frozen"])),
                           "pose_link_recomputed_hit": float(np.mean(cue_guess["recomputed"])),
                           "face_kept": face_kept, "differencing_recomputed_hit": float(np.mean(differencing)),
                           "min_cluster_after": kept["min_size"],
                           "erasure_recorded": (work / "r1" / "private" / "erasures.jsonl").is_file()})
            print(f"withdraw {len(trials):2d}/{len(leavers)}: who left, by missing poses: frozen "
                  f"{trials[-1]['pose_link_frozen_hit']:.2f}, recomputed {trials[-1]['pose_link_recomputed_hit']:.2f}; "
                  f"differencing a recomputed face {trials[-1]['differencing_recomputed_hit']:.2f}; face kept {face_kept}")
        results["withdrawal"] = {
            "trials": len(trials),
            "who_left_by_missing_poses": {"frozen_pool": float(np.mean([t["pose_link_frozen_hit"] for t in trials])),
                                         "recomputed_pool": float(np.mean([t["pose_link_recomputed_hit"]
                                                                           for t in trials]))},
            # A kept face differs from itself by nothing: the attacker is left with a guess (chance).
            "who_left_by_differencing": {"frozen_face_identical": all(t["face_kept"] for t in trials),
                                         "recomputed_face": float(np.mean([t["differencing_recomputed_hit"]
                                                                           for t in trials]))},
            "chance": float(np.mean([1 / t["person_cluster_size"] for t in trials])),
            "bound": 1 / 4 + 0.05,
            "min_cluster_after": min(t["min_cluster_after"] for t in trials),
            "erasure_recorded": all(t["erasure_recorded"] for t in trials), "per_trial": trials}
        w = results["withdrawal"]
        print(f"withdrawal ({w['trials']} people): who left, by missing poses {w['who_left_by_missing_poses']}, "
              f"by differencing {w['who_left_by_differencing']} (chance {w['chance']:.3f}, bound {w['bound']:.2f}); "
              f"smallest cluster after {w['min_cluster_after']}")
    write_report(args.out, "releases_over_time", **results)


if __name__ == "__main__":
    main()
