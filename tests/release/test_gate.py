"""The release gate's decision: evidence by the binomial test, a fallback that must pass too, every split."""

import json
from pathlib import Path

import pytest
import torch
from helpers import LeakyGenerator, kssgan

from kssgan_hpc.artefacts import load_siamese
from kssgan_hpc.attack.attackers import p_within
from kssgan_hpc.attack.heldout import verdict
from kssgan_hpc.config.gate import GateConfig
from kssgan_hpc.config.release import AnonymizeConfig
from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.errors import RunFailure
from kssgan_hpc.release.gate import gate_release

FAST = ["siamese", "sface", "lowpass8", "lowpass16", "eigenfaces", "parrot"]


def measured(rank1: float, probes: int) -> dict:
    attack = {"rank1": rank1, "probes": probes, "p_within_bound": p_within(rank1, probes, 0.30)}
    return {"attackers": {"siamese": attack}, "worst": {"attacker": "siamese", "rank1": rank1},
            "faces_detected": 1.0}


def test_the_binomial_rule_passes_only_on_evidence() -> None:
    strict, point = GateConfig(), GateConfig(rule="point", allow_weaker=True)
    # 0.25 at k = 4 is within 0.30, but 80 probes cannot show it (p ~ 0.2); 2000 can.
    assert verdict(measured(0.25, 80), 4, point) == []
    (reason,) = verdict(measured(0.25, 80), 4, strict)
    assert "does not show <= 1/k + tolerance = 0.300" in reason and "too few probes" in reason
    assert verdict(measured(0.25, 2000), 4, strict) == []
    assert verdict(measured(0.31, 100000), 4, strict) and verdict(measured(0.31, 80), 4, point)
    assert "gate.rule=point" in point.weaker_than_default() and strict.weaker_than_default() == []


def leaky_release(demo_data: Path, gan_run: Path, fallback: str) -> AnonymizeConfig:
    """A release of the training people, each face given its own source's cues: a generator that reads
    them finds its source (LeakyGenerator); k-Same-Aligned has nothing to find them with."""
    return AnonymizeConfig(gan=str(gan_run), data=str(demo_data), splits=["train"], gate_split="train", cues="own",
                           gate=GateConfig(rule="point", attackers=FAST, min_faces_detected=0.0, fallback=fallback,
                                           allow_weaker=True))


def test_a_failing_generator_falls_back_only_to_what_passes(demo_data: Path, gan_run: Path, siamese_run: Path,
                                                            tmp_path: Path) -> None:
    siamese, _ = load_siamese(siamese_run)
    leaky = LeakyGenerator(FaceShards(demo_data, "train"), siamese)
    cfg = leaky_release(demo_data, gan_run, "aligned")
    shipped = gate_release(cfg, tmp_path / "gate.json", demo_data, siamese, str(siamese_run), leaky,
                           torch.device("cpu"), 0, demo_data)
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert shipped == gate["shipped"] == "ksame_aligned"
    assert not gate["generator"]["passed"] and gate["generator"]["reasons"][0].startswith("train: ")
    assert gate["ksame_aligned"]["passed"] and set(gate["ksame_aligned"]["splits"]) == {"train"}
    with pytest.raises(RunFailure, match="failed the release gate and gate.fallback=refuse: nothing was released"):
        gate_release(leaky_release(demo_data, gan_run, "refuse"), tmp_path / "refused.json", demo_data, siamese,
                     str(siamese_run), leaky, torch.device("cpu"), 0, demo_data)


def test_a_fallback_that_fails_too_releases_nothing(demo_data: Path, gan_run: Path, tmp_path: Path) -> None:
    # The default gate on 4 held-out people: 20 probes can show nothing, for G nor for k-Same-Aligned.
    out, ledger = tmp_path / "out", tmp_path / "ledger"
    proc = kssgan("anonymize", f"gan={gan_run}", f"data={demo_data}", f"out={out}", f"ledger={ledger}",
                  "splits=[train,test]", "--no-progress")
    assert proc.returncode == 1, proc.stderr
    assert "failed the release gate and k-Same-Aligned failed it too: nothing was released" in proc.stderr
    assert not (out / "release").exists() and not (ledger / "ledger.json").exists()
    gate = json.loads((out / "private" / "gate.json").read_text())
    assert gate["shipped"] == "refused" and not gate["ksame_aligned"]["passed"]
    assert set(gate["generator"]["splits"]) == {"train", "test"}  # every released split's people, and held-out
    assert any("too few probes" in reason for reason in gate["ksame_aligned"]["reasons"])
