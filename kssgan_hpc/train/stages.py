"""The training stages, in one table: each stage's config class and the loop that trains it.

`kssgan train`, `kssgan submit train` and Slurm jobs (launch/submit.py) all look stages up here.
"""

from __future__ import annotations

from pathlib import Path

from kssgan_hpc.config.train import GanConfig, SiameseConfig

TRAIN_STAGES: dict[str, type] = {"siamese": SiameseConfig, "gan": GanConfig}
"""Stage name -> its config class (the scenario file's section of that name)."""


def train_stage(stage: str, cfg: SiameseConfig | GanConfig) -> Path:
    """Train (or resume) `stage` with its config; returns the run folder. The loops are imported only
    here, when one runs: the commands that merely parse a config stay light."""
    if stage == "siamese":
        from kssgan_hpc.train.siamese import train_siamese

        return train_siamese(cfg)
    if stage == "gan":
        from kssgan_hpc.train.gan import train_gan

        return train_gan(cfg)
    raise ValueError(f"unknown training stage {stage!r}; use one of {', '.join(TRAIN_STAGES)}")
