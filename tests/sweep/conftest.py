"""A sweep file over the tiny demo GAN, written for each test."""

from pathlib import Path

import pytest
import yaml

from helpers import TINY


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
                 "trial_overrides": ["steps=4", "log_every=2", "image_every=1000", "checkpoint_every=1000"],
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
