"""Re-identification (rank-1, CMC), change (SSIM, PSNR), landmark drift and faces detected of de-identified faces."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def identity_gallery(embeddings: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted identity ids, their normalised mean embeddings)."""
    ids = np.unique(identities)
    means = np.stack([embeddings[identities == i].mean(0) for i in ids])
    return ids, means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def cmc(probes: np.ndarray, probe_identities: np.ndarray, gallery_ids: np.ndarray, gallery: np.ndarray,
        ranks: int = 10) -> np.ndarray:
    """Cumulative match characteristic: [r] = share of probes whose true identity is among the r+1
    gallery identities most similar (cosine) to them. Ties are broken at random, in expectation: a
    probe tied with t others counts (r + 1 - better) / (t + 1) — identical outputs for a whole
    cluster (k-Same) must score 1/k, not 1."""
    return cmc_of_scores(probes @ gallery.T, np.searchsorted(gallery_ids, probe_identities), ranks)


def cmc_of_scores(scores: np.ndarray, truth: np.ndarray, ranks: int = 10) -> np.ndarray:
    """CMC from any attacker's scores [probes, people] (higher: more likely; -inf: ruled out) and each
    probe's true column, ties broken at random in expectation as in `cmc`."""
    true = scores[np.arange(len(scores)), truth]
    tolerance = 1e-9 * np.maximum(np.abs(true), 1.0)
    better = (scores > true[:, None] + tolerance[:, None]).sum(1)
    tied = (np.abs(scores - true[:, None]) <= tolerance[:, None]).sum(1) - 1  # others tied with the truth
    return np.array([np.clip((r + 1 - better) / (tied + 1), 0, 1).mean()
                     for r in range(min(ranks, scores.shape[1]))])


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image SSIM (Wang et al. 2004: 11 px Gaussian window, sigma 1.5) of uint8 NHWC pairs, on luma."""
    def luma(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x.astype(np.float64))
        t = t.mean(-1) if t.shape[-1] == 1 else t @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
        return t[:, None]

    x, y, w = luma(a), luma(b), _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx ** 2
    syy = F.conv2d(y * y, w) - my ** 2
    sxy = F.conv2d(x * y, w) - mx * my
    value = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return value.mean(dim=(1, 2, 3)).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image PSNR in dB of uint8 pairs (identical images: inf)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0 ** 2 / mse)


def landmark_drift(source: list[np.ndarray | None], output: list[np.ndarray | None]) -> tuple[float | None, float]:
    """(mean displacement of the 5 landmarks in inter-ocular distances, share of outputs with a face
    found) over the pairs where both faces were found (YuNet rows: box, 5 x (x, y), score); None
    when no output face was found."""
    drifts, found = [], 0
    for s, o in zip(source, output):
        found += o is not None
        if s is None or o is None:
            continue
        ls, lo = s[4:14].reshape(5, 2), o[4:14].reshape(5, 2)
        iod = max(np.linalg.norm(ls[0] - ls[1]), 1e-6)
        drifts.append(np.linalg.norm(ls - lo, axis=1).mean() / iod)
    return (float(np.mean(drifts)) if drifts else None), found / max(len(output), 1)


def detected_landmarks(detections: list[np.ndarray | None], resolution: int) -> np.ndarray:
    """YuNet rows of faces upscaled as the recognizers see them -> [N, 5, 2] landmarks in the faces' own
    pixels (NaN where no face was found)."""
    from kssgan_hpc.attack.recognizers import UPSCALED

    out = np.full((len(detections), 5, 2), np.nan)
    for i, row in enumerate(detections):
        if row is not None:
            out[i] = np.asarray(row[4:14], np.float64).reshape(5, 2) * resolution / UPSCALED
    return out


def cue_error(given: np.ndarray, detected: np.ndarray) -> float | None:
    """Cue fidelity: the mean distance between the landmarks found on each output and those it was
    asked to take (both [N, 5, 2] pixels), in inter-ocular distances of the asked ones; over the
    outputs where both are known (None: none)."""
    given, detected = np.asarray(given, np.float64), np.asarray(detected, np.float64)
    known = np.isfinite(given).all(axis=(1, 2)) & np.isfinite(detected).all(axis=(1, 2))
    if not known.any():
        return None
    iod = np.maximum(np.linalg.norm(given[known, 0] - given[known, 1], axis=1), 1e-6)
    return float((np.linalg.norm(given[known] - detected[known], axis=2).mean(1) / iod).mean())


def spread_within(values: np.ndarray, groups: np.ndarray) -> float | None:
    """How much rows vary inside each group (a cluster, a person): the RMS distance of a group's rows
    (pose offsets [N, 5, 2], images [N, H, W, C], ...) from their mean, averaged over groups with 2+
    known rows; None when there are none."""
    flat = values.reshape(len(values), -1).astype(np.float64)
    known = np.isfinite(flat).all(axis=1)
    spreads = [np.sqrt(((rows - rows.mean(0)) ** 2).sum(1).mean())
               for g in np.unique(groups) if len(rows := flat[known & (groups == g)]) > 1]
    return float(np.mean(spreads)) if spreads else None


def faces_detected(images: np.ndarray, detector: Any) -> float:
    """Share of images in which `detector` (recognizers.YuNet) finds a face, each upscaled as the
    recognizers see it; 0 for no images."""
    from kssgan_hpc.attack.recognizers import upscale

    return float(np.mean([detector.detect(upscale(image)) is not None for image in images])) if len(images) else 0.0


HIGH_FREQUENCY = 0.25
"""Cycles per pixel above which a face's spectral energy counts as fine detail (half of Nyquist)."""


def high_frequency_share(images: np.ndarray) -> np.ndarray:
    """Per uint8 image [N, H, W, C]: the share of its (grey, mean-removed) spectral energy above
    HIGH_FREQUENCY cycles per pixel. Averaging faces loses it (blur), noise fakes it: read it beside
    KID and faces detected."""
    grey = images.astype(np.float64).mean(-1)
    grey -= grey.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(grey)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(grey.shape[1]), np.fft.fftfreq(grey.shape[2]), indexing="ij")
    fine = np.sqrt(fx ** 2 + fy ** 2) > HIGH_FREQUENCY
    total = power.reshape(len(power), -1).sum(1)
    return power[:, fine].sum(1) / np.maximum(total, 1e-12)
