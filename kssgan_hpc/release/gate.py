"""The release gate's verdict: which de-identification a release ships, or that it ships nothing.

Rank 0 attacks the generator on held-out people (attack/heldout.py), once per release (a resumed
release reads the verdict back from private/gate.json). A generator that passes ships. One that
fails is not used: the release is made with k-Same-Aligned (gate.fallback=aligned, measured too,
for the record) or refused (gate.fallback=refuse), before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from kssgan_hpc.attack.heldout import HeldOutAttack
from kssgan_hpc.config.release import AnonymizeConfig
from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.distributed import barrier
from kssgan_hpc.errors import RunFailure
from kssgan_hpc.files import atomic_write_json

log = logging.getLogger(__name__)


def gate_release(cfg: AnonymizeConfig, path: Path, data_dir: Path, siamese: torch.nn.Module, siamese_run: str,
                 generator: torch.nn.Module, device: torch.device, rank: int) -> str:
    """Collective: the method that ships (kssgan or ksame_aligned), recorded in `path` (gate.json). A
    refused release raises RunFailure."""
    if rank == 0 and not path.is_file():
        attack = HeldOutAttack(FaceShards(data_dir, cfg.gate_split), siamese, siamese_run, cfg.k, cfg.gate,
                               device=device, cues=cfg.cues,
                               cluster_with={"method": cfg.method, "seed": cfg.seed, "duplicates": cfg.duplicates})
        measured = attack.measure("kssgan", generator)
        method, fallback = "kssgan", None
        if not measured["passed"]:
            method = "ksame_aligned" if cfg.gate.fallback == "aligned" else "refused"
            log.warning("gate: the generator failed on held-out people (%s); %s", "; ".join(measured["reasons"]),
                        "releasing k-Same-Aligned instead" if method == "ksame_aligned" else "release refused")
            if method == "ksame_aligned":  # measured too, for the record (its cues are the generator's)
                fallback = attack.measure("ksame_aligned")
                if not fallback["passed"]:
                    log.warning("gate: k-Same-Aligned did not pass either: %s", "; ".join(fallback["reasons"]))
        else:
            log.info("gate: the generator passed on held-out people (worst attacker %s: rank-1 %.3f, faces %.3f)",
                     measured["worst"]["attacker"], measured["worst"]["rank1"], measured["faces_detected"])
        if measured.get("detectable_excess", 0) > cfg.gate.tolerance:
            log.warning("gate: %d probes reveal an excess over 1/k of %.3f or more only (tolerance %.3f): add "
                        "held-out people or probes for a sharper test", measured["probes"],
                        measured["detectable_excess"], cfg.gate.tolerance)
        atomic_write_json(path, {"shipped": method, "generator": measured, "ksame_aligned": fallback,
                                 "gate": dataclasses.asdict(cfg.gate)})
    barrier()
    method = json.loads(path.read_text())["shipped"]
    if method == "refused":
        raise RunFailure(f"{path}: the generator in {cfg.gan} failed the release gate and gate.fallback=refuse: "
                           "nothing was released (the reasons are in this file)")
    return method


def public_record(cfg: AnonymizeConfig, gate: dict[str, Any]) -> dict[str, Any]:
    """How the release was tested, for its public manifest: the gate's settings (and which are weaker
    than the defaults), the decision, and per measured method each attacker's rank-1 and p-value
    on the held-out people (aggregates: no person, image or cluster is named)."""
    def measured(result: dict[str, Any] | None) -> dict[str, Any] | None:
        if result is None:
            return None
        keys = ("passed", "reasons", "k", "identities", "probes", "faces_detected", "detectable_excess", "worst")
        return {**{key: result[key] for key in keys if key in result},
                "attackers": {name: {"rank1": a["rank1"], "p_value": a["p_value"]}
                              for name, a in result.get("attackers", {}).items()}}

    settings = dataclasses.asdict(cfg.gate)
    return {"split": "input" if cfg.input else cfg.gate_split, "k": cfg.k, "cues": cfg.cues,
            "method": cfg.method, "settings": settings, "weaker_than_default": cfg.weaker_gate(),
            "decision": gate["shipped"], "generator": measured(gate["generator"]),
            "ksame_aligned": measured(gate["ksame_aligned"])}
