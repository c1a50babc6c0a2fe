"""Pixel conventions, beside the shard format: shards hold uint8 [N, H, W, C]; networks take float
[N, C, H, W] in [-1, 1]; measures and attackers take uint8 [N, H, W, C] numpy arrays."""

from __future__ import annotations

import numpy as np
import torch


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded and clamped."""
    return images.detach().float().add(1.0).mul(127.5).clamp(0, 255).round().to(torch.uint8)


def channels_first(images: np.ndarray) -> torch.Tensor:
    """uint8 numpy [N, H, W, C] -> uint8 tensor [N, C, H, W] (shares memory where it can)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def channels_last(images: torch.Tensor) -> np.ndarray:
    """A network's output, float [N, C, H, W] in [-1, 1] -> uint8 numpy [N, H, W, C]."""
    return to_uint8(images.float()).cpu().permute(0, 2, 3, 1).numpy()


def image_grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> one uint8 [C, rows*H, columns*W] image for TensorBoard (N a multiple of columns)."""
    n, c, h, w = images.shape
    rows = n // columns
    grid = images[: rows * columns].reshape(rows, columns, c, h, w).permute(2, 0, 3, 1, 4)
    return grid.reshape(c, rows * h, columns * w)
