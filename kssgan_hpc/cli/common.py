"""What every stage command does first: resolve its config, or print it for --dry-run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kssgan_hpc.config import ConfigError, dump_yaml, load_config


def resolve_config(prog: str, cls: type, args: argparse.Namespace, section: str,
                   overrides: list[str] | None = None) -> tuple[Any, int | None]:
    """(config, None) to go on, or (None, exit code): 2 after a config error, 0 after --dry-run."""
    try:
        cfg = load_config(cls, args.config, args.overrides if overrides is None else overrides, section=section)
    except ConfigError as err:
        print(f"kssgan {prog}: error: {err}", file=sys.stderr)
        return None, 2
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        return None, 0
    return cfg, None
