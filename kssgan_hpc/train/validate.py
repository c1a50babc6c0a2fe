"""Held-out validation of a GAN run: the sweep's objective until the evaluation report is wired in.

On a split the generator never saw (default val), the identities are grouped with k-Same among
themselves — as a release would — and every face is generated toward its cluster's surrogate by the
EMA generator. Measured with the frozen Siamese, which is the same for every trial of a sweep:
  identity/to_surrogate   1 - cos(output, surrogate): how far the output is from its target identity
  identity/to_source      cos(output, source) beyond the margin: how much source identity leaks
  realism/kid             KID between real and generated faces of the split in the Siamese's feature
                          space (independent of the generator and of the trial's discriminator,
                          whose losses are not comparable across trials)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from kssgan_hpc.config.train import GanConfig
from kssgan_hpc.data.dataset import FaceShards, collate_faces
from kssgan_hpc.evaluate.kid import kernel_inception_distance
from kssgan_hpc.ksame.build import cluster_dataset, load_clusters, load_siamese
from kssgan_hpc.models import Generator
from kssgan_hpc.train.run import checkpoint_with_config, to_unit

log = logging.getLogger(__name__)


def load_generator(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[Generator, GanConfig]:
    """The EMA generator of a GAN run's newest checkpoint, frozen, in eval mode (safetensors)."""
    path, cfg = checkpoint_with_config(run_dir, GanConfig, "gan")
    generator = Generator(cfg.model)
    generator.load_state_dict(load_file(path / "extra-ema_g.safetensors"))
    return generator.to(device).eval().requires_grad_(False), cfg


@torch.no_grad()
def validate_gan(run_dir: str | Path, *, split: str = "val", margin: float = 0.3, batch_size: int = 64,
                 device: torch.device | str = "cpu") -> dict[str, float]:
    """Identity and realism measures of a GAN run on a held-out split (see the module doc)."""
    generator, cfg = load_generator(run_dir, device)
    siamese, _ = load_siamese(cfg.siamese, device)
    k = load_clusters(cfg.clusters)["k"]  # the data holder's k, also for the held-out people
    data = FaceShards(Path(cfg.data), split)
    ids, groups, targets, _ = cluster_dataset(siamese, data, k, batch_size=batch_size, device=device, pixel=False)
    cluster_of = {int(ids[i]): c for c, group in enumerate(groups) for i in group}
    targets = torch.from_numpy(targets).to(device)
    to_surrogate, to_source, real_features, fake_features = [], [], [], []
    for start in range(0, len(data), batch_size):
        images, labels = collate_faces(data.__getitems__(list(range(start, min(start + batch_size, len(data))))))
        real = to_unit(images).to(device)
        target = targets[[cluster_of[int(i)] for i in labels["identity"]]]
        fake = generator(real, target).float()
        fake_embedding, real_embedding = siamese(fake).float(), siamese(real).float()
        to_surrogate.append(1 - (fake_embedding * target).sum(1))
        to_source.append(F.relu((fake_embedding * real_embedding).sum(1) - margin))
        real_features.append(real_embedding.cpu().numpy())
        fake_features.append(fake_embedding.cpu().numpy())
    kid, kid_std = kernel_inception_distance(np.concatenate(real_features), np.concatenate(fake_features),
                                             subsets=20, subset_size=500)
    result = {"identity/to_surrogate": torch.cat(to_surrogate).mean().item(),
              "identity/to_source": torch.cat(to_source).mean().item(),
              "realism/kid": kid, "realism/kid_std": kid_std,
              "images": float(len(data)), "identities": float(len(ids)), "clusters": float(len(groups))}
    log.info("validation on %s: %s", split, {k: round(v, 4) for k, v in result.items()})
    return result
