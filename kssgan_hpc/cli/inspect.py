"""`kssgan inspect DIR`: verify every shard checksum, print counts, write a contact sheet."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="verify a prepped dataset and draw a contact sheet", description=__doc__)
    p.add_argument("dir", help="dataset folder (holds manifest.json)")
    p.add_argument("--sheet", help="contact sheet path (default DIR/contact_sheet.png)")
    p.add_argument("--no-sheet", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kssgan_hpc.data.inspection import inspect_dataset, write_contact_sheet

    report = inspect_dataset(args.dir)
    m = report.manifest
    print(f"{report.root}: format {m['format_version']}, {m['resolution']}px x{m['channels']}, "
          f"{len(m['shards'])} shards, aligned by {m['align']}")
    for split, count in report.images.items():
        people = report.identities[split]
        spread = (f"{min(people.values())}/{statistics.median(people.values()):g}/{max(people.values())}"
                  if people else "-")
        expr = ", ".join(f"{k} {v}" for k, v in sorted(report.expressions[split].items()))
        print(f"  {split:5s} {count:7d} images  {len(people):6d} people  "
              f"images/person min/median/max {spread}  expression: {expr or '-'}")
    if len(m["skipped"]):
        print(f"  skipped at prep: {len(m['skipped'])} inputs (reasons in manifest.json)")
    for problem in report.problems:
        print(f"  BAD SHARD {problem}", file=sys.stderr)
    if not args.no_sheet:
        sheet = write_contact_sheet(report, args.sheet or Path(report.root) / "contact_sheet.png")
        print(f"contact sheet: {sheet}  (shows ORIGINAL faces: keep it with the data)")
    if not report.ok:
        print(f"kssgan inspect: {len(report.problems)} bad shard(s)", file=sys.stderr)
        return 1
    print("all checksums match")
    return 0
