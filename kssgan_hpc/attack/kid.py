"""Kernel Inception Distance (Binkowski et al. 2018) over any fixed feature space.

The unbiased MMD^2 estimate with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged
over random subsets. Unlike FID it is unbiased for small sets, which is what de-identified
releases of a few hundred faces are. Lower is better; 0 means the same distribution.
"""

from __future__ import annotations

import numpy as np


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, *, subsets: int = 50,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 between feature rows of `real` and `fake` over random subsets."""
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"KID needs two [n, d] feature arrays of one width, got {real.shape} and {fake.shape}")
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(real)} and {len(fake)}")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        estimates.append(within - 2 * kxy.mean())
    return float(np.mean(estimates)), float(np.std(estimates))


def kid_interval(real: np.ndarray, fake: np.ndarray, *, resamples: int = 200, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """A `level` percentile bootstrap interval of KID: both sets resampled with replacement, the
    unbiased MMD^2 of each resample computed without the pairs that are one original row twice
    (a duplicate would pair a face with itself and inflate the within-set terms)."""
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    d = real.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((real, real), (fake, fake), (real, fake)))
    rng = np.random.default_rng(seed)

    def within(kernel: np.ndarray, rows: np.ndarray) -> float:
        distinct = rows[:, None] != rows[None, :]
        return float(kernel[np.ix_(rows, rows)][distinct].mean())

    if min(len(real), len(fake)) < 2:
        raise ValueError(f"a KID interval needs at least 2 samples per set, got {len(real)} and {len(fake)}")
    estimates = []
    while len(estimates) < resamples:
        x, y = rng.integers(len(real), size=len(real)), rng.integers(len(fake), size=len(fake))
        if len(np.unique(x)) > 1 and len(np.unique(y)) > 1:  # a resample of one row has no within pairs
            estimates.append(within(kxx, x) + within(kyy, y) - 2 * float(kxy[np.ix_(x, y)].mean()))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)
