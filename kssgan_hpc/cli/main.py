"""`kssgan <stage> …`: one console entry point, one subcommand per stage."""

from __future__ import annotations

import argparse
import errno
import sys

from kssgan_hpc import __version__
from kssgan_hpc.cli import (
    anonymize,
    cluster,
    evaluate,
    inspect,
    pipeline,
    prep,
    submit,
    sweep,
    train,
    withdraw,
)
from kssgan_hpc.errors import EXIT_BAD_INPUT, EXIT_FAILED, KssganError
from kssgan_hpc.folders import hold_writer_locks

STAGES = {"prep": prep, "inspect": inspect, "train": train, "cluster": cluster, "anonymize": anonymize,
          "evaluate": evaluate, "pipeline": pipeline, "submit": submit, "sweep": sweep,
          "withdraw": withdraw}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kssgan", description="k-Same-Siamese-GAN face de-identification at HPC scale."
    )
    parser.add_argument("--version", action="version", version=f"kssgan-hpc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
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
    hold_writer_locks()  # one writer per output folder (the processes of one run share it)
    if args.debug:
        return args.run(args)
    # The one error boundary: the project's exceptions and failed file access become one line naming
    # the file and the problem; anything else is a bug and keeps its traceback.
    try:
        return args.run(args)
    except KssganError as err:
        print(f"kssgan {args.stage}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(f"kssgan {args.stage}: error: {where}{err.strerror or err}", file=sys.stderr)
        user_side = (errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EEXIST)
        return EXIT_BAD_INPUT if err.errno in user_side else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
