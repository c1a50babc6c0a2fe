"""`kssgan train siamese|gan`: one process, or one per rank under `torchrun --nproc_per_node N`.

Exit codes: 0 done; 2 bad config; 75 stopped by SIGUSR1/SIGUSR2/SIGTERM after writing a checkpoint
(requeue and rerun the same command: resume=auto continues); 65 fp16 loss scale collapsed
(checkpoint written).
"""

from __future__ import annotations

import argparse
import sys

from kssgan_hpc.cli.common import resolve_config
from kssgan_hpc.train.stages import TRAIN_STAGES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the Siamese identity network or the GAN", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=list(TRAIN_STAGES))
    p.add_argument("--config", help="YAML scenario file; its <stage> section is used")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. steps=500 engine.precision=bf16")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kssgan_hpc.train.run import TrainingStopped
    from kssgan_hpc.train.stages import train_stage

    cfg, code = resolve_config("train", TRAIN_STAGES[args.stage], args, args.stage)
    if cfg is None:
        return code
    try:
        out = train_stage(args.stage, cfg)
    except TrainingStopped as stop:
        print(f"kssgan train: {stop}", file=sys.stderr)
        return stop.exit_code
    print(f"{args.stage} run: {out}  (tensorboard --logdir {out / 'tensorboard'})")
    return 0
