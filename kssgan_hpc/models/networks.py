"""The three networks of k-Same-Siamese-GAN; every size comes from ModelConfig."""

from __future__ import annotations

import torch
from torch import nn

from kssgan_hpc.config.train import ModelConfig
from kssgan_hpc.models.blocks import AdaIN, DownBlock, UpBlock, widths


class SiameseEncoder(nn.Module):
    """Face [-1, 1] -> L2-normalised identity embedding (`embed_dim`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = widths(cfg.resolution, cfg.siamese_width, cfg.max_width)
        self.stem = nn.Conv2d(cfg.channels, w[0], 3, padding=1)
        self.blocks = nn.Sequential(*[DownBlock(w[i], w[i + 1], norm=True) for i in range(len(w) - 1)])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(w[-1] * 16, cfg.embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.head(self.blocks(self.stem(images)))
        return nn.functional.normalize(features.float(), dim=1)


class Generator(nn.Module):
    """G(face, target identity code) -> face: a U-Net whose decoder is AdaIN-modulated by the code.

    The skips carry what should survive de-identification (expression, pose, lighting); the
    code decides who the output looks like.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = widths(cfg.resolution, cfg.generator_width, cfg.max_width)
        self.stem = nn.Conv2d(cfg.channels, w[0], 3, padding=1)
        self.down = nn.ModuleList(DownBlock(w[i], w[i + 1], norm=True) for i in range(len(w) - 1))
        self.code = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.code_dim), nn.LeakyReLU(0.2),
                                  nn.Linear(cfg.code_dim, cfg.code_dim))
        self.bottleneck = AdaIN(w[-1], cfg.code_dim)
        self.up = nn.ModuleList(UpBlock(w[i + 1], w[i], w[i], cfg.code_dim) for i in reversed(range(len(w) - 1)))
        self.to_image = nn.Conv2d(w[0], cfg.channels, 1)

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        code = self.code(target)
        x = self.stem(images)
        skips = []
        for block in self.down:
            skips.append(x)
            x = block(x)
        x = self.bottleneck(x, code)
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip, code)
        return torch.tanh(self.to_image(x))


class Discriminator(nn.Module):
    """Real/fake logit, plus expression logits where the data has expression labels."""

    def __init__(self, cfg: ModelConfig, num_expressions: int = 0) -> None:
        super().__init__()
        w = widths(cfg.resolution, cfg.discriminator_width, cfg.max_width)
        self.stem = nn.Conv2d(cfg.channels, w[0], 3, padding=1)
        self.blocks = nn.Sequential(*[DownBlock(w[i], w[i + 1]) for i in range(len(w) - 1)])
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(w[-1] * 16, w[-1]), nn.LeakyReLU(0.2))
        self.real_fake = nn.Linear(w[-1], 1)
        self.expression = nn.Linear(w[-1], num_expressions) if num_expressions else None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.features(self.blocks(self.stem(images)))
        logits = self.expression(h) if self.expression is not None else None
        return self.real_fake(h).squeeze(1), logits
