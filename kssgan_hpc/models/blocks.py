"""Building blocks shared by the three networks."""

from __future__ import annotations

import math

import torch
from torch import nn


def widths(resolution: int, base: int, maximum: int, lowest: int = 4) -> list[int]:
    """Channel width per level, from `resolution` down to `lowest` px: doubles as the size halves."""
    levels = int(math.log2(resolution // lowest))
    return [min(base * 2 ** i, maximum) for i in range(levels + 1)]


class DownBlock(nn.Module):
    """conv 3x3 -> LeakyReLU -> conv 3x3 stride 2 -> LeakyReLU (halves the size)."""

    def __init__(self, cin: int, cout: int, norm: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1),
            nn.InstanceNorm2d(cin, affine=True) if norm else nn.Identity(),
            nn.LeakyReLU(0.2),
            nn.Conv2d(cin, cout, 3, stride=2, padding=1),
            nn.InstanceNorm2d(cout, affine=True) if norm else nn.Identity(),
            nn.LeakyReLU(0.2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class AdaIN(nn.Module):
    """Instance norm whose scale and shift come from a code (the target identity): FiLM on normalised features."""

    def __init__(self, channels: int, code_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(code_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)  # starts as plain instance norm

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(code).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class UpBlock(nn.Module):
    """Upsample x2, concatenate the encoder skip, two AdaIN-modulated convs."""

    def __init__(self, cin: int, cskip: int, cout: int, code_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin + cskip, cout, 3, padding=1)
        self.ada1 = AdaIN(cout, code_dim)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.ada2 = AdaIN(cout, code_dim)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.act(self.ada1(self.conv1(torch.cat([x, skip], dim=1)), code))
        return self.act(self.ada2(self.conv2(x), code))


def landmark_heatmaps(landmarks: torch.Tensor, resolution: int, sigma: float | None = None) -> torch.Tensor:
    """[N, 5, 2] pixel landmarks -> [N, 5, R, R] Gaussian heatmaps (peak 1); unknown points give zeros."""
    sigma = sigma if sigma is not None else resolution / 32
    axis = torch.arange(resolution, device=landmarks.device, dtype=torch.float32)
    x = landmarks[..., 0, None, None].float()
    y = landmarks[..., 1, None, None].float()
    maps = torch.exp(-((axis[None, None, None, :] - x) ** 2 + (axis[None, None, :, None] - y) ** 2) / (2 * sigma ** 2))
    return torch.nan_to_num(maps, nan=0.0)
