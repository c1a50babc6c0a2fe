"""Checkpoint selection (GAN training, rank 0): which EMA generator ships.

At every checkpoint the EMA generator is attacked on held-out people with the release gate's own
measurement (attack/heldout.py: every attacker, faces detected, the third-party leak) and its
realism measured (KID in SFace's space against the training faces). Of the checkpoints that pass,
the most real (lowest KID; the newer on a tie) becomes the run's selected generator
(checkpoints.save_selected_generator), which `kssgan anonymize` ships: a later checkpoint that
passes but is less real does not replace it. Every measurement is a line of
selected/selection.jsonl and gate/* and realism/* scalars in TensorBoard.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from kssgan_hpc.attack.heldout import HeldOutAttack
from kssgan_hpc.checkpoints import SELECTED, append_selection, save_selected_generator
from kssgan_hpc.config.train import GanConfig
from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.ksame.records import load_clusters

log = logging.getLogger(__name__)


class CheckpointSelector:
    """The gate's measurement of each checkpoint's EMA generator; the newest that passes is selected."""

    def __init__(self, cfg: GanConfig, out: Path, siamese: torch.nn.Module, device: torch.device | str) -> None:
        self.out = Path(out)
        k = int(load_clusters(cfg.clusters)["k"])
        data = FaceShards(Path(cfg.data), cfg.select_split)
        selected = self.out / SELECTED / "selected.json"
        # A resumed run competes with what it selected before it stopped.
        self.best_kid = json.loads(selected.read_text()).get("kid", math.inf) if selected.is_file() else None
        self.attack = HeldOutAttack(data, siamese, cfg.siamese, k, cfg.gate, device=device, seed=cfg.engine.seed,
                                    training=FaceShards(Path(cfg.data), "train"))

    def measure(self, step: int, ema: torch.nn.Module, run: Any) -> dict[str, Any]:
        result = self.attack.measure("kssgan", ema)
        scalars = {"gate/passed": float(result["passed"])}
        measured: dict[str, Any] = {}
        if "worst" in result:
            scalars.update({"gate/worst_rank1": result["worst"]["rank1"],
                            "gate/faces_detected": result["faces_detected"]})
            measured = {"worst": result["worst"], "faces_detected": result["faces_detected"]}
        if "third_party" in result:
            leak = result["third_party"]["sface"]
            scalars.update({"gate/third_party_excess": leak["excess"], "realism/kid": result["realism"]["kid"],
                            "realism/fine": result["realism"]["fine"]})
            measured.update(third_party=leak["excess"], **result["realism"])
        run.log_scalars(step, scalars)
        kid = measured.get("kid", math.inf)
        chosen = result["passed"] and (self.best_kid is None or kid <= self.best_kid)
        append_selection(self.out, {"step": step, "passed": result["passed"], "selected": chosen,
                                    "reasons": result["reasons"], **measured})
        log.info("gate at step %d on held-out '%s': %s%s", step, self.attack.population.data.split,
                 "passed" if result["passed"] else "failed: " + "; ".join(result["reasons"]),
                 f" (KID {kid:.4f}: {'selected' if chosen else 'a passing one is more real'})"
                 if result["passed"] else "")
        if chosen:
            self.best_kid = kid
            save_selected_generator(self.out, ema.state_dict(), {"step": step, **measured})
        return result
