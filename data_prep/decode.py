"""Bytes -> RGB uint8 array, robust to every kind of bad input a real face folder holds."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112


class SkipImage(Exception):
    """This input cannot be used; the message is the reason recorded in the manifest."""


def decode_image(data: bytes, *, min_size: int, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    """Decode to [H, W, 3] uint8 RGB; return it with the conversions applied (mode, EXIF rotation)."""
    if not data:
        raise SkipImage("empty file (0 bytes)")
    conversions: list[str] = []
    with warnings.catch_warnings():
        # PIL only warns between 1x and 2x its pixel limit; treat both as a bomb.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise SkipImage("not an image (unrecognised format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise SkipImage("decompression bomb (too many pixels)") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise SkipImage(f"corrupt image header: {err}") from None
        width, height = image.size
        if width * height > max_pixels:
            raise SkipImage(f"decompression bomb: {width}x{height} exceeds max_pixels={max_pixels}")
        if min(width, height) < 1:
            raise SkipImage(f"degenerate size {width}x{height}")
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise SkipImage("decompression bomb (too many pixels)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise SkipImage(f"truncated or corrupt image data: {err}") from None

    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image)
        conversions.append(f"EXIF orientation {orientation} applied")
    if min(image.size) < min_size:
        raise SkipImage(f"too small: {image.size[0]}x{image.size[1]}, min_size={min_size}")
    return _to_rgb(image, conversions), conversions


def _to_rgb(image: Image.Image, conversions: list[str]) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit data scales by 1/257; 32-bit integer images are scaled by their own maximum.
        peak = 65535.0 if mode.startswith("I;16") or values.max() <= 65535 else values.max()
        grey = np.clip(values * (255.0 / peak), 0, 255).round().astype(np.uint8)
        conversions.append(f"{mode} (16-bit) grey to 8-bit RGB")
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max() <= 1.0 else 1.0
        grey = np.clip(values * scale, 0, 255).round().astype(np.uint8)
        conversions.append("F (float) grey to 8-bit RGB")
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        conversions.append(f"{mode} alpha composited on white")
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode != "RGB":
        names = {"L": "grey", "1": "1-bit", "P": "palette", "CMYK": "CMYK", "YCbCr": "YCbCr"}
        conversions.append(f"{names.get(mode, mode)} to RGB")
        image = image.convert("RGB")
    return np.asarray(image)
