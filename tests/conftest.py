"""Shared fixtures. Torch and BLAS use one thread: collation is 10x slower with more here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from helpers import TINY, kssgan, orl_images, prep_config, torchrun  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def orl_folder(tmp_path: Path) -> Path:
    """12 people x 5 images as <root>/<identity>/<image>.pgm."""
    root = tmp_path / "faces"
    for person, files in orl_images(12, 5).items():
        (root / person).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / person / f.name)
    return root


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo faces prepped once at 32 px, 64 inputs per shard (several shards per split)."""
    from data_prep.prep import run_prep

    out = tmp_path_factory.mktemp("demo") / "data"
    run_prep(prep_config("demo", out, images_per_shard=64, workers=2), progress=False)
    return out


@pytest.fixture(scope="session")
def siamese_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Siamese trained on 2 ranks for 8 steps."""
    tmp = tmp_path_factory.mktemp("siamese")
    out = tmp / "run"
    torchrun("train", "siamese", f"data={demo_data}", f"out={out}", "steps=8", "identities_per_batch=4", "images_per_identity=2", "eval_every=4",
             "log_every=2", *TINY, tmp=tmp)
    return out


@pytest.fixture(scope="session")
def clusters(demo_data: Path, siamese_run: Path) -> Path:
    """k=4 clusters of the demo training identities."""
    out = siamese_run.parent / "clusters.json"
    kssgan("cluster", f"data={demo_data}", f"siamese={siamese_run}", f"out={out}", "k=4", check=True)
    return out


@pytest.fixture
def sweep_file(demo_data: Path, siamese_run: Path, clusters: Path, tmp_path: Path):
    """write(**changes) -> a sweep YAML whose trials train the tiny GAN for a few steps."""
    base = tmp_path / "base.yaml"
    gan = {"data": str(demo_data), "siamese": str(siamese_run), "clusters": str(clusters),
           "out": str(tmp_path / "gan"), "steps": 1000, "batch_size": 4}
    for item in TINY:
        key, value = item.split("=")
        node = gan
        for part in key.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[key.split(".")[-1]] = yaml.safe_load(value)
    base.write_text(yaml.safe_dump({"gan": gan}))

    def write(**changes) -> Path:
        sweep = {"name": "t", "out": str(tmp_path / "sweep"), "base_config": str(base),
                 "trial_overrides": ["steps=4", "log_every=2", "image_every=1000", "checkpoint_every=1000",
                                     "select_split=null"],
                 "space": {"lr_g": {"type": "log", "low": 1e-5, "high": 1e-3},
                           "w_id_pull": {"type": "uniform", "low": 1, "high": 10},
                           "r1_every": {"type": "int", "low": 2, "high": 8},
                           "adversarial": {"type": "choice", "values": ["nonsat", "hinge"]}},
                 "budget": 3, "num_workers": 2, "poll_s": 0.5,
                 "trial": {"executor": "local", "cpus_per_task": 1, "time_min": 10}}
        sweep.update(changes)
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(sweep))
        return path

    return write


@pytest.fixture(scope="session")
def gan_run(demo_data: Path, siamese_run: Path, clusters: Path) -> Path:
    """A tiny GAN trained for 4 steps in one process (EMA generator checkpoint included)."""
    out = siamese_run.parent / "gan"
    kssgan("train", "gan", f"data={demo_data}", f"siamese={siamese_run}", f"clusters={clusters}", f"out={out}",
           "steps=4", "batch_size=4", "log_every=2", "image_every=100", *TINY, check=True)
    return out


@pytest.fixture
def tmpfs(tmp_path: Path):
    """mount(name, size="1m", read_only=False) -> a fresh tmpfs folder under tmp_path: a small disk to fill
    or a read-only file system, as a scheduler's scratch can be. Needs root (CI runs as root); skipped
    with the reason elsewhere. Unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(name: str, size: str = "1m", read_only: bool = False) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)
