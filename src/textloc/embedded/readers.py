"""Pixel readers for the embedded model's non-text attributes: background colour and text colour.

Why from pixels: the renderer draws flat colours, so the border's median colour *is* the background, and the
pixels that differ most from it inside the text box are the glyphs. Each reading is snapped to the nearest
named colour (RGB distance). Both readers are checked against renderer ground truth in the tests.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .renderer import COLOURS

_NAMES = list(COLOURS)
_TABLE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float64)


def nearest_colour(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_TABLE - np.asarray(rgb, dtype=np.float64)) ** 2).sum(axis=1)))]


def background_colour(image: Image.Image) -> str:
    """Median colour of the one-pixel border, snapped to a named colour."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return nearest_colour(np.median(border, axis=0))


def text_colour(image: Image.Image, background: str | None = None) -> str | None:
    """Median of the pixels least like the background (the glyph cores); ``None`` if there is no ink."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    bg = np.array(COLOURS[background or background_colour(image)], dtype=np.float64)
    distance = np.sqrt(((arr - bg) ** 2).sum(axis=1))
    if distance.max() < 60:
        return None
    core = arr[distance >= max(60.0, 0.7 * distance.max())]
    return nearest_colour(np.median(core, axis=0))
