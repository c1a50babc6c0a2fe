"""`kssgan withdraw`: people leave every later release of a dataset (release/ledger.py).

Their images are in no later release; each earlier release's private mapping loses their lines; the
erasure is recorded in the ledger folder and in each release's private/erasures.jsonl. What those
releases already shipped cannot be recalled: their clusters keep what they first released, so that
the next release shows no difference that would expose who left.
"""

from __future__ import annotations

import argparse

from kssgan_hpc.cli.common import resolve_config
from kssgan_hpc.config.release import WithdrawConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("withdraw", help="take people out of every later release", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML scenario file; its withdraw section is used")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. people=[s12] data=runs/demo/data")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kssgan_hpc.logs import setup_logging
    from kssgan_hpc.release.ledger import withdraw

    cfg, code = resolve_config("withdraw", WithdrawConfig, args, "withdraw")
    if cfg is None:
        return code
    setup_logging()
    erasures = withdraw(cfg)
    for e in erasures:
        print(f"{e['person']}: out of release {e['release']} ({e['mapping_lines_removed']} mapping lines removed, "
              f"{e['cue_references_cleared']} cue references cleared)")
    print(f"withdrawn: {', '.join(cfg.people)}; later releases of {cfg.data} leave them out")
    return 0
