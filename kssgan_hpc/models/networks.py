"""The three networks of k-Same-Siamese-GAN; every size comes from ModelConfig."""

from __future__ import annotations

import torch
from torch import nn

from kssgan_hpc.config.train import ModelConfig
from kssgan_hpc.data.pixels import to_unit
from kssgan_hpc.data.shards import NUM_LANDMARKS
from kssgan_hpc.models.blocks import AdaIN, DownBlock, UpBlock, landmark_heatmaps, widths


def shape_of(cfg: ModelConfig) -> int:
    """The resolution, once the model's shape has been taken from the data (train/run.model_from_data)."""
    if cfg.resolution is None or cfg.channels is None:
        raise ValueError("model.resolution and model.channels are unset: they come from the dataset "
                         "(model_from_data) or must be given")
    return cfg.resolution


class SiameseEncoder(nn.Module):
    """Face [-1, 1] -> L2-normalised identity embedding (`embed_dim`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = widths(shape_of(cfg), cfg.siamese_width, cfg.max_width)
        self.stem = nn.Conv2d(cfg.channels, w[0], 3, padding=1)
        self.blocks = nn.Sequential(*[DownBlock(w[i], w[i + 1], norm=True) for i in range(len(w) - 1)])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(w[-1] * 16, cfg.embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.head(self.blocks(self.stem(images)))
        return nn.functional.normalize(features.float(), dim=1)


@torch.no_grad()
def siamese_embeddings(model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu",
                       batch_size: int = 64) -> torch.Tensor:
    """uint8 faces [N, C, H, W] -> float32 [N, d] embeddings on the CPU, `batch_size` at a time, in the
    model's own dtype (DeepSpeed's bf16/fp16 engines hold the module's weights in that type)."""
    dtype = next(model.parameters()).dtype
    parts = [model(to_unit(images[start:start + batch_size]).to(device, dtype)).float().cpu()
             for start in range(0, len(images), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


class Generator(nn.Module):
    """G(base face, declared cues, z) -> face = base + bounded residual. No source pixels go in.

    `base` is the cluster's k-Same-Aligned face posed on the source's landmarks: a function of the
    cluster and the landmarks only. The declared cues are the 5 landmarks (drawn as heatmaps), the
    expression and pose labels (-1 unknown); each can be switched off in ModelConfig and is then
    zeroed. A U-Net reads base + heatmaps; its decoder is AdaIN-modulated by a code of z and the
    labels. The last layer starts at zero, so at step 0 the output is exactly the base face.
    """

    def __init__(self, cfg: ModelConfig, num_expressions: int = 0, num_poses: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        w = widths(shape_of(cfg), cfg.generator_width, cfg.max_width)
        self.stem = nn.Conv2d(cfg.channels + NUM_LANDMARKS, w[0], 3, padding=1)
        self.down = nn.ModuleList(DownBlock(w[i], w[i + 1], norm=True) for i in range(len(w) - 1))
        # Label index 0 = unknown (or the cue switched off); label l is row l + 1.
        self.expression = nn.Embedding(num_expressions + 1, cfg.code_dim)
        self.pose = nn.Embedding(num_poses + 1, cfg.code_dim)
        self.code = nn.Sequential(nn.Linear(cfg.z_dim + cfg.code_dim, cfg.code_dim), nn.LeakyReLU(0.2),
                                  nn.Linear(cfg.code_dim, cfg.code_dim))
        self.bottleneck = AdaIN(w[-1], cfg.code_dim)
        self.up = nn.ModuleList(UpBlock(w[i + 1], w[i], w[i], cfg.code_dim) for i in reversed(range(len(w) - 1)))
        self.to_image = nn.Conv2d(w[0], cfg.channels, 1)
        nn.init.zeros_(self.to_image.weight)
        nn.init.zeros_(self.to_image.bias)

    def forward(self, base: torch.Tensor, landmarks: torch.Tensor, expression: torch.Tensor,
                pose: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """base [N, C, R, R] in [-1, 1]; landmarks [N, 5, 2] pixels (NaN unknown); expression, pose [N]
        label indices (-1 unknown); z [N, z_dim]."""
        cfg = self.cfg
        heatmaps = landmark_heatmaps(landmarks, base.shape[-1]).to(base.dtype)
        if not cfg.cue_landmarks:
            heatmaps = torch.zeros_like(heatmaps)
        labels = self.expression((expression + 1).clamp_min(0) * int(cfg.cue_expression)) + \
            self.pose((pose + 1).clamp_min(0) * int(cfg.cue_pose))
        code = self.code(torch.cat([z.to(labels.dtype), labels], dim=1))
        x = self.stem(torch.cat([base, heatmaps], dim=1))
        skips = []
        for block in self.down:
            skips.append(x)
            x = block(x)
        x = self.bottleneck(x, code)
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip, code)
        residual = cfg.residual_bound * torch.tanh(self.to_image(x))
        return (base + residual).clamp(-1, 1)


class Discriminator(nn.Module):
    """Real/fake logit, plus expression logits where the data has expression labels."""

    def __init__(self, cfg: ModelConfig, num_expressions: int = 0) -> None:
        super().__init__()
        w = widths(shape_of(cfg), cfg.discriminator_width, cfg.max_width)
        self.stem = nn.Conv2d(cfg.channels, w[0], 3, padding=1)
        self.blocks = nn.Sequential(*[DownBlock(w[i], w[i + 1]) for i in range(len(w) - 1)])
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(w[-1] * 16, w[-1]), nn.LeakyReLU(0.2))
        self.real_fake = nn.Linear(w[-1], 1)
        self.expression = nn.Linear(w[-1], num_expressions) if num_expressions else None

    def forward(self, images: torch.Tensor, features: bool = False) -> tuple[torch.Tensor, ...]:
        """(real/fake logits [N], expression logits [N, E] or None), and with `features` D's last
        hidden layer [N, w] (what feature matching compares)."""
        h = self.features(self.blocks(self.stem(images)))
        logits = self.expression(h) if self.expression is not None else None
        return (self.real_fake(h).squeeze(1), logits, h) if features else (self.real_fake(h).squeeze(1), logits)
