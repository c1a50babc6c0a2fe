"""`kssgan evaluate`: report.json + contact sheets — re-identification by every attacker (the project's
Siamese, dlib, SFace, low-pass and eigenface nearest neighbour, parrot) on training and on held-out
people, k-anonymity of the release, utility and realism, for kSS-GAN, k-Same-Aligned and the blur,
pixelation and k-Same-Pixel baselines on the same faces."""

from __future__ import annotations

import argparse

from kssgan_hpc.cli.common import resolve_config
from kssgan_hpc.config.release import EvaluateConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="privacy / utility / realism report", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML scenario file; its evaluate section is used")
    p.add_argument("--include-originals", action="store_true",
                   help="also write contact_sheet_SENSITIVE_originals.png (shows source faces)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. ks=[2,4] attackers=[siamese,sface,parrot]")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kssgan_hpc.evaluate.report import evaluate, format_headline
    from kssgan_hpc.logs import setup_logging

    overrides = [*args.overrides, *(["include_originals=true"] if args.include_originals else [])]
    cfg, code = resolve_config("evaluate", EvaluateConfig, args, "evaluate", overrides)
    if cfg is None:
        return code
    setup_logging()  # progress: which population, method and attacker is at work
    report = evaluate(cfg)
    print(format_headline(report))
    if report["photos"]:
        from kssgan_hpc.evaluate.photos import format_photo_table

        print("whole photos: kSS-GAN faces pasted back, attacked whole, face only, context only (and the originals)")
        print(format_photo_table(report["photos"]))
    failed = [key for key, value in report["verdicts"].items() if value is False]
    print("verdicts: " + ("all hold" if not failed else "NOT HOLDING: " + ", ".join(failed)))
    if report["release"] is not None:
        problems = report["release"]["forbidden_fields"]
        print(f"release {report['release']['path']}: shipped {report['release']['shipped']}; clusters "
              f"{report['release']['clusters']}; {'clean' if not problems else 'NOT CLEAN: ' + '; '.join(problems)}")
    print(f"report: {cfg.out}/report.json   contact sheets: {', '.join(report['contact_sheets'])}")
    return 0
