"""Image preprocessing shared by the OCR backends of :mod:`textloc.eval.ocr` (upscale, pad, crop to the ink,
split at word gaps, join detected boxes in reading order).

Why separate: these are pure PIL/numpy functions, tested on their own, and the backends module stays short.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


def edge_colour(image: Image.Image) -> tuple[int, ...]:
    """Median colour of the 1-px border of ``image``.

    Used to pad with the image's own background so that padding does not create a new edge that a
    detector could mistake for (or merge with) a glyph.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]], axis=0)
    return tuple(int(v) for v in np.median(border, axis=0))


def prepare_image(
    image: Image.Image,
    *,
    min_height: int = 96,
    pad: float = 0.25,
    mode: str = "RGB",
    resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> Image.Image:
    """Upscale a small text image and pad it with its edge colour.

    Args:
        image: input image (any PIL mode).
        min_height: upscale (keeping the aspect ratio) until the height is at least this. Never
            downscales. Tiny renders are below what either reader was trained on.
        pad: border width as a fraction of the (upscaled) height, on every side; 0 disables.
        mode: output PIL mode (``"RGB"`` for RapidOCR, ``"L"`` for tesseract).
        resample: PIL resampling filter for the upscale.
    """
    img = image.convert(mode)
    w, h = img.size
    if min_height and h < min_height:
        scale = min_height / h
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
    if pad > 0:
        p = max(1, round(pad * img.size[1]))
        colour = edge_colour(img)
        fill: Any = colour[0] if mode == "L" else colour
        canvas = Image.new(mode, (img.size[0] + 2 * p, img.size[1] + 2 * p), fill)
        canvas.paste(img, (p, p))
        img = canvas
    return img


def _group_lines(items: list[tuple[np.ndarray, str]]) -> list[list[tuple[np.ndarray, str]]]:
    """Group detected boxes into text lines (top-to-bottom), each sorted left-to-right.

    Two boxes are on the same line when their vertical centres differ by less than half the
    smaller box height; that tolerates slight baseline jitter without merging stacked lines.
    """
    geo = []
    for box, text in items:
        pts = np.asarray(box, dtype=float).reshape(-1, 2)
        y0, y1 = pts[:, 1].min(), pts[:, 1].max()
        geo.append(((y0 + y1) / 2, y1 - y0, pts[:, 0].min(), (box, text)))
    geo.sort(key=lambda g: g[0])
    lines: list[list[tuple[float, float, float, tuple[np.ndarray, str]]]] = []
    for g in geo:
        if lines:
            last = lines[-1]
            ref_cy = float(np.mean([x[0] for x in last]))
            ref_h = min(x[1] for x in last)
            if abs(g[0] - ref_cy) < 0.5 * max(1.0, min(ref_h, g[1])):
                last.append(g)
                continue
        lines.append([g])
    return [[x[3] for x in sorted(line, key=lambda x: x[2])] for line in lines]


def _join_boxes(items: list[tuple[np.ndarray, str]]) -> str:
    """Join detected text boxes into one string: lines top-to-bottom, boxes left-to-right."""
    return " ".join(t.strip() for line in _group_lines(items) for _, t in line if t.strip())


def autocrop(image: Image.Image, *, margin: float = 0.2, threshold: int = 40) -> Image.Image:
    """Crop to the ink (pixels unlike the edge colour) plus ``margin`` x ink height of background.

    The recogniser is trained on tight line crops from the detector; this emulates such a crop when
    the detector is skipped, and normalises how much background surrounds the text. Returns the
    image unchanged when it has no ink.
    """
    rgb = image.convert("RGB")
    mask = _ink_mask(rgb, threshold)
    if not mask.any():
        return rgb
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    m = round(margin * (y1 - y0))
    crop = rgb.crop((int(x0), int(y0), int(x1), int(y1)))
    out = Image.new("RGB", (crop.size[0] + 2 * m, crop.size[1] + 2 * m), edge_colour(rgb))
    out.paste(crop, (m, m))
    return out


def _ink_mask(image: Image.Image, threshold: int = 40) -> np.ndarray:
    """Pixels whose colour differs from the edge colour by more than ``threshold`` in any channel."""
    rgb = image.convert("RGB")
    arr = np.asarray(rgb).astype(np.int16)
    bg = np.asarray(edge_colour(rgb), dtype=np.int16)
    return np.abs(arr - bg).max(axis=-1) > threshold


def word_segments(image: Image.Image, *, min_gap: float = 0.2, threshold: int = 40) -> list[Image.Image]:
    """Split a single-line image at blank column runs at least ``min_gap`` x ink height wide.

    Returns full-height crops, one per word-like ink segment, left to right; the whole image when
    there is no ink or no such gap.
    """
    mask = _ink_mask(image, threshold)
    if not mask.any():
        return [image]
    ys = np.nonzero(mask.any(axis=1))[0]
    ink_h = ys[-1] - ys[0] + 1
    cols = mask.any(axis=0)
    xs = np.nonzero(cols)[0]
    cuts: list[tuple[int, int]] = []  # (start, end) of blank runs inside the ink span
    run_start = None
    for x in range(xs[0], xs[-1] + 1):
        if not cols[x]:
            run_start = x if run_start is None else run_start
        elif run_start is not None:
            if x - run_start >= min_gap * ink_h:
                cuts.append((run_start, x))
            run_start = None
    if not cuts:
        return [image]
    bounds = [0] + [(a + b) // 2 for a, b in cuts] + [image.size[0]]
    return [image.crop((bounds[i], 0, bounds[i + 1], image.size[1])) for i in range(len(bounds) - 1)]


