"""The GAN's losses, outside the loop (as StyleGAN2-ADA's training/loss.py): pure functions of tensors,
and `GanLoss`, which runs D's and G's phase of one micro-batch, backward included.

None of them takes the source image toward which G could be pulled: G is pulled to its cluster's
surrogate identity and to its own base face, pushed from the source identity, and judged real or
fake by D.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kssgan_hpc.checkpoints import DISCRIMINATOR, GENERATOR
from kssgan_hpc.config.train import GanConfig
from kssgan_hpc.train.augment import augment
from kssgan_hpc.train.run import keyed_generator


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


def feature_matching(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Squared distance between the batch means of D's features of outputs and of real faces: the
    outputs' statistics are pulled toward real faces', no output toward any one face."""
    return (fake.float().mean(0) - real.float().mean(0)).pow(2).mean()


DIVERSITY_CAP = 0.5
"""Output distance per unit of noise distance beyond which more variety earns nothing."""


def diversity(first: torch.Tensor, second: torch.Tensor, z_first: torch.Tensor, z_second: torch.Tensor) -> torch.Tensor:
    """Diversity-sensitive term (Yang et al. 2019; mode seeking, Mao et al. 2019, in a bounded form):
    minus how far two outputs of the same inputs differ per unit of the distance of their noise,
    capped at DIVERSITY_CAP. Lowering it makes G use z (variety inside a cluster). Mao et al.'s
    1 / ratio explodes here: G starts ignoring z (ratio ~0) and the term swamped every other loss."""
    ratio = (first.float() - second.float()).abs().mean() / (z_first.float() - z_second.float()).abs().mean()
    return -ratio.clamp(max=DIVERSITY_CAP)


def base_consistency(output: torch.Tensor, base: torch.Tensor, size: int) -> torch.Tensor:
    """L1 between area-downsampled output and base face (size x size): the output keeps the base's
    layout and lighting, which keeps it a face; the base is k-anonymous, so this leaks nothing."""
    return F.l1_loss(F.adaptive_avg_pool2d(output.float(), size), F.adaptive_avg_pool2d(base.float(), size))


@dataclass
class MicroBatch:
    """One micro-batch of GAN training. `inputs` is everything G may see of a source: its cluster's base
    face posed on its cues, the cues (landmarks, expression, pose) and z; never the source image."""

    real: torch.Tensor
    """The source images in [-1, 1]: D's real samples, and the identity G is pushed away from."""
    inputs: tuple[torch.Tensor, ...]
    """(base, landmarks, expression, pose, z): G's arguments."""
    target: torch.Tensor
    """[N, d] the surrogate embedding of each source's cluster."""
    expression: torch.Tensor
    """[N] expression labels (-1 unknown)."""
    micro: int = 0
    """Its index in the step's window (with rank and step, the key of its augmentation draws)."""


class GanLoss:
    """D's and G's phases of one micro-batch, backward included (StyleGAN2-ADA's
    `accumulate_gradients(phase, ...)`): the loop calls one phase per micro-batch inside
    engine.micro_batch and steps the engine; every weight comes from the config."""

    def __init__(self, cfg: GanConfig, engine: Any, siamese: torch.nn.Module,
                 all_finite: Callable[[torch.Tensor, int], bool]) -> None:
        self.cfg = cfg
        self.engine = engine
        self.siamese = siamese  # frozen, fp32 under every engine
        self.all_finite = all_finite
        """(loss, step) -> True on every rank only if the loss is finite on every rank (Run.all_finite)."""
        self.d_plain = engine.unwrap(DISCRIMINATOR)
        """D itself, unwrapped: frozen in G's phase, and R1's own pass (the engine's hooks see one backward)."""

    def accumulate_gradients(self, phase: str, batch: MicroBatch, step: int, r1: bool = False) -> dict[str, Any]:
        """Phase "D" (with the lazy R1 term when `r1`) or "G" of training step `step`; returns the
        phase's scalars and "ok" (False: a loss was not finite on some rank, so nothing was added)."""
        if phase == "D":
            return self._discriminator(batch, step, r1)
        if phase == "G":
            return self._generator(batch, step)
        raise ValueError(f"unknown GAN phase {phase!r}; use D or G")

    def _augment(self, images: torch.Tensor, batch: MicroBatch, step: int, phase: int) -> torch.Tensor:
        """D's view of `images`: DiffAugment, drawn from (seed, rank, step, micro-batch, phase)."""
        rng = keyed_generator(self.cfg.engine.seed, self.engine.rank, step, batch.micro, phase)
        return augment(images, self.cfg.augment, self.cfg.augment_p, rng)

    def _discriminator(self, batch: MicroBatch, step: int, r1_step: bool) -> dict[str, Any]:
        cfg, engine = self.cfg, self.engine
        real = batch.real
        with torch.no_grad(), engine.autocast():
            fake = engine.model(GENERATOR)(*batch.inputs)
        with engine.autocast():
            logits, expr_logits = engine.model(DISCRIMINATOR)(self._augment(torch.cat([real, fake.detach()]), batch,
                                                                            step, 0))
        logits = logits.float()
        real_logits, fake_logits = logits[: len(real)], logits[len(real):]
        adversarial = d_adversarial(real_logits, fake_logits, cfg.adversarial)
        expression = expression_loss(None if expr_logits is None else expr_logits[: len(real)], batch.expression)
        total = adversarial + cfg.w_expression * expression
        r1 = torch.zeros((), device=engine.device)
        if r1_step:
            # Its own pass through the plain module: DeepSpeed's backward hooks on the engine's
            # outputs must only see the one backward below. The gradient is taken of unscaled
            # logits, in fp32, so the penalty is right under any loss scale.
            real_in = real.detach().requires_grad_(True)
            with engine.autocast():
                r1_logits, _ = self.d_plain(self._augment(real_in, batch, step, 1))
            r1 = r1_penalty(r1_logits, real_in)
            total = total + r1 * (cfg.r1_gamma / 2) * cfg.r1_every
        ok = self.all_finite(total, step)
        engine.backward(DISCRIMINATOR, total) if ok else engine.zero_backward(DISCRIMINATOR)
        return {"ok": ok, "loss/d_adversarial": adversarial.item(), "loss/d_expression": expression.item(),
                "loss/r1": r1.item(), "loss/d_total": total.item(), "d/real_score": real_logits.mean().item(),
                "d/fake_score": fake_logits.mean().item()}

    def _generator(self, batch: MicroBatch, step: int) -> dict[str, Any]:
        cfg, engine = self.cfg, self.engine
        matching = cfg.w_feature_match > 0
        with engine.autocast():
            fake = engine.model(GENERATOR)(*batch.inputs)
            fake_logits, fake_expr, fake_features = self.d_plain(self._augment(fake, batch, step, 2), features=True)
            fake_embedding = self.siamese(fake.float())
            with torch.no_grad():
                source_embedding = self.siamese(batch.real.float())
                real_features = self.d_plain(self._augment(batch.real, batch, step, 3), features=True)[2] \
                    if matching else None
        adversarial = g_adversarial(fake_logits.float(), cfg.adversarial)
        pull = identity_pull(fake_embedding, batch.target)
        push = identity_push(fake_embedding, source_embedding, cfg.id_margin)
        expression = expression_loss(fake_expr, batch.expression)
        to_base = base_consistency(fake, batch.inputs[0], cfg.base_size)
        zero = torch.zeros((), device=fake.device)
        matched = feature_matching(fake_features, real_features) if matching else zero
        seeking = zero
        if cfg.w_diversity > 0:  # the same inputs with other noise, drawn from this micro-batch's key
            z = batch.inputs[4]
            other = torch.randn(z.shape, generator=keyed_generator(cfg.engine.seed, engine.rank, step, batch.micro, 4))
            other = other.to(z.device, z.dtype)
            with engine.autocast():
                second = engine.model(GENERATOR)(*batch.inputs[:4], other)
            seeking = diversity(fake, second, z, other)
        total = (cfg.w_adv * adversarial + cfg.w_id_pull * pull + cfg.w_id_push * push
                 + cfg.w_expression * expression + cfg.w_base * to_base + cfg.w_feature_match * matched
                 + cfg.w_diversity * seeking)
        ok = self.all_finite(total, step)
        engine.backward(GENERATOR, total) if ok else engine.zero_backward(GENERATOR)
        cos_source = (fake_embedding.float() * source_embedding.float()).sum(1).mean()
        return {"ok": ok, "loss/g_adversarial": adversarial.item(), "loss/id_pull": pull.item(),
                "loss/id_push": push.item(), "loss/g_expression": expression.item(),
                "loss/base_l1": to_base.item(), "loss/feature_match": matched.item(),
                "loss/diversity": seeking.item(), "loss/g_total": total.item(),
                "identity/cos_to_surrogate": 1 - pull.item(), "identity/cos_to_source": cos_source.item()}
