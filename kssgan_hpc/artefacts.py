"""Loading trained artefacts, in one place: the Siamese, the generator, clusters.json and its faces.

Used by cluster, GAN training, anonymize, evaluate and the sweep. Weights load from safetensors
only (no pickle); every loaded cluster file is re-checked for k-anonymity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kssgan_hpc.config.train import GanConfig, SiameseConfig
from kssgan_hpc.errors import InputError
from kssgan_hpc.ksame.clusters import check_cluster_members, check_k
from kssgan_hpc.models import Generator, SiameseEncoder
from kssgan_hpc.train.run import checkpoint_with_config
from kssgan_hpc.weights import CheckpointError, load_weights_into, read_weights

SELECTED = "selected"
"""GAN run subfolder with the EMA generator that passed the gate best during training (see train/gan.py)."""


def siamese_weights(run_dir: str | Path) -> tuple[Path, SiameseConfig]:
    """The weight file of a Siamese run's newest checkpoint, and the run's config."""
    path, cfg = checkpoint_with_config(run_dir, SiameseConfig, "siamese")
    return path / "siamese.safetensors", cfg


def load_siamese(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[SiameseEncoder, SiameseConfig]:
    """The newest checkpoint of a Siamese run, frozen, in eval mode."""
    path, cfg = siamese_weights(run_dir)
    model = SiameseEncoder(cfg.model)
    load_weights_into(model, path)
    return model.to(device).eval().requires_grad_(False), cfg


def generator_weights(run_dir: str | Path) -> tuple[Path, GanConfig]:
    """The EMA generator file a GAN run ships: the gate-selected one when training chose one, else
    the newest checkpoint's; and the run's config."""
    path, cfg = checkpoint_with_config(run_dir, GanConfig, "gan")
    selected = Path(run_dir) / SELECTED / "ema_g.safetensors"
    return (selected if selected.is_file() else path / "extra-ema_g.safetensors"), cfg


def build_generator(cfg: GanConfig, state: dict[str, torch.Tensor]) -> Generator:
    # The label tables' sizes are in the weights (row 0 = unknown), so a generator loads without its data.
    return Generator(cfg.model, num_expressions=state["expression.weight"].shape[0] - 1,
                     num_poses=state["pose.weight"].shape[0] - 1)


def load_generator(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[Generator, GanConfig, Path]:
    """The shipped EMA generator of a GAN run (see generator_weights), frozen, in eval mode; its file."""
    path, cfg = generator_weights(run_dir)
    state = read_weights(path)
    try:
        generator = build_generator(cfg, state)
    except KeyError as err:
        raise CheckpointError(f"{path}: not a generator of this version's design (no {err}); retrain with "
                              "`kssgan train gan`") from None
    load_weights_into(generator, path, state)
    return generator.to(device).eval().requires_grad_(False), cfg, path


def cluster_faces_path(clusters: str | Path) -> Path:
    clusters = Path(clusters)
    return clusters.with_name(clusters.stem + "-faces.safetensors")


def load_clusters(path: str | Path, k: int | None = None) -> dict[str, Any]:
    """Read clusters.json and re-check the guarantee (a hand-edited file must not slip through): against
    `k`, the anonymity the user asked for, when given; a file that claims less is refused too."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no clusters file (run `kssgan cluster` first)")
    try:
        data = json.loads(path.read_text())
        members = [c["identities"] for c in data["clusters"]]
        claimed = data["k"]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON (truncated?): {err}") from None
    except (KeyError, TypeError) as err:
        raise InputError(f"{path}: not a clusters file: lacks {err}") from None
    try:
        if k is not None and check_k(k) > check_k(claimed):
            raise ValueError(f"the file is for k={claimed}, k={k} was asked for")
        check_cluster_members(members, claimed if k is None else k, data.get("duplicates", {}).get("merged", []))
    except ValueError as err:
        raise InputError(f"{path}: breaks k-anonymity: {err}") from None
    return data


def load_cluster_faces(path: str | Path) -> dict[str, torch.Tensor]:
    """The k-anonymous faces beside clusters.json: `pixel` (k-Same-Pixel), `aligned` (k-Same-Aligned
    templates in the mean frame), uint8 [clusters, C, H, W], and `frame` [5, 2]."""
    faces = cluster_faces_path(path)
    if not faces.is_file():
        raise InputError(f"{faces}: the cluster faces are missing (rerun `kssgan cluster`)")
    return read_weights(faces)
