"""`kssgan <stage> …`: one console entry point, one subcommand per stage."""

from __future__ import annotations

import argparse
import sys

from kssgan_hpc import __version__
from kssgan_hpc.cli import anonymize, cluster, evaluate, inspect, pipeline, prep, submit, sweep, train

STAGES = {"prep": prep, "inspect": inspect, "train": train, "cluster": cluster, "anonymize": anonymize,
          "evaluate": evaluate, "pipeline": pipeline, "submit": submit, "sweep": sweep}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kssgan", description="k-Same-Siamese-GAN face de-identification at HPC scale."
    )
    parser.add_argument("--version", action="version", version=f"kssgan-hpc {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, module in STAGES.items():
        module.add_parser(sub)
    # key=value overrides may stand anywhere, also after flags (argparse stops a positional list there).
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
