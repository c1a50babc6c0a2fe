"""Loading trained models, in one place: the Siamese and the generator a GAN run ships.

Used by cluster, GAN training, anonymize, evaluate and the sweep. Which file holds what is the
checkpoint layout's (checkpoints.py); weights load from safetensors only (no pickle).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kssgan_hpc.checkpoints import SIAMESE, checkpoint_with_config, shipped_generator_file, weights_file
from kssgan_hpc.config.train import GanConfig, SiameseConfig
from kssgan_hpc.models import Generator, SiameseEncoder
from kssgan_hpc.weights import CheckpointError, load_weights_into, read_weights


def siamese_weights(run_dir: str | Path) -> tuple[Path, SiameseConfig]:
    """The weight file of a Siamese run's newest checkpoint, and the run's config."""
    path, cfg = checkpoint_with_config(run_dir, SiameseConfig, "siamese")
    return weights_file(path, SIAMESE), cfg


def load_siamese(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[SiameseEncoder, SiameseConfig]:
    """The newest checkpoint of a Siamese run, frozen, in eval mode."""
    path, cfg = siamese_weights(run_dir)
    model = SiameseEncoder(cfg.model)
    load_weights_into(model, path)
    return model.to(device).eval().requires_grad_(False), cfg


def generator_weights(run_dir: str | Path) -> tuple[Path, GanConfig]:
    """The EMA generator file a GAN run ships (checkpoints.shipped_generator_file), and the run's config."""
    path, cfg = checkpoint_with_config(run_dir, GanConfig, "gan")
    return shipped_generator_file(run_dir, path), cfg


def build_generator(cfg: GanConfig, state: dict[str, torch.Tensor]) -> Generator:
    # The label tables' sizes are in the weights (row 0 = unknown), so a generator loads without its data.
    return Generator(cfg.model, num_expressions=state["expression.weight"].shape[0] - 1,
                     num_poses=state["pose.weight"].shape[0] - 1)


def load_generator(run_dir: str | Path, device: torch.device | str = "cpu",
                   weights: Path | None = None) -> tuple[Generator, GanConfig, Path]:
    """The shipped EMA generator of a GAN run (see generator_weights), or the one in `weights` (an EMA
    file of one of its checkpoints), frozen, in eval mode; its file."""
    path, cfg = generator_weights(run_dir)
    path = path if weights is None else Path(weights)
    state = read_weights(path)
    try:
        generator = build_generator(cfg, state)
    except KeyError as err:
        raise CheckpointError(f"{path}: not a generator of this version's design (no {err}); retrain with "
                              "`kssgan train gan`") from None
    load_weights_into(generator, path, state)
    return generator.to(device).eval().requires_grad_(False), cfg, path
