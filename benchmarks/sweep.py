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

Best-so-far curves: per run, the best objective told after each finished trial (infeasible trials
are told the penalty and never lower it), and per optimizer their median over seeds, written to the
JSON and drawn as an SVG beside it.

    python benchmarks/sweep.py                                   # NGOpt vs RandomSearch, seeds 0 1 2
    python benchmarks/sweep.py --optimizers TwoPointsDE RandomSearch --seeds 0 1 2 3
    python benchmarks/sweep.py --sweep configs/sweep/realism.yaml --optimizers TwoPointsDE RandomSearch \
        --budget 12 --workers 2 --steps 150 --out benchmarks/results/sweep_realism.json
Prints a table and writes the JSON (and its .svg curves).
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


def trial_overrides(sweep_file: Path, steps: int) -> str:
    """The sweep file's own trial overrides with the benchmark's budget in place of its steps."""
    ours = {"steps": steps, "checkpoint_every": steps, "image_every": 100000, "log_every": steps, "workers": 0}
    theirs = [o for o in yaml.safe_load(sweep_file.read_text()).get("trial_overrides", [])
              if o.split("=", 1)[0] not in ours]
    return "trial_overrides=[" + ",".join([*(f"{k}={v}" for k, v in ours.items()), *theirs]) + "]"


def run_sweep(work: Path, base: Path, optimizer: str, seed: int, args: argparse.Namespace, executor: str) -> dict:
    out = work / "sweeps" / f"{optimizer}-seed{seed}"
    overrides = [f"out={out}", f"base_config={base}", f"optimizer={optimizer}", f"seed={seed}",
                 f"budget={args.budget}", f"num_workers={args.workers}", f"name=bench-{optimizer}-{seed}",
                 f"trial.executor={executor}", "poll_s=0.5", trial_overrides(args.sweep, args.steps)]
    cfg = load_config(SweepConfig, args.sweep, overrides)
    sweep = Sweep(cfg)
    tick = time.time()
    sweep.run(resume=sweep.has_state())
    wall = time.time() - tick
    trials = sorted(sweep.trials, key=lambda t: t.ended)
    record = json.loads((out / "sweep.json").read_text())
    told = [t.told for t in trials]
    return {"optimizer": optimizer, "seed": seed, "chosen": sweep.chosen(), "wall_s": round(wall, 1),
            "told": told, "best_so_far": np.minimum.accumulate(told).tolist(),
            "failed": sum(t.status == "failed" for t in trials),
            "infeasible": sum(t.status == "infeasible" for t in trials),
            "best_params": min(trials, key=lambda t: t.told).params,
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
    parser.add_argument("--sweep", type=Path, default=REPO / "configs" / "sweep" / "demo.yaml",
                        help="sweep file whose space and objective are benchmarked")
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
    penalty = load_config(SweepConfig, args.sweep, []).failure_penalty
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
    summary["median_best_so_far"] = {
        name: np.median([r["best_so_far"] for r in runs if r["optimizer"] == name], axis=0).tolist()
        for name in (chosen, baseline)}
    summary["sweep"] = str(args.sweep.resolve().relative_to(REPO))
    if executor == "slurm":
        gaps = sacct_latency([j for r in runs for j in r["job_ids"]])
        summary["latency_slurm_submit_to_start_s"] = {"median": float(np.median(gaps)), "max": float(np.max(gaps))}
    print(json.dumps(summary, indent=1))
    write_report(args.out, "sweep", summary=summary, efficiency=efficiency, runs=runs)
    Path(args.out).with_suffix(".svg").write_text(best_so_far_svg(runs, summary["median_best_so_far"], summary["sweep"],
                                                                  penalty))


def best_so_far_svg(runs: list[dict], medians: dict[str, list[float]], title: str, penalty: float) -> str:
    """Best-so-far against trials: each run a thin line, each optimizer's median over seeds a thick one.
    Values at the failure penalty (nothing feasible yet) are drawn at the top edge."""
    width, height, pad = 560, 340, 48
    feasible = [v for r in runs for v in r["best_so_far"] if v < penalty] or [0.0]
    low, high = min(feasible), max(feasible)
    high = low + 1e-9 if high == low else high
    budget = max(len(r["best_so_far"]) for r in runs)

    def points(values: list[float]) -> str:
        return " ".join(f"{pad + (width - 2 * pad) * i / max(1, budget - 1):.1f},"
                        f"{pad + (height - 2 * pad) * (high - min(v, high)) / (high - low):.1f}"
                        for i, v in enumerate(values))

    colours = dict(zip(medians, ("#c0392b", "#2c3e50")))
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{pad}" y="20">best objective so far (lower is better; top edge: none feasible yet): {title}</text>',
             f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">trials finished (1..{budget})</text>',
             f'<text x="6" y="{height - pad}">{low:.4g}</text><text x="6" y="{pad}">{high:.4g}</text>']
    for run in runs:
        lines.append(f'<polyline fill="none" stroke="{colours[run["optimizer"]]}" stroke-opacity="0.35" '
                     f'points="{points(run["best_so_far"])}"/>')
    for i, (name, median) in enumerate(medians.items()):
        lines.append(f'<polyline fill="none" stroke="{colours[name]}" stroke-width="3" points="{points(median)}"/>')
        lines.append(f'<text x="{width - pad - 150}" y="{pad + 16 * i}" fill="{colours[name]}">{name} (median)</text>')
    return "\n".join(lines + ["</svg>"]) + "\n"


if __name__ == "__main__":
    main()
