"""`kssgan cluster`: group identities into k-Same clusters (each >= k people) with the frozen Siamese."""

from __future__ import annotations

import argparse

from kssgan_hpc.cli.common import resolve_config
from kssgan_hpc.config.train import ClusterConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="k-Same clusters of identities -> clusters.json", description=__doc__)
    p.add_argument("--config", help="YAML scenario file; its 'cluster' section is used")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. k=8 method=kmeans")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kssgan_hpc.ksame.records import build_clusters
    from kssgan_hpc.logs import setup_logging

    cfg, code = resolve_config("cluster", ClusterConfig, args, "cluster")
    if cfg is None:
        return code
    setup_logging()
    result = build_clusters(cfg)
    sizes = [len(c["identities"]) for c in result["clusters"]]
    print(f"{result['identities']} identities -> {len(sizes)} clusters of {min(sizes)}..{max(sizes)} (k={cfg.k}): "
          f"{cfg.out}")
    return 0
