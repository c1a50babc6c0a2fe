"""Held-out validation of a GAN run: the sweep's `gan_validation` objective.

On a split the generator never saw (default val), the identities are grouped with k-Same among
themselves — as a release would — and every face is generated from its cluster's base face and its
own cues by the shipped EMA generator. Measured with the frozen Siamese, which is the same for
every trial of a sweep:
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

from kssgan_hpc.artefacts import load_generator, load_siamese
from kssgan_hpc.attack.kid import kernel_inception_distance
from kssgan_hpc.data.dataset import FaceShards, read_images
from kssgan_hpc.data.pixels import channels_first
from kssgan_hpc.ksame.build import identity_statistics, ksame
from kssgan_hpc.ksame.deidentify import cue_labels, deidentify
from kssgan_hpc.ksame.records import load_clusters
from kssgan_hpc.models import siamese_embeddings

log = logging.getLogger(__name__)


@torch.no_grad()
def validate_gan(run_dir: str | Path, *, split: str = "val", margin: float = 0.3, batch_size: int = 64,
                 device: torch.device | str = "cpu") -> dict[str, float]:
    """Identity and realism measures of a GAN run on a held-out split (see the module doc)."""
    generator, cfg, _ = load_generator(run_dir, device)
    siamese, _ = load_siamese(cfg.siamese, device)
    k = load_clusters(cfg.clusters)["k"]  # the data holder's k, also for the held-out people
    data = FaceShards(Path(cfg.data), split)
    clustering = ksame(identity_statistics(siamese, data, batch_size, device), k)
    fake = deidentify("kssgan", clustering, cue_labels(data.labels), generator=generator, seed=cfg.engine.seed,
                      device=device, batch_size=batch_size)

    def embed(images: np.ndarray) -> torch.Tensor:
        return siamese_embeddings(siamese, channels_first(images), device, batch_size)

    fake_embedding, real_embedding = embed(fake), embed(read_images(data, np.arange(len(data))))
    target = torch.from_numpy(clustering.surrogates[clustering.clusters_of(data.labels["identity"])])
    kid, kid_std = kernel_inception_distance(real_embedding.numpy(), fake_embedding.numpy(),
                                             subsets=20, subset_size=500)
    result = {"identity/to_surrogate": (1 - (fake_embedding * target).sum(1)).mean().item(),
              "identity/to_source": F.relu((fake_embedding * real_embedding).sum(1) - margin).mean().item(),
              "realism/kid": kid, "realism/kid_std": kid_std,
              "images": float(len(data)), "identities": float(len(clustering.ids)),
              "clusters": float(len(clustering.groups))}
    log.info("validation on %s: %s", split, {k: round(v, 4) for k, v in result.items()})
    return result
