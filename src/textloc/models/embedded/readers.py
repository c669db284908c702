"""Pixel readers for the embedded model's non-text attributes: background colour and text colour.

Why from pixels: the renderer draws flat colours, so the border's median colour *is* the background, and the
pixels that differ most from it inside the text box are the glyphs. Each reading is snapped to the nearest
named colour (RGB distance). Both readers are checked against renderer ground truth in the tests.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from textloc.models.embedded.renderer import COLOURS

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


def font(image: Image.Image, text: str, background: str | None = None, text_colour_name: str | None = None) -> str:
    """The font whose clean rendering of ``text`` (over the renderer's jitter range) is closest to the image.

    Template matching is enough here because the renderer is ours: the text is known (a style pair keeps it),
    the colours are read from the pixels, and only the glyph shapes differ between fonts.
    """
    from textloc.models.embedded.renderer import FONTS, SignSpec, render

    background = background or background_colour(image)
    text_colour_name = text_colour_name or text_colour(image, background) or "black"
    if text_colour_name == background:
        text_colour_name = "black" if background != "black" else "white"
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    best, best_err = "sans", np.inf
    for name in FONTS:
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                ref = render(SignSpec(text, background, text_colour_name, name, dx, dy))
                err = float(((np.asarray(ref, dtype=np.float64) - arr) ** 2).mean())
                if err < best_err:
                    best, best_err = name, err
    return best


def attribute_reader(attribute: str):
    """``reader(images, pairs) -> values`` for ``style`` (font by template matching of the pair's source text),
    ``colour`` (text colour) or ``background``; localization scores an attribute with it."""
    from textloc.data.quotes import quoted_texts
    from textloc.errors import InputError

    def source_text(pair) -> str:
        return next((text for text in quoted_texts(pair.source) if text), "").upper()

    if attribute == "style":
        return lambda images, pairs: [font(im, source_text(p)) for im, p in zip(images, pairs, strict=True)]
    if attribute == "colour":
        return lambda images, _pairs: [text_colour(im) or "" for im in images]
    if attribute == "background":
        return lambda images, _pairs: [background_colour(im) for im in images]
    raise InputError(f"Expected --attribute in text, style, colour, background, but got {attribute!r}")
