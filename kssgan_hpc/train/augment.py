"""Differentiable augmentation of D's inputs (DiffAugment, Zhao et al. 2020), so that D cannot
memorise a few hundred training faces.

The same random transforms are applied to real and generated images, on both D's and G's phase,
and gradients flow through them to G. Each op is applied to each image with probability `p` (as ADA,
Karras et al. 2020, does; p = 1 is DiffAugment's setting): `p` is the strength a sweep tunes.

  color        brightness (+-0.5), saturation (x0..2), contrast (x0.5..1.5)
  translation  a shift of up to 1/8 of the side, zero-padded
  cutout       a zeroed square of half the side at a random place
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kssgan_hpc.config.train import AUGMENTATIONS


def _uniform(x: torch.Tensor, rng: torch.Generator, *shape: int) -> torch.Tensor:
    """U[0, 1) of `shape` from `rng` (on the CPU: one stream on every device), in x's device and dtype."""
    return torch.rand(*shape, generator=rng).to(x.device, x.dtype)


def _chosen(x: torch.Tensor, p: float, rng: torch.Generator) -> torch.Tensor:
    """[N, 1, 1, 1] 1.0 for the images an op applies to, each with probability p."""
    return (_uniform(x, rng, len(x), 1, 1, 1) < p).to(x.dtype)


def _color(x: torch.Tensor, p: float, rng: torch.Generator) -> torch.Tensor:
    n = len(x)
    on = _chosen(x, p, rng)
    x = x + on * (_uniform(x, rng, n, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = x + on * (mean + (x - mean) * (_uniform(x, rng, n, 1, 1, 1) * 2) - x)
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return x + on * (mean + (x - mean) * (_uniform(x, rng, n, 1, 1, 1) + 0.5) - x)


def _translation(x: torch.Tensor, p: float, rng: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    on = _chosen(x, p, rng).view(n, 1).float()
    limit = torch.tensor([w * ratio, h * ratio], device=x.device)
    shift = torch.round((_uniform(x, rng, n, 2).float() * 2 - 1) * limit) * on  # whole pixels
    # grid_sample in normalised coordinates: a shift of s pixels is 2s / side.
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = (-2 * shift[:, 0] / w).to(x.dtype)
    theta[:, 1, 2] = (-2 * shift[:, 1] / h).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _cutout(x: torch.Tensor, p: float, rng: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    on = _chosen(x, p, rng).view(n, 1, 1)
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h - ch + 1, (n, 1, 1), generator=rng).to(x.device)
    left = torch.randint(0, w - cw + 1, (n, 1, 1), generator=rng).to(x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    hole = ((ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)).to(x.dtype) * on
    return x * (1 - hole).unsqueeze(1)


_OPS = dict(zip(AUGMENTATIONS, (_color, _translation, _cutout)))


def augment(images: torch.Tensor, policy: list[str], p: float, rng: torch.Generator) -> torch.Tensor:
    """`images` [N, C, H, W] in [-1, 1] through every op of `policy` (in order), each with probability p
    per image, drawn from `rng` (a CPU generator: the loop seeds it per step, so a resumed run
    augments as an uninterrupted one); unchanged when the policy is empty or p is 0."""
    if p <= 0:
        return images
    for name in policy:
        images = _OPS[name](images, p, rng)
    return images
