"""Decoded images to PNG and back.

Sample grids, interpolation strips with their singular crossings marked, the singular set of a
model in any dimension (angle histogram and image pairs), and PNG uploads read into arrays.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image

# Decoded digits are 8x8: scale small images up so a grid is visible in a browser.
MIN_CELL_PIXELS = 32
_PAD = 2
# Strips leave this many pixels between frames, so a crossing bar is visible between them.
STRIP_PAD = 6
CROSSING_RGB = (220, 38, 38)
THRESHOLD_COLOUR = "#dc2626"
HIST_COLOUR = "#6b7280"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks the decoder needs for the pixels (header, palette, transparency, data, end); text,
# profiles and the rest are dropped before decoding (a compressed text chunk is a bomb).
_PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"})


def to_pil(images: np.ndarray, cols: int | None = None, pad: int = _PAD) -> Image.Image:
    """Tile images into one picture.

    Args:
        images: shape ``(n, C, H, W)``, float in [0, 1], C in (1, 3).
        cols: images per row (default: a near-square grid).
        pad: pixels between tiles and around them.

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
    canvas = np.zeros((rows * (th + pad) + pad, cols * (tw + pad) + pad, c), np.uint8)
    pixels = (np.clip(images, 0.0, 1.0) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + q * (tw + pad)
        canvas[y : y + th, x : x + tw] = pixels[i]
    mode = "L" if c == 1 else "RGB"
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode=mode)


def to_png(images: np.ndarray, cols: int | None = None) -> bytes:
    """:func:`to_pil` encoded as PNG bytes (a strip when ``cols == n``)."""
    return _encode(to_pil(images, cols))


def crossing_gaps(t: Sequence[float], steps: int) -> list[int]:
    """Gap index k (between frames k and k + 1) of each crossing parameter in ``t``.

    Frames sit at t_k = k / (steps - 1); a crossing in (t_k, t_k+1] lies in gap k.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    return [min(max(math.ceil(x * (steps - 1)) - 1, 0), steps - 2) for x in t]


def strip_png(images: np.ndarray, gaps: Sequence[int] = ()) -> bytes:
    """Frames in one row, a red bar in each gap of ``gaps`` (a singular crossing there).

    Args:
        images: frames, shape ``(n, C, H, W)`` in [0, 1].
        gaps: gap indices k in ``[0, n - 2]``: the bar goes between frames k and k + 1.

    Returns:
        PNG bytes of an RGB picture (grayscale frames are converted).

    """
    n = images.shape[0]
    strip = np.asarray(to_pil(images, cols=n, pad=STRIP_PAD).convert("RGB")).copy()
    tile = (strip.shape[1] - STRIP_PAD) // n - STRIP_PAD
    for k in gaps:
        if not 0 <= k <= n - 2:
            raise ValueError(f"gap {k} is not between two of {n} frames")
        x = STRIP_PAD + (k + 1) * (tile + STRIP_PAD) - STRIP_PAD
        strip[:, x : x + STRIP_PAD] = CROSSING_RGB
    return _encode(Image.fromarray(strip, mode="RGB"))


def singular_set_png(
    *,
    angles: np.ndarray,
    threshold: float | None,
    title: str,
    pair_images: np.ndarray,
    pair_angles: np.ndarray,
    score_label: str = "dihedral angle of adjacent cells (rad)",
    unit: str = " rad",
    size_px: int = 720,
) -> bytes:
    """The singular set of a model in any dimension, as one picture.

    Top: the histogram of the scores (dihedral angles, or the frame's score) of adjacent cell
    pairs with the threshold as a red line (pairs right of it are singular). Below: the most
    singular pairs, each as the two decoded training codes side by side with its score, so
    one sees which modes the map separates.

    Args:
        angles: scores of all observed adjacent pairs, shape ``(P,)``.
        threshold: the threshold, or ``None`` (nothing singular).
        title: one line above the histogram.
        pair_images: decoded pairs, shape ``(k, 2, C, H, W)`` in [0, 1] (k may be 0).
        pair_angles: their scores, shape ``(k,)``.
        score_label: the histogram's axis label.
        unit: appended to each pair's score (" rad" for angles).
        size_px: picture width in pixels.

    Returns:
        PNG bytes.

    """
    # Matplotlib loads with the first picture that needs it, not with the server (0.3 s).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = pair_images.shape[0]
    cols = min(k, 6)
    rows = math.ceil(k / cols) if k else 0
    dpi = 100
    # Inches: 3 for the histogram, 1 per row of pairs (a 2:1 pair 1/6 of the width wide + title).
    fig = Figure(figsize=(size_px / dpi, 3.0 + 1.0 * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1 + rows, max(cols, 1), height_ratios=[3.0] + [1.0] * rows)
    ax = fig.add_subplot(grid[0, :])
    ax.hist(angles, bins=min(60, max(10, angles.size // 5)), color=HIST_COLOUR)
    if threshold is not None:
        ax.axvline(threshold, color=THRESHOLD_COLOUR, linewidth=2, label="threshold")
        ax.legend(fontsize=8)
    ax.set_xlabel(score_label, fontsize=8)
    ax.set_ylabel("pairs", fontsize=8)
    ax.tick_params(labelsize=7)
    # Wrapped to the figure's width (7 px a character at 9 pt, with a margin): a long model name or
    # rule must not run past the picture's edges.
    ax.set_title(textwrap.fill(title, width=max(30, size_px // 8)), fontsize=9)
    for p in range(k):
        sub = fig.add_subplot(grid[1 + p // cols, p % cols])
        pair = np.asarray(to_pil(pair_images[p], cols=2).convert("RGB"))
        sub.imshow(pair, interpolation="nearest")
        sub.set_title(f"{pair_angles[p]:.3g}{unit}", fontsize=7)
        sub.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _encode(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def from_png(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Read one PNG of exactly ``shape`` = (C, H, W) pixels into floats in [0, 1].

    The size is read from the PNG's header chunk before anything is decoded, so a picture of
    the wrong size (a 13,000 x 13,000 one sent as 200 KB) is refused without allocating its
    pixels. Only the chunks that carry pixels reach the decoder: text, colour profiles and
    other ancillary chunks are dropped unread, so none of them can expand in memory.

    Args:
        data: PNG file bytes.
        shape: the model's image shape; C = 1 reads grayscale, C = 3 RGB (converting modes).

    Returns:
        Shape ``(C, H, W)``, float32.

    Raises:
        ValueError: not a PNG, a damaged one, or not H x W pixels.

    """
    c, h, w = shape
    pixel_png = _pixel_chunks(data, (w, h))
    try:
        with Image.open(io.BytesIO(pixel_png), formats=["PNG"]) as img:
            img.load()
            pixels = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.float32)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable PNG file: {exc}") from exc
    pixels = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)
    return pixels / np.float32(255.0)


def _pixel_chunks(data: bytes, size: tuple[int, int]) -> bytes:
    """The PNG ``data`` with only its pixel chunks, once its header says it is ``size`` (W, H).

    Walks the chunk list (lengths and types only, nothing decompressed) and refuses a file
    whose header chunk names another size before anything else is read.
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a readable PNG file: no PNG signature")
    view = memoryview(data)
    parts = [view[: len(_PNG_SIGNATURE)]]
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise ValueError("not a readable PNG file: truncated (no IEND chunk)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        end = pos + 12 + length  # length, type, data, CRC
        if end > len(data):
            raise ValueError(f"not a readable PNG file: chunk {kind!r} is truncated")
        if pos == len(_PNG_SIGNATURE):
            if kind != b"IHDR" or length != 13:
                raise ValueError("not a readable PNG file: it does not start with IHDR")
            width = int.from_bytes(data[pos + 8 : pos + 12], "big")
            height = int.from_bytes(data[pos + 12 : pos + 16], "big")
            if (width, height) != size:
                w, h = size
                raise ValueError(f"PNG images must be {w}x{h} pixels (W x H), got {width}x{height}")
        if kind in _PIXEL_CHUNKS:
            parts.append(view[pos:end])
        if kind == b"IEND":
            return b"".join(parts)
        pos = end
