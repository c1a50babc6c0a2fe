"""k-Same-Aligned: the cluster's base face, a function of the cluster only, posed by declared landmarks.

Every member image is moved onto one mean 5-landmark frame (a similarity transform: scale,
rotation, shift), averaged per person, the per-person means averaged over the cluster (each
person weighs the same), and the result warped onto a source's 5 landmarks. The source's pixels
never enter: only its landmarks (a declared cue) choose the warp. Averaging in one frame keeps
eyes on eyes, which is why this stays a face where k-Same-Pixel blurs (Gross et al. 2005 make the
same point for k-Same-Model). It is the generator's input, an evaluation method, and the fallback
release when a generator fails the gate.

Warps are batched `grid_sample`s, so they run wherever the tensors are (CPU or GPU).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def similarity_matrices(source: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transforms (Umeyama, no reflection) mapping each [5, 2] point set of
    `source` [N, 5, 2] onto `target` ([N, 5, 2] or one [5, 2]): [N, 2, 3], x' = A @ x + t.

    A row whose points are not all finite gets the identity (such an image is not moved)."""
    src = _float64(source)
    dst = _float64(target).to(src.device).expand_as(src)
    finite = torch.isfinite(src).all(dim=(1, 2)) & torch.isfinite(dst).all(dim=(1, 2))
    src = torch.where(finite[:, None, None], src, torch.zeros_like(src))
    dst = torch.where(finite[:, None, None], dst, torch.zeros_like(dst))
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    xs, xd = src - mu_s, dst - mu_d
    # In complex form a similarity is multiplication by a = scale * e^{i angle}: least squares gives
    # a = sum(conj(xs) * xd) / sum(|xs|^2).
    zs, zd = torch.complex(xs[..., 0], xs[..., 1]), torch.complex(xd[..., 0], xd[..., 1])
    a = (zs.conj() * zd).sum(1) / (zs.abs() ** 2).sum(1).clamp_min(1e-12)
    rotation = torch.stack([torch.stack([a.real, -a.imag], -1), torch.stack([a.imag, a.real], -1)], -2)
    shift = mu_d[:, 0] - (rotation @ mu_s[:, 0, :, None])[..., 0]
    matrices = torch.cat([rotation, shift[..., None]], dim=2)
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64, device=src.device)
    return torch.where(finite[:, None, None], matrices, eye).float()


def _float64(points: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(points, torch.Tensor):
        return points.double()
    return torch.from_numpy(np.array(points, np.float64))  # a copy: inputs may be read-only views


def warp(images: torch.Tensor, output_to_input: torch.Tensor) -> torch.Tensor:
    """Resample float [N, C, H, W] images: output pixel p takes the input at output_to_input @ [p, 1]
    (pixel coordinates, pixel centres on integers as in OpenCV and the shards' landmarks); outside
    the input, the border is repeated."""
    n, _, h, w = images.shape
    m = output_to_input.to(images.device, torch.float32)
    # Pixel -> normalised [-1, 1] coordinates (align_corners=False): u = (2x + 1) / W - 1.
    to_norm = torch.tensor([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]],
                           device=images.device)
    from_norm = torch.linalg.inv(to_norm)
    full = torch.cat([m, torch.tensor([[[0.0, 0.0, 1.0]]], device=images.device).expand(n, 1, 3)], dim=1)
    theta = (to_norm @ full @ from_norm)[:, :2]
    grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def mean_frame(landmarks: np.ndarray) -> np.ndarray:
    """The mean 5-landmark frame [5, 2] of the images whose landmarks are all known."""
    landmarks = np.asarray(landmarks, np.float64)
    known = np.isfinite(landmarks).all(axis=(1, 2))
    if not known.any():
        raise ValueError("no image has all 5 landmarks: k-Same-Aligned needs landmarks (prep with alignment)")
    return landmarks[known].mean(0).astype(np.float32)


def to_frame(images: torch.Tensor, landmarks: np.ndarray | torch.Tensor, frame: np.ndarray) -> torch.Tensor:
    """Member images (float [N, C, H, W]) moved onto the mean frame: each image's landmarks land on
    the frame's. The sampling map is the inverse: frame -> image."""
    return warp(images, similarity_matrices(np.broadcast_to(frame, np.shape(landmarks)), landmarks))


def render(templates: torch.Tensor, frame: np.ndarray, landmarks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Cluster templates (float [N, C, H, W], in the mean frame) posed onto each image's landmarks
    [N, 5, 2]: the k-Same-Aligned base faces. An image without landmarks gets its template as is."""
    landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
    return warp(templates, similarity_matrices(landmarks, torch.as_tensor(frame).expand_as(landmarks)))

