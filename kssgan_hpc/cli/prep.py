"""`kssgan prep`: raw faces -> aligned HDF5 shards + manifest.json (+ sources.jsonl)."""

from __future__ import annotations

import argparse

from kssgan_hpc.cli.common import resolve_config
from kssgan_hpc.config import PrepConfig
from kssgan_hpc.logs import setup_logging

FLAG_KEYS = ("source", "input", "out", "resolution", "workers")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prep", help="align raw faces and pack them into HDF5 shards",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["folder", "rafd", "celeba", "demo"])
    p.add_argument("--input", help="root of the raw faces (not for --source demo)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--resolution", type=int, help="aligned image side, a power of two (default 256)")
    p.add_argument("--workers", type=int, help="worker processes (default 1)")
    p.add_argument("--part", type=int, help="pack only part I of --parts N (Slurm array task)")
    p.add_argument("--parts", type=int, default=1)
    p.add_argument("--merge", action="store_true", help="after all parts: check every shard, write the manifest")
    p.add_argument("--config", help="YAML scenario file; its 'prep' section is used")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. split.seed=3")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from data_prep.prep import run_prep

    flags = [f"{k}={getattr(args, k)}" for k in FLAG_KEYS if getattr(args, k) is not None]
    cfg, code = resolve_config("prep", PrepConfig, args, "prep", [*flags, *args.overrides])
    if cfg is None:
        return code
    setup_logging()
    result = run_prep(cfg, part=args.part, parts=args.parts, merge=args.merge, progress=not args.no_progress)
    print(f"shards: {result.shards_written} written, {result.shards_reused} already complete "
          f"(of {result.shards_total})")
    if result.manifest is None:
        print(f"part {args.part}/{args.parts} done; run `kssgan prep … --merge` once all parts are done")
        return 0
    m = result.manifest
    split_text = ", ".join(f"{s} {v['images']} images / {len(v['identities'])} people" for s, v in m["splits"].items())
    print(f"{m['images']} images of {m['identities']} people at {m['resolution']}px ({split_text})")
    print(f"skipped {len(m['skipped'])} inputs; converted: "
          + (", ".join(f"{k} x{len(v)}" for k, v in m["converted"].items()) or "none"))
    print(f"manifest: {result.out / 'manifest.json'}  (source names only in sources.jsonl)")
    return 0
