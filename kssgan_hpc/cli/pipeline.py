"""`kssgan pipeline --config configs/demo.yaml`: prep -> Siamese -> cluster -> GAN -> anonymize -> evaluate.

Every stage reads its own section of the scenario file and runs as its own process (training
stages on `--ranks` ranks under torchrun, gloo on CPU); each is resumable, so rerunning the
pipeline after an interruption continues where it stopped. Ends with the report's headline table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run every stage of a scenario file, end to end", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="scenario YAML with prep, siamese, cluster, gan, anonymize "
                   "and evaluate sections")
    p.add_argument("--ranks", type=positive_int, default=2, help="processes per training stage (torchrun)")
    p.add_argument("--skip", nargs="*", default=[], choices=["prep", "siamese", "cluster", "gan", "anonymize",
                                                             "evaluate"], help="stages to leave out")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kssgan_hpc.config import load_config
    from kssgan_hpc.config.release import EvaluateConfig

    cli = [sys.executable, "-m", "kssgan_hpc.cli.main"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.ranks),
                "-m", "kssgan_hpc.cli.main"]
    stages = [("prep", [*cli, "prep", "--config", args.config, "--no-progress"]),
              ("siamese", [*torchrun, "train", "siamese", "--config", args.config]),
              ("cluster", [*cli, "cluster", "--config", args.config]),
              ("gan", [*torchrun, "train", "gan", "--config", args.config]),
              ("anonymize", [*cli, "anonymize", "--config", args.config, "--no-progress"]),
              ("evaluate", [*cli, "evaluate", "--config", args.config])]
    start = time.time()
    for name, command in stages:
        if name in args.skip:
            continue
        tick = time.time()
        print(f"== {name}: {' '.join(command[2:])}", flush=True)
        proc = subprocess.run(command)
        if proc.returncode != 0:
            print(f"kssgan pipeline: stage {name} failed (exit code {proc.returncode}); fix it and rerun: "
                  "finished stages resume at once", file=sys.stderr)
            return proc.returncode
        print(f"== {name} done in {time.time() - tick:.0f} s", flush=True)
    report = Path(load_config(EvaluateConfig, args.config, section="evaluate").out) / "report.json"
    print(f"pipeline done in {time.time() - start:.0f} s")
    if report.is_file():
        print(f"report: {report} (headline above; contact sheets beside it)")
    return 0
