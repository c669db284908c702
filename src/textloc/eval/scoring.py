"""Scores: did an image render the expected text, and how much of another image did it keep?

The one home of the rules every command scores with (localize, edit, safety, finetune, the embedded model's
evaluation); the typed results are :class:`TextScore` and :class:`ImageScore`.

Text (:func:`text_scores`), on text normalised by :func:`normalize_text`:

1. typographic apostrophes (``’``, ``‘``, ...) mapped to ASCII ``'``, then Unicode NFKC;
2. upper case (rendered case is often ambiguous at small sizes; the paper's prompts are mostly upper case);
3. apostrophes *deleted* (``DON'T`` -> ``DONT``): tiny, often missed by OCR, and a missed one leaves no gap;
4. every other character that is not a letter or digit becomes a space (``E-MAIL`` -> ``E MAIL``): a missed
   hyphen or comma usually leaves a visible gap, which readers turn into a space;
5. whitespace collapsed and stripped.

* precision / recall / F1 over the *multiset of words* (not characters): ``tp`` is the size of the multiset
  intersection (``"GO GO"`` vs ``"GO"``: tp = 1); both empty: all 1.0; exactly one empty: all 0.0.
* ``exact``: the normalised strings are equal.
* ``edit_distance``: Levenshtein distance between the normalised strings (rapidfuzz).
* ``cer``: ``edit_distance / max(1, len(normalised expected))``; can exceed 1.

Images (:func:`image_scores`), on float64 images in [0, 1]: PIL images and uint8/uint16 arrays are divided by
255/65535 *before* any subtraction (a uint8 difference would wrap: ``10 - 250 == 16``).

* ``mse``: mean squared error (black vs white = 1.0).
* ``psnr = 10 log10(1 / mse)`` dB, capped at :data:`PSNR_MAX` = 100 dB. **The one rule for identical
  images: PSNR = 100 dB** (not infinity, which JSON cannot hold and which makes every mean infinite; 100 dB
  is above the PSNR of any two different 8-bit images of up to 10^5 values: at most 10 log10(255² · n) dB).
* ``ssim``: scikit-image's ``structural_similarity`` with ``data_range=1``, the colour axis as
  ``channel_axis``, a 7x7 window shrunk to the largest odd size that fits images under 7 px.

Colours (:func:`colours_kept`): the model profile's pixel reader names the background and text colour of
both images; "kept" means the same name.

Differences from the reference implementation: its "word" F1 iterated strings as characters (a wrong word
sharing letters scored well), and its MSE subtracted uint8 arrays (wrapping around).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image
from rapidfuzz.distance import Levenshtein

__all__ = [
    "PSNR_MAX",
    "TextScore",
    "ImageScore",
    "normalize_text",
    "words",
    "text_scores",
    "to_float_image",
    "mse",
    "psnr",
    "ssim",
    "image_scores",
    "colours_kept",
]

#: PSNR of identical images, and the cap of every PSNR (see the module docstring).
PSNR_MAX = 100.0

# ----------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------

_APOSTROPHES = "'\u2018\u2019\u201b\u02bc\u2032`\u00b4"
_TYPOGRAPHIC = str.maketrans({c: "'" for c in _APOSTROPHES[1:]})
_WHITESPACE = re.compile(r"\s+")


def normalize_text(s: str) -> str:
    """Canonical form for comparing OCR output with expected text (see the module docstring).

    >>> normalize_text("  Don't   e-mail, ok? ")
    'DONT E MAIL OK'
    """
    s = unicodedata.normalize("NFKC", s.translate(_TYPOGRAPHIC)).upper()
    s = s.replace("'", "")
    s = "".join(c if c.isalnum() else " " for c in s)
    return _WHITESPACE.sub(" ", s).strip()


def words(s: str) -> list[str]:
    """Words of the normalised text."""
    return normalize_text(s).split()


@dataclass(frozen=True)
class TextScore:
    """How well a reading matches the expected text (one image)."""

    exact: bool
    precision: float
    recall: float
    f1: float
    cer: float
    edit_distance: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prf(tp: int, n_read: int, n_expected: int) -> tuple[float, float, float]:
    if n_read == 0 and n_expected == 0:
        return 1.0, 1.0, 1.0
    if n_read == 0 or n_expected == 0:
        return 0.0, 0.0, 0.0
    p, r = tp / n_read, tp / n_expected
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def text_scores(read: str, expected: str) -> TextScore:
    """Word-level precision/recall/F1, exact match, edit distance and CER of a reading (both normalised)."""
    read_n, expected_n = normalize_text(read), normalize_text(expected)
    read_w, expected_w = read_n.split(), expected_n.split()
    tp = sum((Counter(read_w) & Counter(expected_w)).values())
    p, r, f1 = _prf(tp, len(read_w), len(expected_w))
    distance = int(Levenshtein.distance(read_n, expected_n))
    return TextScore(exact=read_n == expected_n, precision=p, recall=r, f1=f1,
                     cer=distance / max(1, len(expected_n)), edit_distance=distance)


# ----------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------

ImageLike = Image.Image | np.ndarray
_RANGE_TOL = 1e-3


def to_float_image(image: ImageLike) -> np.ndarray:
    """A float64 array in [0, 1], shape (H, W) or (H, W, C).

    uint8 is divided by 255 and uint16 by 65535; bool becomes 0/1; float arrays must already be in [0, 1]
    (values within 1e-3 outside are clipped, others raise). Other integer dtypes raise: their range is
    ambiguous (0-255? 0-65535?).
    """
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB", "RGBA", "I;16", "F"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        arr = np.asarray(image, dtype=np.float64) if image.mode == "F" else np.asarray(image)
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise TypeError(f"Expected a PIL image or numpy array, but got {type(image).__name__}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"Expected an image of shape (H, W) or (H, W, C), but got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if arr.dtype.kind == "f":
        out = arr.astype(np.float64)
        lo, hi = (float(np.nanmin(out)), float(np.nanmax(out))) if out.size else (0.0, 0.0)
        if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
            raise ValueError(f"Expected float image values in [0, 1], but got range [{lo:g}, {hi:g}]")
        return np.clip(out, 0.0, 1.0)
    raise ValueError(f"Expected a uint8, uint16, bool or float image, but got dtype {arr.dtype}")


def _pair(a: ImageLike, b: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    fa, fb = to_float_image(a), to_float_image(b)
    if fa.shape != fb.shape:
        raise ValueError(f"Expected images of the same shape, but got {fa.shape} and {fb.shape}")
    return fa, fb


def _mse(fa: np.ndarray, fb: np.ndarray) -> float:
    return float(np.mean((fa - fb) ** 2))


def _psnr(err: float) -> float:
    return PSNR_MAX if err == 0.0 else min(PSNR_MAX, float(10.0 * math.log10(1.0 / err)))


def _ssim(fa: np.ndarray, fb: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    min_side = min(fa.shape[:2])
    if min_side < 3:
        raise ValueError(f"Expected images at least 3x3 px for SSIM, but got shape {fa.shape}")
    win = min(7, min_side if min_side % 2 == 1 else min_side - 1)
    channel_axis = -1 if fa.ndim == 3 else None
    return float(structural_similarity(fa, fb, data_range=1.0, channel_axis=channel_axis, win_size=win))


def mse(a: ImageLike, b: ImageLike) -> float:
    """Mean squared error on [0, 1] floats."""
    return _mse(*_pair(a, b))


def psnr(a: ImageLike, b: ImageLike) -> float:
    """PSNR in dB on [0, 1] floats; :data:`PSNR_MAX` (100 dB) for identical images and as the cap."""
    return _psnr(_mse(*_pair(a, b)))


def ssim(a: ImageLike, b: ImageLike) -> float:
    """Structural similarity (scikit-image); raises ValueError for images under 3 px on a side."""
    return _ssim(*_pair(a, b))


@dataclass(frozen=True)
class ImageScore:
    """How much of a reference image an image kept."""

    mse: float
    ssim: float
    psnr: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def image_scores(a: ImageLike, b: ImageLike) -> ImageScore:
    """MSE, SSIM and PSNR of one image pair (converted to floats once)."""
    fa, fb = _pair(a, b)
    err = _mse(fa, fb)
    return ImageScore(mse=err, ssim=_ssim(fa, fb), psnr=_psnr(err))


# ----------------------------------------------------------------------------------------------------------
# Colours
# ----------------------------------------------------------------------------------------------------------


def colours_kept(profile: Any, source_image: Any, image: Any) -> tuple[bool | None, bool | None]:
    """(background kept, text colour kept) of ``image`` against ``source_image``, read by the model profile's
    pixel reader (``profile.colours``); ``None`` where the model has no reader or a colour cannot be read."""
    read = getattr(profile, "colours", None)
    if read is None:
        return None, None
    source, edited = read(source_image), read(image)
    kept = [None if s is None or e is None else s == e for s, e in zip(source, edited, strict=True)]
    return kept[0], kept[1]
