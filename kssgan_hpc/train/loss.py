"""The GAN's losses, outside the loop (as StyleGAN2-ADA's training/loss.py): pure functions of tensors.

None of them takes the source image toward which G could be pulled: G is pulled to its cluster's
surrogate identity and to its own base face, pushed from the source identity, and judged real or
fake by D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_adversarial(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """D's loss on real and fake logits: non-saturating logistic ('nonsat') or hinge."""
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_adversarial(fake: torch.Tensor, kind: str) -> torch.Tensor:
    """G's loss on D's logits of its outputs."""
    return -fake.mean() if kind == "hinge" else F.softplus(-fake).mean()


def r1_penalty(logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean squared norm of D's gradient at real images, in fp32.
    `real` must require grad and `logits` come from it."""
    (grad,) = torch.autograd.grad(logits.float().sum(), real, create_graph=True)
    return grad.float().pow(2).sum(dim=[1, 2, 3]).mean()


def expression_loss(logits: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled images only (-1 = unknown); 0 where nothing is labelled."""
    known = labels >= 0
    if logits is None or not bool(known.any()):
        return torch.zeros((), device=labels.device)
    return F.cross_entropy(logits.float()[known], labels[known])


def identity_pull(embedding: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """1 - cosine between the output's identity embedding and its cluster's surrogate (both unit)."""
    return (1 - (embedding.float() * surrogate.float()).sum(1)).mean()


def identity_push(embedding: torch.Tensor, source: torch.Tensor, margin: float) -> torch.Tensor:
    """Cosine to the source identity beyond `margin`: only pushes away, never toward the source."""
    return F.relu((embedding.float() * source.float()).sum(1) - margin).mean()


def base_consistency(output: torch.Tensor, base: torch.Tensor, size: int) -> torch.Tensor:
    """L1 between area-downsampled output and base face (size x size): the output keeps the base's
    layout and lighting, which keeps it a face; the base is k-anonymous, so this leaks nothing."""
    return F.l1_loss(F.adaptive_avg_pool2d(output.float(), size), F.adaptive_avg_pool2d(base.float(), size))
