"""A tiny trained Siamese and its k-Same clusters, shared by the training tests."""

from pathlib import Path

import pytest

from helpers import kssgan, torchrun

TINY = ["model.resolution=32", "model.siamese_width=8", "model.generator_width=8", "model.discriminator_width=8",
        "model.max_width=32", "workers=0"]


@pytest.fixture(scope="session")
def siamese_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("siamese")
    out = tmp / "run"
    torchrun("train", "siamese", f"data={demo_data}", f"out={out}", "steps=8", "p=4", "k=2", "eval_every=4",
             "log_every=2", *TINY, tmp=tmp)
    return out


@pytest.fixture(scope="session")
def clusters(demo_data: Path, siamese_run: Path) -> Path:
    out = siamese_run.parent / "clusters.json"
    kssgan("cluster", f"data={demo_data}", f"siamese={siamese_run}", f"out={out}", "k=4", check=True)
    return out


@pytest.fixture
def gan_args(demo_data: Path, siamese_run: Path, clusters: Path) -> list[str]:
    return ["train", "gan", f"data={demo_data}", f"siamese={siamese_run}", f"clusters={clusters}", "batch_size=4",
            "log_every=1", "image_every=2", "r1_every=2", *TINY]
