"""`kssgan submit train siamese|gan`: one training run as a checkpointable Slurm job (via submitit).

Resources come from the scenario file's `slurm:` section, then from the flags below. Every task of
the job is one rank (tasks per node = GPUs per node on GPU nodes). Before the time limit the job
checkpoints and requeues itself; the requeued job resumes from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from kssgan_hpc.cli.common import resolve_config
from kssgan_hpc.config import dump_yaml, load_config, to_dict
from kssgan_hpc.config.launch import JobConfig
from kssgan_hpc.train.stages import TRAIN_STAGES

RESOURCE_FLAGS = ("executor", "folder", "name", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task",
                  "mem_gb", "time_min", "partition", "account", "qos", "constraint", "signal_delay_s",
                  "max_requeues", "max_restarts")
PATH_KEYS = ("data", "out", "siamese", "clusters")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a training run to Slurm (submitit, checkpoint + requeue)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["train"])
    p.add_argument("stage", choices=list(TRAIN_STAGES))
    p.add_argument("--config", help="YAML scenario file: its <stage> and slurm sections are used")
    p.add_argument("--dry-run", action="store_true", help="print the resolved job and stage configs and exit")
    p.add_argument("--wait", action="store_true", help="wait for the job (and its requeues) to end")
    fields = {f.name: f for f in dataclasses.fields(JobConfig)}
    for name in RESOURCE_FLAGS:
        kind = {"int": int, "float": float}.get(str(fields[name].type), str)
        p.add_argument("--" + name.replace("_", "-"), dest=f"job_{name}", type=kind, metavar=name.upper(),
                       help=f"slurm.{name}")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="stage config overrides, e.g. steps=5000")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg, code = resolve_config("submit", TRAIN_STAGES[args.stage], args, args.stage)
    if cfg is None and code != 0:
        return code
    flags = [f"{name}={getattr(args, 'job_' + name)}" for name in RESOURCE_FLAGS
             if getattr(args, "job_" + name) is not None]
    job = load_config(JobConfig, args.config, flags, section="slurm")
    if args.dry_run:
        print("slurm:\n  " + dump_yaml(job).replace("\n", "\n  ").rstrip())
        return 0
    if cfg.resume != "auto":
        print("kssgan submit: error: resume=never would restart a requeued job from scratch; use resume=auto",
              file=sys.stderr)
        return 2
    config = to_dict(cfg)
    for key in PATH_KEYS:  # the job may start in another directory
        if key in config:
            config[key] = str(Path(config[key]).resolve())

    from kssgan_hpc.launch.submit import TrainTask, make_executor

    executor = make_executor(job)
    task = TrainTask(args.stage, config, threads=job.cpus_per_task, max_restarts=job.max_restarts)
    submitted = executor.submit(task)
    print(f"submitted {args.stage} training as job {submitted.job_id} "
          f"({job.executor}: {job.nodes} node(s) x {job.tasks_per_node} task(s))")
    print(f"  logs:        {submitted.paths.stdout}  {submitted.paths.stderr}")
    print(f"  run:         {config['out']}")
    print(f"  tensorboard: tensorboard --logdir {Path(config['out']) / 'tensorboard'}")
    if not args.wait:
        return 0
    try:
        submitted.results()
    except Exception as err:  # submitit re-raises the job's failure with its traceback
        print(f"kssgan submit: job {submitted.job_id} failed: {err}", file=sys.stderr)
        return 1
    print(f"job {submitted.job_id} finished: {config['out']}")
    return 0
