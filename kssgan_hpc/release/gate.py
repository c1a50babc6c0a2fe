"""The release gate's verdict: which de-identification a release ships, or that it ships nothing.

Rank 0 attacks the generator on the people of every split the release ships, and on the held-out
people (`gate_split`) whatever it ships (attack/heldout.py): held-out people show what it does to
people it never saw, training people whether it memorised them (each against their own other
photos, as the report does). Once per release: a resumed release reads the verdict back from
private/gate.json. A generator that passes everywhere ships. One that fails is not used: the release
is made with k-Same-Aligned (gate.fallback=aligned) when that passes everywhere, else refused
(gate.fallback=refuse, or a failing fallback), before anything is released.
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


def gated_splits(cfg: AnonymizeConfig) -> list[str]:
    """The splits whose people the gate attacks: the held-out split and every split released."""
    return ["test"] if cfg.input else list(dict.fromkeys([cfg.gate_split, *cfg.splits]))


def _combined(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One method's measurements on every gated split: passed only when it passed on each."""
    return {"passed": all(r["passed"] for r in results.values()),
            "reasons": [f"{split}: {reason}" for split, r in results.items() for reason in r["reasons"]],
            "splits": results}


def gate_release(cfg: AnonymizeConfig, path: Path, data_dir: Path, siamese: torch.nn.Module, siamese_run: str,
                 generator: torch.nn.Module, device: torch.device, rank: int, training_data: Path) -> str:
    """Collective: the method that ships (kssgan or ksame_aligned), recorded in `path` (gate.json). A
    refused release raises RunFailure. `training_data`: G's dataset, whose training people no output
    may show."""
    if rank == 0 and not path.is_file():
        training = FaceShards(training_data, "train")
        attacks = {split: HeldOutAttack(FaceShards(data_dir, split), siamese, siamese_run, cfg.k, cfg.gate, training=training,
                                        device=device, cues=cfg.cues,
                                        cluster_with={"method": cfg.method, "seed": cfg.seed,
                                                      "duplicates": cfg.duplicates})
                   for split in gated_splits(cfg)}
        measured = _combined({split: attack.measure("kssgan", generator) for split, attack in attacks.items()})
        method, fallback = "kssgan", None
        if not measured["passed"]:
            log.warning("gate: the generator failed (%s)", "; ".join(measured["reasons"]))
            method = "refused"
            if cfg.gate.fallback == "aligned":
                fallback = _combined({split: attack.measure("ksame_aligned") for split, attack in attacks.items()})
                if fallback["passed"]:
                    method = "ksame_aligned"
                    log.warning("gate: releasing k-Same-Aligned instead (it passed)")
                else:
                    log.warning("gate: k-Same-Aligned failed too (%s): nothing is released",
                                "; ".join(fallback["reasons"]))
        else:
            log.info("gate: the generator passed on %s", ", ".join(measured["splits"]))
        for split, result in measured["splits"].items():
            if result.get("detectable_excess") and result["detectable_excess"] > cfg.gate.tolerance:
                log.warning("gate: %d probes of '%s' reveal an excess over 1/k of %.3f or more only (tolerance %.3f): "
                            "add people or probes for a sharper test", result["probes"], split,
                            result["detectable_excess"], cfg.gate.tolerance)
        atomic_write_json(path, {"shipped": method, "generator": measured, "ksame_aligned": fallback,
                                 "gate": dataclasses.asdict(cfg.gate)})
    barrier()
    method = json.loads(path.read_text())["shipped"]
    if method == "refused":
        why = ("gate.fallback=refuse" if cfg.gate.fallback == "refuse" else "k-Same-Aligned failed it too")
        raise RunFailure(f"{path}: the generator in {cfg.gan} failed the release gate and {why}: nothing was "
                         "released (the reasons are in this file)")
    return method


def public_record(cfg: AnonymizeConfig, gate: dict[str, Any]) -> dict[str, Any]:
    """How the release was tested, for its public manifest: the gate's settings (and which are weaker
    than the defaults), the decision, and per measured method and gated split each attacker's rank-1,
    its p-value against 1/k and that of the binomial test against the bound (aggregates: no person,
    image or cluster is named)."""
    def measured(result: dict[str, Any] | None) -> dict[str, Any] | None:
        if result is None:
            return None
        keys = ("passed", "reasons", "k", "identities", "probes", "faces_detected", "detectable_excess", "worst",
                "third_party")
        return {"passed": result["passed"], "reasons": result["reasons"], "splits": {
            split: {**{key: r[key] for key in keys if key in r},
                    "attackers": {name: {key: a.get(key) for key in ("rank1", "probes", "p_value", "p_within_bound")}
                                  for name, a in r.get("attackers", {}).items()}}
            for split, r in result["splits"].items()}}

    settings = dataclasses.asdict(cfg.gate)
    return {"splits": ["input"] if cfg.input else gated_splits(cfg), "k": cfg.k, "cues": cfg.cues,
            "method": cfg.method, "settings": settings, "weaker_than_default": cfg.weaker_gate(),
            "decision": gate["shipped"], "generator": measured(gate["generator"]),
            "ksame_aligned": measured(gate["ksame_aligned"])}
