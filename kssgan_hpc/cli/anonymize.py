"""`kssgan anonymize`: the de-identified, k-anonymous release of a prepped dataset (or of a folder).

One process, or one per rank under torchrun (ranks share the shards). Rerunning the same command
finishes an interrupted release. out/release/ is what ships; out/private/ stays.
"""

from __future__ import annotations

import argparse

from kssgan_hpc.cli.common import resolve_config
from kssgan_hpc.config.release import AnonymizeConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("anonymize", help="write the de-identified k-anonymous release", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML scenario file; its anonymize section is used")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. k=8 splits=[val,test] png=true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    from kssgan_hpc.logs import setup_logging
    from kssgan_hpc.release.anonymize import anonymize

    cfg, code = resolve_config("anonymize", AnonymizeConfig, args, "anonymize")
    if cfg is None:
        return code
    setup_logging(rank=int(os.environ.get("RANK", "0")))  # the gate's verdict, the release summary
    release = anonymize(cfg, progress=not args.no_progress)  # a refused gate: RunFailure, exit 1
    print(f"release: {release}  (manifest.json; cluster membership stays in {release.parent / 'private'})")
    return 0
