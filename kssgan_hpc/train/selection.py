"""Checkpoint selection (GAN training, rank 0): which EMA generator ships.

At every checkpoint the EMA generator is attacked on held-out people with the release gate's own
measurement (attack/heldout.py); the newest one that passes becomes the run's selected generator
(checkpoints.save_selected_generator), which `kssgan anonymize` ships. Every measurement is a line
of selected/selection.jsonl and gate/* scalars in TensorBoard.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from kssgan_hpc.attack.heldout import HeldOutAttack
from kssgan_hpc.checkpoints import append_selection, save_selected_generator
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
        self.attack = HeldOutAttack(data, siamese, cfg.siamese, k, cfg.gate, device=device, seed=cfg.engine.seed)

    def measure(self, step: int, ema: torch.nn.Module, run: Any) -> dict[str, Any]:
        result = self.attack.measure("kssgan", ema)
        scalars = {"gate/passed": float(result["passed"])}
        if "worst" in result:
            scalars.update({"gate/worst_rank1": result["worst"]["rank1"],
                            "gate/faces_detected": result["faces_detected"]})
        run.log_scalars(step, scalars)
        measured = {"worst": result["worst"], "faces_detected": result["faces_detected"]} if "worst" in result else {}
        append_selection(self.out, {"step": step, "passed": result["passed"], "reasons": result["reasons"], **measured})
        log.info("gate at step %d on held-out '%s': %s", step, self.attack.population.data.split,
                 "passed" if result["passed"] else "failed: " + "; ".join(result["reasons"]))
        if result["passed"]:
            save_selected_generator(self.out, ema.state_dict(), {"step": step, **measured})
        return result
