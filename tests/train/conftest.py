"""The GAN command line shared by the training tests (the tiny Siamese and clusters are in tests/conftest.py)."""

from pathlib import Path

import pytest
from helpers import TINY


@pytest.fixture
def gan_args(demo_data: Path, siamese_run: Path, clusters: Path) -> list[str]:
    return ["train", "gan", f"data={demo_data}", f"siamese={siamese_run}", f"clusters={clusters}", "batch_size=4",
            "log_every=1", "image_every=2", "r1_every=2", "select_split=null", *TINY]
