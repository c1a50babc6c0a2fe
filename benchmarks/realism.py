"""Does the GAN earn its place? kSS-GAN against k-Same-Pixel and k-Same-Aligned, and against training steps.

Trains the GAN of a scenario (configs/demo.yaml's `gan` section by default; `key=value` overrides are
the setting under test) on 2 ranks into its own folder, every checkpoint kept, then measures each
checkpoint's EMA generator as `kssgan evaluate` does (evaluate/report.py's Evaluation: held-out and
training people, k = 4, every attacker but dlib, which only the last checkpoint meets): KID in SFace's
space with its 95 % interval, fine detail (high-frequency energy against real faces'), cue error
(landmarks found on each output against those it was given, in inter-ocular distances), variety
inside clusters (of the poses shown and of the pixels, against the sources'), the third-party leak
and faces detected. The figures per step are the curve; the last checkpoint's, beside the
baselines, are checked against the issue's targets (each a pass/fail in the JSON).

    python benchmarks/realism.py [--config configs/demo.yaml] [--steps 600] [--every 100] [--name NAME]
                                 [key=value ...]
Needs the demo's data, Siamese and clusters (`bash scripts/demo.sh` first). Prints the figures and
writes benchmarks/results/realism[_NAME].json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from report import write_report

K = 4
CURVE_ATTACKERS = ["siamese", "sface", "lowpass8", "lowpass16", "eigenfaces", "parrot", "posehabit", "labels"]


def train(config: str, out: Path, steps: int, every: int, overrides: list[str]) -> float:
    """The GAN on 2 ranks (torchrun, gloo); seconds taken."""
    tick = time.time()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "kssgan_hpc.cli.main", "train", "gan", "--config", config, f"out={out}", f"steps={steps}",
           f"checkpoint_every={every}", f"keep_checkpoints={steps // every + 1}", f"image_every={every}",
           "select_split=null", *overrides]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.time() - tick


def row(entry: dict[str, Any]) -> dict[str, Any]:
    """The figures of one method on one population."""
    def ratio(variety: dict[str, Any]) -> float | None:
        return None if variety["released"] is None or not variety["sources"] else variety["released"] / variety["sources"]

    return {"kid": entry["kid"], "kid_ci95": entry["kid_ci95"], "fine": entry["high_frequency"],
            "fine_ci95": entry["high_frequency_ci95"], "cue_error_iod": entry["cue_error_iod"],
            "pose_variety": ratio(entry["shown_pose_variety_px"]), "pixel_variety": ratio(entry["pixel_variety"]),
            "third_party_excess": {name: leak["excess"] for name, leak in entry["third_party"].items()},
            "faces_detected": entry["faces_detected"], "worst": entry["worst"]}


def targets(final: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """The issue's targets on the last checkpoint (held-out people unless said)."""
    gan, pixel, aligned = (final["heldout"][f"{m}@{K}"] for m in ("kssgan", "ksame_pixel", "ksame_aligned"))
    bound = 1 / K + 0.05

    def at_least(value: float | None, goal: float) -> bool | None:
        return None if value is None else value >= goal

    return {"kid_interval_below_ksame_pixel": gan["kid_ci95"][1] < pixel["kid_ci95"][0],
            "kid_interval_below_ksame_aligned": gan["kid_ci95"][1] < aligned["kid_ci95"][0],
            "fine_detail_at_least_0.6": gan["fine"] >= 0.6,
            "cue_error_at_most_0.1_iod": None if gan["cue_error_iod"] is None else gan["cue_error_iod"] <= 0.1,
            "pose_variety_at_least_0.5": at_least(gan["pose_variety"], 0.5),
            "pixel_variety_at_least_0.5": at_least(gan["pixel_variety"], 0.5),
            "third_party_within_0.05": all(v <= 0.05 for v in gan["third_party_excess"].values()),
            "faces_detected_at_least_0.95": gan["faces_detected"] >= 0.95,
            "every_attacker_within_1/k+0.05_heldout": gan["worst"]["rank1"] <= bound,
            "every_attacker_within_1/k+0.05_training": final["training"][f"kssgan@{K}"]["worst"]["rank1"] <= bound}


def gan_cfg_summary(cfg: Any) -> dict[str, Any]:
    """The generator's realism knobs as the run resolved them."""
    return {"residual_bound": cfg.model.residual_bound, "base_size": cfg.base_size, "w_base": cfg.w_base,
            "augment": cfg.augment, "augment_p": cfg.augment_p, "w_feature_match": cfg.w_feature_match,
            "w_id_pull": cfg.w_id_pull, "lr_g": cfg.lr_g, "lr_d": cfg.lr_d, "batch_size": cfg.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--name", default="", help="suffix of the JSON file (a setting's name)")
    parser.add_argument("--work", default=None, help="folder for the GAN run (default: a temporary one)")
    parser.add_argument("--run", default=None, help="measure this GAN run's checkpoints instead of training one")
    parser.add_argument("overrides", nargs="*", help="the setting under test: key=value of the gan section")
    args = parser.parse_args()

    import torch

    from kssgan_hpc.artefacts import load_generator
    from kssgan_hpc.checkpoints import EMA_GENERATOR, extra_file
    from kssgan_hpc.config import load_config
    from kssgan_hpc.config.release import EvaluateConfig
    from kssgan_hpc.config.train import GanConfig
    from kssgan_hpc.evaluate.report import Evaluation

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(args.work or tempfile.mkdtemp(prefix="kssgan-realism-"))
    if args.run:
        out, seconds = Path(args.run), None
        gan_cfg = load_config(GanConfig, out / "resolved_config.yaml")
    else:
        out = work / "gan"
        seconds = train(args.config, out, args.steps, args.every, args.overrides)
        gan_cfg = load_config(GanConfig, out / "resolved_config.yaml")
        print(f"trained {args.steps} steps in {seconds:.0f} s: {out}")

    evaluate_cfg = EvaluateConfig(gan=str(out), data=gan_cfg.data, release=None, ks=[K], attackers=CURVE_ATTACKERS,
                                  out=str(work / "unused"))
    evaluation = Evaluation.setup(evaluate_cfg, gan_cfg, torch.device("cpu"))
    curve, final = [], {}
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    for index, checkpoint in enumerate(checkpoints):
        if index == len(checkpoints) - 1:  # the last one meets dlib too (the slowest recognizer)
            evaluate_cfg.attackers = [*CURVE_ATTACKERS, "dlib"]
            evaluation = Evaluation.setup(evaluate_cfg, gan_cfg, torch.device("cpu"))
        generator, _, _ = load_generator(out, "cpu", weights=extra_file(checkpoint, EMA_GENERATOR))
        summaries, _ = evaluation.measure(generator)
        step = int(checkpoint.name.split("-")[1])
        figures = {label: {method: row(entry) for method, entry in summary["methods"].items()}
                   for label, summary in summaries.items()}
        gan = figures["heldout"][f"kssgan@{K}"]
        curve.append({"step": step, "heldout": gan, "training_worst": figures["training"][f"kssgan@{K}"]["worst"]})
        print(f"step {step:5d}  KID {gan['kid']:.4f} [{gan['kid_ci95'][0]:.4f}, {gan['kid_ci95'][1]:.4f}]  "
              f"fine {gan['fine']:.2f}  cue err {gan['cue_error_iod']}  pose var {gan['pose_variety']}  "
              f"pixel var {gan['pixel_variety']:.2f}  leak {gan['third_party_excess']}  faces {gan['faces_detected']:.2f}"
              f"  worst {gan['worst']['attacker']} {gan['worst']['rank1']:.3f}")
        final = figures
    checks = targets(final)
    for name in ("ksame_pixel", "ksame_aligned", "kssgan"):
        entry = final["heldout"][f"{name}@{K}"]
        print(f"held-out k={K} {name:14s} KID {entry['kid']:.4f} {entry['kid_ci95']}  fine {entry['fine']:.2f}  "
              f"pixel var {entry['pixel_variety']}  worst {entry['worst']['rank1']:.3f}")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'n/a ' if ok is None else 'FAIL'}  {name}")
    write_report(Path(__file__).parent / "results" / f"realism{'_' + args.name if args.name else ''}.json",
                 "realism", config=args.config, overrides=args.overrides, setting=gan_cfg_summary(gan_cfg),
                 steps=curve[-1]["step"], train_seconds=seconds,
                 k=K, curve=curve, final=final, targets=checks)


if __name__ == "__main__":
    main()
