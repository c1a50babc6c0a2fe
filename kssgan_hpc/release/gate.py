"""The release gate: attack a de-identification on held-out people before anything it makes ships.

`attack_population` is the one measurement, shared by `kssgan anonymize` (gate, fallback to
k-Same-Aligned or refusal), GAN training (checkpoint selection) and `kssgan evaluate` (the report):
per person, the first gallery_per_identity images are the attacker's gallery of originals and the
next probes_per_identity are de-identified and attacked by every attacker. A method passes when the
worst attacker's rank-1 is <= 1/k + tolerance and YuNet finds a face in enough outputs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from kssgan_hpc.config.gate import GateConfig
from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.data.shards import atomic_write_json
from kssgan_hpc.evaluate.attackers import Gallery, make_attacker, run_attack, worst
from kssgan_hpc.ksame.build import KSame, identity_statistics, ksame
from kssgan_hpc.release.deidentify import cue_labels, deidentify

log = logging.getLogger(__name__)


def read_images(data: FaceShards, indices: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] in the order of `indices`."""
    return data.__getitems__(np.asarray(indices).tolist()).images.permute(0, 2, 3, 1).numpy().copy()


def gallery_and_probes(identities: np.ndarray, gallery: int, probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per identity, its first images (dataset order) for the gallery and the next ones as probes;
    identities with fewer than 2 images are left out."""
    g, p = [], []
    for identity in np.unique(identities):
        rows = np.flatnonzero(identities == identity)
        if len(rows) < 2:
            continue
        n_gallery = min(gallery, len(rows) - 1)
        g.extend(rows[:n_gallery])
        p.extend(rows[n_gallery:n_gallery + probes])
    return np.array(g, np.int64), np.array(p, np.int64)


@dataclass
class Population:
    """The people of one split, ready to be attacked: their gallery of originals and their probes."""

    data: FaceShards
    gallery_rows: np.ndarray
    probe_rows: np.ndarray
    gallery: Gallery
    probe_images: np.ndarray

    @property
    def probe_ids(self) -> np.ndarray:
        return self.data.labels["identity"][self.probe_rows]

    @property
    def identities(self) -> int:
        return len(np.unique(self.probe_ids))

    def cues(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return cue_labels(self.data.labels, rows)


def population_of(data: FaceShards, gallery_per_identity: int, probes_per_identity: int) -> Population:
    gallery_rows, probe_rows = gallery_and_probes(data.labels["identity"], gallery_per_identity, probes_per_identity)
    return Population(data, gallery_rows, probe_rows,
                      Gallery(read_images(data, gallery_rows), data.labels["identity"][gallery_rows]),
                      read_images(data, probe_rows))


def faces_detected(images: np.ndarray, detector: Any) -> float:
    from kssgan_hpc.evaluate.recognizers import upscale

    return float(np.mean([detector.detect(upscale(image)) is not None for image in images])) if len(images) else 0.0


def attack_population(population: Population, probes: np.ndarray, gallery_deidentified: np.ndarray | None,
                      k: int | None, attackers: dict[str, Any], cache: dict[str, Any]) -> dict[str, Any]:
    """Every attacker against one method's outputs on one population; the worst of them."""
    results = {name: run_attack(name, attacker, population.gallery, probes, population.probe_ids, k,
                                gallery_deidentified, cache) for name, attacker in attackers.items()}
    name, rank1 = worst(results)
    return {"attackers": results, "worst": {"attacker": name, "rank1": rank1,
                                            "p_value": results[name]["p_value"]}}


def verdict(measured: dict[str, Any], k: int, cfg: GateConfig) -> list[str]:
    """Why a measured method fails the gate (empty: it passes)."""
    reasons = []
    bound = 1 / k + cfg.tolerance
    if measured["worst"]["rank1"] > bound:
        reasons.append(f"{measured['worst']['attacker']} re-identifies {measured['worst']['rank1']:.3f} of held-out "
                       f"probes (> 1/k + tolerance = {bound:.3f})")
    if measured["faces_detected"] < cfg.min_faces_detected:
        reasons.append(f"faces detected in {measured['faces_detected']:.3f} of outputs "
                       f"(< {cfg.min_faces_detected})")
    return reasons


class Gate:
    """The gate's measurement on one held-out split, set up once, run for any generator."""

    def __init__(self, data: FaceShards, siamese: torch.nn.Module, siamese_run: str | Path, k: int, cfg: GateConfig,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        from kssgan_hpc.evaluate.recognizers import YuNet

        self.cfg, self.k, self.device, self.seed = cfg, k, device, seed
        self.population = population_of(data, cfg.gallery_per_identity, cfg.probes_per_identity)
        self.measurable = self.population.identities >= k and len(self.population.probe_rows) > 0
        self.ksame: KSame | None = None
        if self.measurable:
            self.ksame = ksame(identity_statistics(siamese, data, 64, device), k)
        self.attackers = {name: make_attacker(name, siamese_run, device) for name in cfg.attackers}
        self.detector = YuNet()
        self.cache: dict[str, Any] = {}

    def measure(self, method: str, generator: torch.nn.Module | None = None) -> dict[str, Any]:
        """Attack `method` (kssgan with `generator`, or ksame_aligned) on the held-out people."""
        if not self.measurable:
            return {"method": method, "passed": False, "identities": self.population.identities,
                    "reasons": [f"{self.population.identities} held-out people with 2+ images in "
                                f"'{self.population.data.split}': fewer than k={self.k}, nothing to measure"]}
        pop = self.population

        def run(rows: np.ndarray) -> np.ndarray:  # each image its own z (keys): no noise shared with the gallery
            return deidentify(method, self.ksame, pop.cues(rows), generator=generator, seed=self.seed, keys=rows,
                              device=self.device)

        # The gallery is de-identified only for the parrot, the one attacker that uses it.
        probes = run(pop.probe_rows)
        gallery = run(pop.gallery_rows) if "parrot" in self.attackers else None
        measured = attack_population(pop, probes, gallery, self.k, self.attackers, self.cache)
        measured["faces_detected"] = faces_detected(probes, self.detector)
        reasons = verdict(measured, self.k, self.cfg)
        return {"method": method, "passed": not reasons, "reasons": reasons, "k": self.k,
                "split": pop.data.split, "identities": pop.identities, "probes": len(pop.probe_rows), **measured}


class CheckpointSelector:
    """GAN training, rank 0: the gate's measurement at every checkpoint; the newest EMA generator that
    passes is copied to out/selected/ (what `kssgan anonymize` ships), with selection.jsonl beside it."""

    def __init__(self, gan_cfg: Any, out: Path, siamese: torch.nn.Module, device: torch.device | str) -> None:
        from kssgan_hpc.artefacts import SELECTED, load_clusters

        self.folder = Path(out) / SELECTED
        k = int(load_clusters(gan_cfg.clusters)["k"])
        data = FaceShards(Path(gan_cfg.data), gan_cfg.select_split)
        self.gate = Gate(data, siamese, gan_cfg.siamese, k, gan_cfg.gate, device=device, seed=gan_cfg.engine.seed)

    def measure(self, step: int, ema: torch.nn.Module, run: Any) -> dict[str, Any]:
        result = self.gate.measure("kssgan", ema)
        scalars = {"gate/passed": float(result["passed"])}
        if "worst" in result:
            scalars.update({"gate/worst_rank1": result["worst"]["rank1"],
                            "gate/faces_detected": result["faces_detected"]})
        run.log_scalars(step, scalars)
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "selection.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "passed": result["passed"], "reasons": result["reasons"],
                                 **({"worst": result["worst"], "faces_detected": result["faces_detected"]}
                                    if "worst" in result else {})}) + "\n")
        log.info("gate at step %d on held-out '%s': %s", step, self.gate.population.data.split,
                 "passed" if result["passed"] else "failed: " + "; ".join(result["reasons"]))
        if result["passed"]:
            tmp = self.folder / f".ema_g.safetensors.tmp-{os.getpid()}"
            save_file({name: t.detach().cpu().contiguous() for name, t in ema.state_dict().items()}, tmp)
            os.replace(tmp, self.folder / "ema_g.safetensors")
            atomic_write_json(self.folder / "selected.json", {"step": step, **{k: result[k] for k in
                                                                               ("worst", "faces_detected")}})
        return result
