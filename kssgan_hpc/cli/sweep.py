"""`kssgan sweep --config configs/sweep/<name>.yaml`: a nevergrad-driven population of training trials.

Each trial is one submitit job (slurm, local or debug executor) that trains the GAN for the trial's
budget and returns one objective. The driver keeps num_workers trials in flight, never stops on a
failed trial, writes its state after every tell and can be resumed after a crash (--resume).
Exit codes: 0 done; 1 aborted (too many failed trials); 2 bad config or state.
"""

from __future__ import annotations

import argparse

from kssgan_hpc.cli.common import resolve_config
from kssgan_hpc.config.sweep import SweepConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="hyperparameter sweep: nevergrad + submitit trials", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="sweep YAML (search space, optimizer, trial resources)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep its out folder holds (after a crash or requeue); start it if none")
    p.add_argument("--dry-run", action="store_true", help="print the resolved sweep config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. budget=32 trial.executor=slurm")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kssgan_hpc.sweep.driver import Sweep

    cfg, code = resolve_config("sweep", SweepConfig, args, section=None)
    if cfg is None:
        return code
    sweep = Sweep(cfg)
    print(f"sweep {cfg.name}: {cfg.budget} trials, {cfg.num_workers} in flight on {cfg.trial.executor}; "
          f"state in {sweep.out}  (tensorboard --logdir {sweep.out / 'tensorboard'})")
    resume = args.resume and sweep.has_state()
    if args.resume and not resume:
        print(f"no sweep state in {sweep.out}: starting")
    best = sweep.run(resume=resume)  # SweepAborted (a failing population): exit 1
    counts = {s: sum(t.status == s for t in sweep.trials) for s in ("completed", "infeasible", "failed")}
    print(f"optimizer {sweep.chosen()}: {counts['completed']} completed, {counts['infeasible']} infeasible "
          f"(a privacy constraint broken), {counts['failed']} failed")
    print(f"results:     {sweep.out / 'results.csv'}")
    if best is None:
        print("no trial completed: no best configuration")
        return 1
    print(f"best:        trial {best.trial}, objective {best.objective:.5g}, {best.params}")
    print(f"best config: {sweep.out / 'best_config.yaml'}")
    return 0
