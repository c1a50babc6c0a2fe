"""The classic de-identifications kSS-GAN is compared with, on the same aligned faces (uint8 NHWC)."""

from __future__ import annotations

import numpy as np


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation `sigma` pixels; sigma 0 returns the faces unchanged."""
    import cv2

    if sigma <= 0:
        return images.copy()
    out = [cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT) for image in images]
    return np.stack([o[..., None] if o.ndim == 2 else o for o in out])


def pixelate(images: np.ndarray, block: int) -> np.ndarray:
    """Mean over block x block cells (the side must be a multiple of block: powers of two here)."""
    n, h, w, c = images.shape
    if block <= 1:
        return images.copy()
    cells = images.reshape(n, h // block, block, w // block, block, c).astype(np.float64).mean(axis=(2, 4))
    return np.repeat(np.repeat(cells, block, axis=1), block, axis=2).round().astype(np.uint8)


def ksame_pixel(identities: np.ndarray, cluster_of: dict[int, int], cluster_faces: np.ndarray) -> np.ndarray:
    """k-Same-Pixel (Newton et al. 2005): every face replaced by its cluster's average face."""
    return np.stack([cluster_faces[cluster_of[int(i)]] for i in identities])
