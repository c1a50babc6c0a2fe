"""Sweep figures on the real cluster: submit->start latency, driver overhead per tell, and the sample
efficiency of the chosen optimizer against random search.

Set-up (once, in --work): the demo faces prepped at 32 px (the smallest resolution), a Siamese and
k=4 clusters, then for every optimizer and seed a sweep of configs/sweep/demo.yaml's space with
equal budgets. Trials are Slurm jobs when a controller answers (scripts/slurm_cluster.sh start),
else local processes (the report says which).

Sample efficiency, per seed: the best objective random search reached in its budget, and the
number of trials the optimizer needed to reach it (in the order they finished); the figure is that
number over the budget (target <= 60 %; "not reached" counts as the full budget, reported apart).
The baseline draws with seed + 1000: with the same seed, nevergrad's optimizers start from the same
random points as random search and would "reach" its best by sharing it.
Latency: the driver's submit time to the trial's first Python line (sub-second), and Slurm's own
Submit->Start (sacct, whole seconds).

    python benchmarks/sweep.py                                   # NGOpt vs RandomSearch, seeds 0 1 2
    python benchmarks/sweep.py --optimizers TwoPointsDE RandomSearch --seeds 0 1 2 3
Prints a table and writes benchmarks/results/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from report import write_report

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kssgan_hpc.config import load_config  # noqa: E402
from kssgan_hpc.config.sweep import SweepConfig  # noqa: E402
from kssgan_hpc.sweep.driver import Sweep  # noqa: E402

RESOLUTION = 32
BASELINE_SEED_OFFSET = 1000


def cli(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "kssgan_hpc.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"kssgan {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def prepare(work: Path) -> Path:
    """Data, Siamese and clusters at 32 px; returns the base scenario file of the trials."""
    base = work / "base.yaml"
    if base.is_file():
        return base
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    paths = {"data": str(work / "data"), "siamese": str(work / "siamese"), "clusters": str(work / "clusters.json")}
    demo["prep"].update(out=paths["data"], resolution=RESOLUTION)
    demo["siamese"].update(data=paths["data"], out=paths["siamese"], workers=0)
    demo["siamese"]["model"]["resolution"] = RESOLUTION
    demo["cluster"].update(data=paths["data"], siamese=paths["siamese"], out=paths["clusters"])
    demo["gan"].update(**paths, out=str(work / "gan"))
    demo["gan"]["model"]["resolution"] = RESOLUTION
    scenario = work / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(demo, sort_keys=False))
    cli("prep", "--config", str(scenario), "--no-progress")
    cli("train", "siamese", "--config", str(scenario))
    cli("cluster", "--config", str(scenario))
    shutil.copy(scenario, base)
    return base


def slurm_up() -> bool:
    try:
        return "UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False


def run_sweep(work: Path, base: Path, optimizer: str, seed: int, args: argparse.Namespace, executor: str) -> dict:
    out = work / "sweeps" / f"{optimizer}-seed{seed}"
    overrides = [f"out={out}", f"base_config={base}", f"optimizer={optimizer}", f"seed={seed}",
                 f"budget={args.budget}", f"num_workers={args.workers}", f"name=bench-{optimizer}-{seed}",
                 f"trial.executor={executor}", "poll_s=0.5",
                 f"trial_overrides=[steps={args.steps},checkpoint_every={args.steps},image_every=100000,"
                 f"log_every={args.steps},workers=0]"]
    cfg = load_config(SweepConfig, REPO / "configs" / "sweep" / "demo.yaml", overrides)
    sweep = Sweep(cfg)
    tick = time.time()
    sweep.run(resume=sweep.has_state())
    wall = time.time() - tick
    trials = sorted(sweep.trials, key=lambda t: t.ended)
    record = json.loads((out / "sweep.json").read_text())
    return {"optimizer": optimizer, "seed": seed, "chosen": sweep.chosen(), "wall_s": round(wall, 1),
            "told": [t.told for t in trials], "failed": sum(t.status == "failed" for t in trials),
            "latency_s": [round(t.started - t.submitted, 3) for t in trials if t.started],
            "job_ids": [t.job_id for t in trials], "tell_overhead_s": record["tell_overhead_s"]}


def sacct_latency(job_ids: list[str]) -> list[float]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "Submit,Start", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=60).stdout
    from datetime import datetime

    gaps = []
    for line in out.splitlines():
        submit, start = line.split("|")[:2]
        if "T" in submit and "T" in start:
            gaps.append((datetime.fromisoformat(start) - datetime.fromisoformat(submit)).total_seconds())
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs=2, default=["NGOpt", "RandomSearch"],
                        metavar=("CHOSEN", "BASELINE"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100, help="GAN steps per trial")
    parser.add_argument("--work", default="runs/bench-sweep")
    parser.add_argument("--out", default="benchmarks/results/sweep.json")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = prepare(work)
    executor = "slurm" if slurm_up() else "local"
    chosen, baseline = args.optimizers
    runs, efficiency = [], []
    for seed in args.seeds:
        pair = {chosen: run_sweep(work, base, chosen, seed, args, executor),
                baseline: run_sweep(work, base, baseline, seed + BASELINE_SEED_OFFSET, args, executor)}
        runs.extend(pair.values())
        target = min(pair[baseline]["told"])
        best_so_far = np.minimum.accumulate(pair[chosen]["told"])
        reached = np.flatnonzero(best_so_far <= target)
        needed = int(reached[0]) + 1 if len(reached) else None
        efficiency.append({"seed": seed, "baseline_best": target, "chosen_best": float(best_so_far[-1]),
                           "trials_needed": needed, "fraction": (needed or args.budget) / args.budget})
        print(f"seed {seed}: {baseline} best {target:.4f}; {pair[chosen]['chosen']} best {best_so_far[-1]:.4f}, "
              f"reached {baseline}'s best after {needed if needed else 'never (>' + str(args.budget) + ')'} trials")
    latency = [x for r in runs for x in r["latency_s"]]  # resumed sweeps keep their trials' times
    overhead = [r["tell_overhead_s"]["mean"] for r in runs if r["tell_overhead_s"]["mean"] is not None]
    summary = {
        "executor": executor, "budget": args.budget, "num_workers": args.workers, "steps_per_trial": args.steps,
        "resolution": RESOLUTION, "chosen": chosen, "baseline": baseline,
        "median_fraction_of_budget": float(np.median([e["fraction"] for e in efficiency])),
        "mean_fraction_of_budget": float(np.mean([e["fraction"] for e in efficiency])),
        "seeds_reached": sum(e["trials_needed"] is not None for e in efficiency),
        "latency_to_python_s": {"median": float(np.median(latency)), "p90": float(np.percentile(latency, 90)),
                                "max": float(np.max(latency))},
        "tell_overhead_ms": {"mean": 1000 * float(np.mean(overhead)) if overhead else None,
                             "max": 1000 * max((r["tell_overhead_s"]["max"] for r in runs
                                                if r["tell_overhead_s"]["max"] is not None), default=float("nan"))},
    }
    if executor == "slurm":
        gaps = sacct_latency([j for r in runs for j in r["job_ids"]])
        summary["latency_slurm_submit_to_start_s"] = {"median": float(np.median(gaps)), "max": float(np.max(gaps))}
    print(json.dumps(summary, indent=1))
    write_report(args.out, "sweep", summary=summary, efficiency=efficiency, runs=runs)


if __name__ == "__main__":
    main()
