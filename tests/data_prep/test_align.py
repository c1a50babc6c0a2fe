"""The padding's fade to a blur: exact up to 256 px, and at 1024 px (where it runs at a lower
resolution for speed) close to the exact blur and never touching the face's own pixels."""

import cv2
import numpy as np
import pytest

from data_prep import align


def padded(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    inside = np.zeros((size, size), np.uint8)
    inside[size // 5: size * 4 // 5, size // 8: size * 7 // 8] = 255
    return image, inside


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_the_fade_keeps_the_face_and_blurs_the_padding(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    image, inside = padded(size)
    faded = align._fade_padding(image, inside, size)
    monkeypatch.setattr(align, "BLUR_SIGMA_PER_DOWNSAMPLE", float("inf"))  # the full-size blur
    exact = align._fade_padding(image, inside, size)
    assert np.array_equal(faded[inside > 0], image[inside > 0])
    far = cv2.distanceTransform((inside == 0).astype(np.uint8), cv2.DIST_L2, 3) > 0.1 * size
    assert faded[far].std() < image[far].std() / 2  # the far padding is a blur of what was there
    difference = np.abs(faded.astype(int) - exact.astype(int))
    if size <= 256:
        assert difference.max() == 0
    else:
        assert difference.mean() < 1.0 and np.percentile(difference, 99.9) <= 10
