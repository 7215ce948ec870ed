"""Decoded images to PNG: grids of samples and interpolation strips."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# Decoded digits are 8x8: scale small images up so a grid is visible in a browser.
MIN_CELL_PIXELS = 32
_PAD = 2


def to_pil(images: np.ndarray, cols: int | None = None) -> Image.Image:
    """Tile images into one picture.

    Args:
        images: shape ``(n, C, H, W)``, float in [0, 1], C in (1, 3).
        cols: images per row (default: a near-square grid).

    Returns:
        A grayscale (C = 1) or RGB (C = 3) image; tiles are upscaled (nearest) to at least
        ``MIN_CELL_PIXELS`` and separated by a dark border.

    """
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("no images to tile")
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    scale = max(1, math.ceil(MIN_CELL_PIXELS / max(h, w)))
    th, tw = h * scale, w * scale
    canvas = np.zeros((rows * (th + _PAD) + _PAD, cols * (tw + _PAD) + _PAD, c), np.uint8)
    pixels = (np.clip(images, 0.0, 1.0) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = _PAD + r * (th + _PAD), _PAD + q * (tw + _PAD)
        canvas[y : y + th, x : x + tw] = pixels[i]
    mode = "L" if c == 1 else "RGB"
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode=mode)


def to_png(images: np.ndarray, cols: int | None = None) -> bytes:
    """:func:`to_pil` encoded as PNG bytes (a strip when ``cols == n``)."""
    buf = io.BytesIO()
    to_pil(images, cols).save(buf, format="PNG")
    return buf.getvalue()
