"""One sweep trial as a submitit job: train for the trial's budget, evaluate, return one objective.

A trial is a training job like any other (TrainTask: every task a rank, checkpoint + requeue at the
time limit), followed by the objective on rank 0. Objectives are looked up by name, so a sweep file
can switch to another measure without touching the driver.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kssgan_hpc.config import from_dict
from kssgan_hpc.config.sweep import ObjectiveConfig
from kssgan_hpc.launch.submit import TrainTask


def gan_validation(run_dir: Path, objective: ObjectiveConfig) -> dict[str, float]:
    from kssgan_hpc.evaluate.validation import validate_gan

    metrics = validate_gan(run_dir, split=objective.split, margin=objective.margin)
    metrics["objective"] = (objective.w_identity * metrics["identity/to_surrogate"]
                            + objective.w_leak * metrics["identity/to_source"]
                            + objective.w_realism * metrics["realism/kid"])
    return metrics


def report_objective(run_dir: Path, objective: ObjectiveConfig) -> dict[str, float]:
    """The evaluation report of the trial's generator on held-out people: the worst attacker's rank-1
    above 1/k, utility, realism."""
    import yaml

    from kssgan_hpc.config.release import EvaluateConfig
    from kssgan_hpc.evaluate.report import evaluate

    data = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())["data"]
    report = evaluate(EvaluateConfig(
        gan=str(run_dir), data=data, training_split="train", heldout_split=objective.split, release=None,
        out=str(run_dir / "report"), ks=objective.ks, attackers=objective.attackers,
        probes_per_identity=objective.probes_per_identity,
        verify="quick"))  # the trial's training hashed this dataset minutes ago: one full read per trial
    methods = report["populations"]["heldout"]["methods"]
    entries = [methods[f"kssgan@{k}"] for k in objective.ks]
    above = [max(0.0, e["worst"]["rank1"] - e["k_bound"]) for e in entries]
    metrics = {"privacy/worst_rank1_above_1_over_k": sum(above) / len(above),
               "utility/ssim": sum(e["ssim"] for e in entries) / len(entries),
               "realism/kid_sface": sum(e["kid"] for e in entries) / len(entries)}
    metrics["objective"] = (objective.w_privacy * metrics["privacy/worst_rank1_above_1_over_k"]
                            + objective.w_utility * (1 - metrics["utility/ssim"])
                            + objective.w_realism * metrics["realism/kid_sface"])
    return metrics


def realism_objective(run_dir: Path, objective: ObjectiveConfig) -> dict[str, Any]:
    """KID in SFace's space of the trial's generator on the held-out people of `split` (lower: more
    real), with privacy as a constraint: every attacker within 1/k + tolerance, no third-party leak
    beyond the tolerance, faces detected in enough outputs; a trial that breaks one is infeasible
    (`violations`) and told the sweep's failure penalty."""
    import yaml

    from kssgan_hpc.config.release import EvaluateConfig
    from kssgan_hpc.evaluate.report import evaluate

    data = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())["data"]
    report = evaluate(EvaluateConfig(
        gan=str(run_dir), data=data, training_split="train", heldout_split=objective.split, release=None,
        out=str(run_dir / "report"), ks=objective.ks, attackers=objective.attackers,
        probes_per_identity=objective.probes_per_identity, tolerance=objective.tolerance, verify="quick"))
    violations = []
    entries = {k: report["populations"]["heldout"]["methods"][f"kssgan@{k}"] for k in objective.ks}
    for k, entry in entries.items():
        worst = entry["worst"]
        if worst["rank1"] > 1 / k + objective.tolerance:
            violations.append(f"k={k}: {worst['attacker']} re-identifies {worst['rank1']:.3f} > 1/k + tolerance")
        for name, leak in entry["third_party"].items():
            if leak["excess"] > objective.tolerance:
                violations.append(f"k={k}: third-party leak ({name}) {leak['excess']:.3f} > tolerance")
        if entry["faces_detected"] < objective.min_faces_detected:
            violations.append(f"k={k}: faces detected in {entry['faces_detected']:.3f} of outputs")
    metrics = {"realism/kid_sface": sum(e["kid"] for e in entries.values()) / len(entries),
               "realism/fine": sum(e["high_frequency"] for e in entries.values()) / len(entries),
               "privacy/worst_rank1": max(e["worst"]["rank1"] for e in entries.values()),
               "privacy/third_party_excess": max(leak["excess"] for e in entries.values()
                                                 for leak in e["third_party"].values()),
               "utility/faces_detected": min(e["faces_detected"] for e in entries.values())}
    metrics["objective"] = metrics["realism/kid_sface"]
    return {**metrics, "violations": violations}


OBJECTIVES: dict[str, Callable[[Path, ObjectiveConfig], dict[str, Any]]] = {
    "gan_validation": gan_validation, "report": report_objective, "realism": realism_objective}


class TrialTask(TrainTask):
    def __init__(self, stage: str, config: dict[str, Any], objective: dict[str, Any], threads: int = 0,
                 max_restarts: int = 0) -> None:
        super().__init__(stage, config, threads, max_restarts)
        self.objective = objective

    def __call__(self) -> dict[str, Any] | None:  # type: ignore[override]
        started = time.time()
        from kssgan_hpc.distributed import distributed_env

        run_dir = Path(super().__call__())
        if distributed_env().rank != 0:
            return None
        objective = from_dict(ObjectiveConfig, self.objective, "sweep objective")
        metrics = OBJECTIVES[objective.name](run_dir, objective)
        if not math.isfinite(metrics["objective"]):
            raise ValueError(f"{run_dir}: objective is {metrics['objective']} (metrics {metrics})")
        violations = metrics.pop("violations", [])
        return {"objective": metrics.pop("objective"), "metrics": metrics, "violations": violations,
                "started": started, "finished": time.time()}
