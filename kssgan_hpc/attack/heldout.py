"""The gate's measurement: a de-identification attacked on held-out people, with the rule it must pass.

Run before a release ships (release/gate.py: ship, fall back to k-Same-Aligned, or refuse) and at
every checkpoint of GAN training (train/selection.py: which EMA generator ships). The held-out
people are k-Same-clustered among themselves, every probe and (for the parrot) gallery image
de-identified with its own z, and every attacker run. A method passes when every attacker's rank-1
is shown to be <= 1/k + tolerance (the one-sided binomial test at ALPHA: few probes cannot show it;
`gate.rule=point` only asks the measured rank-1 to be), YuNet finds a face in enough outputs, and
(a generator, given its training people) SFace matches no more outputs to a training person
outside their cluster, beyond the tolerance, than it matches the same people's real faces or the
generator's own inputs, their k-Same-Aligned base faces (attack/third_party.py). k-Same-Aligned
itself, a cluster's own average, has no generator to leak through: averages match strangers more
often than photos do, which says nothing of memorisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kssgan_hpc.attack.attackers import detectable_excess, make_attacker, p_within
from kssgan_hpc.attack.kid import kernel_inception_distance
from kssgan_hpc.attack.measures import faces_detected, high_frequency_share
from kssgan_hpc.attack.population import attack_population, population_of
from kssgan_hpc.attack.recognizers import SFaceRecognizer, YuNet
from kssgan_hpc.attack.third_party import ThirdParties, excluded_people
from kssgan_hpc.config.gate import ALPHA, GateConfig
from kssgan_hpc.data.dataset import FaceShards, read_images
from kssgan_hpc.ksame.build import KSame, identity_statistics, ksame
from kssgan_hpc.ksame.deidentify import deidentify


def verdict(measured: dict[str, Any], k: int, cfg: GateConfig) -> list[str]:
    """Why a measured method fails the gate (empty: it passes)."""
    reasons = []
    bound = 1 / k + cfg.tolerance
    if cfg.rule == "binomial":
        for name, attack in measured["attackers"].items():
            p = attack["p_within_bound"]
            if p is None or p >= ALPHA:
                reasons.append(f"{name}: rank-1 {attack['rank1']:.3f} on {attack['probes']} probes does not show "
                               f"<= 1/k + tolerance = {bound:.3f} (binomial p {'-' if p is None else f'{p:.3f}'} "
                               f">= {ALPHA}: too close to the bound, or too few probes)")
    elif measured["worst"]["rank1"] > bound:
        reasons.append(f"{measured['worst']['attacker']} re-identifies {measured['worst']['rank1']:.3f} of held-out "
                       f"probes (> 1/k + tolerance = {bound:.3f})")
    for name, leak in measured.get("third_party", {}).items():
        if leak["excess"] > cfg.tolerance:
            reasons.append(f"third-party leak: {name} matches {leak['matched']:.3f} of outputs to a training person "
                           f"outside their cluster ({leak['rule']}), its baseline (real faces, its base) "
                           f"{leak['baseline']:.3f}: excess "
                           f"{leak['excess']:.3f} > tolerance {cfg.tolerance}")
    if measured["faces_detected"] < cfg.min_faces_detected:
        reasons.append(f"faces detected in {measured['faces_detected']:.3f} of outputs "
                       f"(< {cfg.min_faces_detected})")
    return reasons


class HeldOutAttack:
    """The gate's measurement on one held-out split, set up once, run for any generator."""

    def __init__(self, data: FaceShards, siamese: torch.nn.Module, siamese_run: str | Path, k: int, cfg: GateConfig,
                 device: torch.device | str = "cpu", seed: int = 0, cues: str = "cluster",
                 cluster_with: dict[str, Any] | None = None, training: FaceShards | None = None) -> None:
        """`cues` and `cluster_with` (ksame's method, seed, duplicates): as the release does it.
        `training`: G's training people, whom no output may show (the third-party check, with SFace)."""
        self.cfg, self.k, self.device, self.seed = cfg, k, device, seed
        self.population = population_of(data, cfg.gallery_per_identity, cfg.probes_per_identity)
        self.measurable = self.population.identities >= k and len(self.population.probe_rows) > 0
        self.clustering: KSame | None = None
        if self.measurable:
            self.clustering = ksame(identity_statistics(siamese, data, 64, device), k, **(cluster_with or {}))
            # Whose cues each face shows, as a release with this policy draws them (see draw_cues).
            self.shown, self.released = self.population.shown_cues(self.clustering, seed, cues)
        self.attackers = {name: make_attacker(name, siamese_run, device) for name in cfg.attackers}
        self.detector = YuNet()
        self.cache: dict[str, Any] = {}
        self.third_parties: list[ThirdParties] = []
        if training is not None and self.measurable:
            sface = self.attackers["sface"].recognizer if "sface" in self.attackers else SFaceRecognizer()
            real = read_images(training, np.arange(len(training)))
            self.third_parties = [ThirdParties("sface", sface, real, training.labels["identity"])]
            self.real_fine = float(high_frequency_share(real).mean())

    def measure(self, method: str, generator: torch.nn.Module | None = None) -> dict[str, Any]:
        """Attack `method` (kssgan with `generator`, or ksame_aligned) on the held-out people."""
        if not self.measurable:
            return {"method": method, "passed": False, "identities": self.population.identities,
                    "reasons": [f"{self.population.identities} held-out people with 2+ images in "
                                f"'{self.population.data.split}': fewer than k={self.k}, nothing to measure"]}
        pop = self.population

        def run_method(name: str, model: torch.nn.Module | None, rows: np.ndarray) -> np.ndarray:
            # Each image its own z (keys): no noise shared with the gallery.
            return deidentify(name, self.clustering, pop.cues(self.shown[rows]), generator=model, seed=self.seed,
                              keys=rows, device=self.device)

        # The gallery is de-identified only for the parrot, the one attacker that uses it.
        probes = run_method(method, generator, pop.probe_rows)
        gallery = run_method(method, generator, pop.gallery_rows) if "parrot" in self.attackers else None
        measured = attack_population(pop, probes, gallery, self.k, self.attackers, self.cache, self.released)
        for attack in measured["attackers"].values():  # the evidence that each stays within the bound
            attack["probes"] = attack.get("probes", len(pop.probe_rows))
            attack["p_within_bound"] = p_within(attack["rank1"], attack["probes"], 1 / self.k + self.cfg.tolerance)
        measured["faces_detected"] = faces_detected(probes, self.detector)
        if self.third_parties and generator is not None:  # k-Same-Aligned averages the released people themselves
            excluded = excluded_people(pop.probe_ids, self.clustering)
            base = run_method("ksame_aligned", None, pop.probe_rows)  # G's own inputs: what it was given
            measured["third_party"] = {tp.name: tp.leak(probes, pop.probe_images, excluded, base)
                                       for tp in self.third_parties}
            # How real (checkpoint selection's choice among the passing ones): KID in SFace's space and
            # fine detail, against the training faces.
            sface = self.third_parties[0]
            kid, _ = kernel_inception_distance(sface.embeddings, sface.recognizer.embed(probes), subsets=50,
                                               subset_size=200, seed=self.seed)
            measured["realism"] = {"kid": kid, "fine": float(high_frequency_share(probes).mean()) / self.real_fine}
        # What this many probes can see at all: an excess over 1/k below it passes unseen.
        measured["detectable_excess"] = detectable_excess(len(pop.probe_rows), self.k)
        reasons = verdict(measured, self.k, self.cfg)
        return {"method": method, "passed": not reasons, "reasons": reasons, "k": self.k,
                "split": pop.data.split, "identities": pop.identities, "probes": len(pop.probe_rows), **measured}
