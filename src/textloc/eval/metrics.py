"""Metrics: did the image render the target text, and how much of the rest did an edit keep?

All OCR comparisons go through one normalisation, :func:`normalize_text`:

1. typographic apostrophes (``’``, ``‘``, ...) mapped to ASCII ``'``, then Unicode NFKC;
2. upper case (rendered text case is often ambiguous at small sizes, and the paper's prompts
   are mostly upper case);
3. apostrophes are *deleted* (``DON'T`` -> ``DONT``): they are tiny, OCR often misses them, and a
   missed apostrophe leaves no gap;
4. every other character that is not a letter or digit (hyphens included) becomes a space
   (``E-MAIL`` -> ``E MAIL``, ``"HELLO,WORLD!"`` -> ``HELLO WORLD``): a missed hyphen or comma
   usually leaves a visible gap, which readers turn into a space;
5. whitespace is collapsed and stripped.

Text metrics (:func:`ocr_word_scores`, on normalised text)
    * word precision / recall / F1 over the *multiset* of words: ``tp`` is the size of the multiset
      intersection of predicted and target words (``"GO GO"`` vs ``"GO"`` has tp = 1);
      ``precision = tp / #pred``, ``recall = tp / #target``, ``F1`` their harmonic mean. Both
      empty: all 1.0 (nothing to read, nothing read); exactly one empty: all 0.0.
    * ``exact``: normalised strings are equal.
    * ``edit_distance``: Levenshtein distance between the normalised strings (rapidfuzz).
    * ``cer``: ``edit_distance / max(1, len(normalised target))``; can exceed 1.
    :func:`aggregate_word_scores` reports means over images and micro averages from summed counts.

Image-preservation metrics (:func:`mse`, :func:`psnr`, :func:`ssim`)
    Computed on float64 images in [0, 1]. PIL images and uint8/uint16 arrays are converted by
    dividing by 255/65535 *before* any subtraction. ``psnr = 10 log10(data_range^2 / mse)``,
    ``inf`` for identical images. ``ssim`` is scikit-image's ``structural_similarity`` with
    ``data_range=1``, the colour axis as ``channel_axis``, and a 7x7 window shrunk to the largest
    odd size that fits for images smaller than 7 px.

Prompt alignment (:func:`clip_t_score`)
    CLIP-T = ``100 * max(0, cos(image embedding, text embedding))``, as torchmetrics' CLIPScore.

Differences from the reference implementation
    * Its "word" F1 was computed over *characters* (strings iterated as sequences of letters), so a
      wrong word sharing letters with the target scored well; ours is over whole words.
    * Its MSE subtracted uint8 arrays, which wraps around (``10 - 250 == 16`` in uint8), and so
      under-reported large differences; we convert to float first.
"""

from __future__ import annotations

import functools
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from rapidfuzz.distance import Levenshtein

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "WordScores",
    "normalize_text",
    "words",
    "ocr_word_scores",
    "aggregate_word_scores",
    "to_float_image",
    "mse",
    "psnr",
    "ssim",
    "preservation_scores",
    "clip_t_score",
    "load_clip",
]

# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------

_APOSTROPHES = "'\u2018\u2019\u201b\u02bc\u2032`\u00b4"
_TYPOGRAPHIC = str.maketrans({c: "'" for c in _APOSTROPHES[1:]})
_WHITESPACE = re.compile(r"\s+")


def normalize_text(s: str) -> str:
    """Canonical form for comparing OCR output with a target (see the module docstring).

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
class WordScores:
    """OCR-vs-target scores for one image; counts are kept so that corpora can be micro-averaged."""

    precision: float
    recall: float
    f1: float
    exact: bool
    edit_distance: int
    cer: float
    tp: int
    n_pred: int
    n_target: int
    target_chars: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prf(tp: int, n_pred: int, n_target: int) -> tuple[float, float, float]:
    """Precision/recall/F1 with the explicit empty-case convention of the module docstring."""
    if n_pred == 0 and n_target == 0:
        return 1.0, 1.0, 1.0
    if n_pred == 0 or n_target == 0:
        return 0.0, 0.0, 0.0
    p, r = tp / n_pred, tp / n_target
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f1


def ocr_word_scores(predicted: str, target: str) -> WordScores:
    """Word-level precision/recall/F1, exact match, edit distance and CER of an OCR reading.

    Both strings are normalised with :func:`normalize_text` first.
    """
    pred_n, target_n = normalize_text(predicted), normalize_text(target)
    pred_w, target_w = pred_n.split(), target_n.split()
    tp = sum((Counter(pred_w) & Counter(target_w)).values())
    p, r, f1 = _prf(tp, len(pred_w), len(target_w))
    dist = int(Levenshtein.distance(pred_n, target_n))
    return WordScores(
        precision=p,
        recall=r,
        f1=f1,
        exact=pred_n == target_n,
        edit_distance=dist,
        cer=dist / max(1, len(target_n)),
        tp=tp,
        n_pred=len(pred_w),
        n_target=len(target_w),
        target_chars=len(target_n),
    )


def aggregate_word_scores(scores: Sequence[WordScores]) -> dict[str, float]:
    """Means over images (macro) and micro averages from summed counts.

    Keys: ``n``; ``precision``, ``recall``, ``f1``, ``exact`` (= exact-match rate),
    ``edit_distance``, ``cer`` (macro means); ``micro_precision``, ``micro_recall``, ``micro_f1``
    (from summed tp / n_pred / n_target, same empty-case convention); ``micro_cer`` (summed edit
    distance / summed ``max(1, target length)``). With no scores every value but ``n`` is NaN.
    """
    n = len(scores)
    keys = ["precision", "recall", "f1", "exact", "edit_distance", "cer"]
    if n == 0:
        out = dict.fromkeys(keys + ["micro_precision", "micro_recall", "micro_f1", "micro_cer"], math.nan)
        return {"n": 0.0, **out}
    out = {"n": float(n)}
    for k in keys:
        out[k] = float(np.mean([float(getattr(s, k)) for s in scores]))
    tp = sum(s.tp for s in scores)
    n_pred = sum(s.n_pred for s in scores)
    n_target = sum(s.n_target for s in scores)
    out["micro_precision"], out["micro_recall"], out["micro_f1"] = _prf(tp, n_pred, n_target)
    out["micro_cer"] = sum(s.edit_distance for s in scores) / sum(max(1, s.target_chars) for s in scores)
    return out


# --------------------------------------------------------------------------------------------------
# Image preservation
# --------------------------------------------------------------------------------------------------

ImageLike = Image.Image | np.ndarray
_RANGE_TOL = 1e-3


def to_float_image(image: ImageLike) -> np.ndarray:
    """Convert to a float64 array in [0, 1], shape (H, W) or (H, W, C).

    uint8 is divided by 255 and uint16 by 65535; bool becomes 0/1; float arrays must already be in
    [0, 1] (values within 1e-3 outside are clipped, others raise). Other integer dtypes raise,
    because their range is ambiguous (0-255? 0-65535?).
    """
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB", "RGBA", "I;16", "F"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        if image.mode == "F":
            arr = np.asarray(image, dtype=np.float64)
        else:
            arr = np.asarray(image)
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise TypeError(f"Expected a PIL image or numpy array but got {type(image).__name__}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"Expected an image of shape (H, W) or (H, W, C) but got {arr.shape}")
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
            raise ValueError(f"Expected float image values in [0, 1] but got range [{lo:g}, {hi:g}]")
        return np.clip(out, 0.0, 1.0)
    raise ValueError(f"Expected a uint8, uint16, bool or float image but got dtype {arr.dtype}")


def _pair(a: ImageLike, b: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    fa, fb = to_float_image(a), to_float_image(b)
    if fa.shape != fb.shape:
        raise ValueError(f"Expected images of the same shape but got {fa.shape} and {fb.shape}")
    return fa, fb


def mse(a: ImageLike, b: ImageLike) -> float:
    """Mean squared error on [0, 1] floats (black vs white = 1.0)."""
    fa, fb = _pair(a, b)
    return float(np.mean((fa - fb) ** 2))


def psnr(a: ImageLike, b: ImageLike, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; ``math.inf`` for identical images."""
    err = mse(a, b)
    if err == 0.0:
        return math.inf
    return float(10.0 * math.log10(data_range**2 / err))


def ssim(a: ImageLike, b: ImageLike, data_range: float = 1.0) -> float:
    """Structural similarity (scikit-image), 7x7 window or the largest odd window that fits.

    Raises ValueError for images under 3 px on a side, where SSIM's local statistics are undefined.
    """
    from skimage.metrics import structural_similarity

    fa, fb = _pair(a, b)
    min_side = min(fa.shape[:2])
    if min_side < 3:
        raise ValueError(f"Expected images at least 3x3 px for SSIM but got shape {fa.shape}")
    win = min(7, min_side if min_side % 2 == 1 else min_side - 1)
    channel_axis = -1 if fa.ndim == 3 else None
    return float(
        structural_similarity(fa, fb, data_range=data_range, channel_axis=channel_axis, win_size=win)
    )


def preservation_scores(a: ImageLike, b: ImageLike) -> dict[str, float]:
    """``{"mse", "psnr", "ssim"}`` of one image pair, for reports."""
    return {"mse": mse(a, b), "psnr": psnr(a, b), "ssim": ssim(a, b)}


# --------------------------------------------------------------------------------------------------
# CLIP-T
# --------------------------------------------------------------------------------------------------


def _features(out: Any) -> torch.Tensor:
    """transformers <5 returns the projected features; >=5 a ModelOutput whose pooler_output is them."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(
            f"Expected a tensor or a model output with pooler_output but got {type(out).__name__}"
        )
    return pooled


@functools.lru_cache(maxsize=2)
def load_clip(path: str) -> tuple[Any, Any]:
    """``(CLIPModel, CLIPProcessor)`` from a local folder (never the hub), cached per path, in eval mode."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    return model, processor


def clip_t_score(
    images: Sequence[Image.Image],
    texts: Sequence[str],
    model: Any,
    processor: Any = None,
    *,
    batch_size: int = 32,
) -> list[float]:
    """CLIP-T per (image, text) pair: ``100 * max(0, cosine(image_emb, text_emb))``.

    Works with any transformers ``CLIPModel`` (or a model with the same ``get_image_features`` /
    ``get_text_features``) and a processor that accepts ``images=`` and ``text=``. ``model`` may
    also be a local folder path, with ``processor=None``: both are then loaded from it
    (:func:`load_clip`). Texts longer than the model's context are truncated, as in torchmetrics'
    CLIPScore. Runs on the model's device and dtype, in inference mode.
    """
    import torch

    if isinstance(model, str | os.PathLike):
        if processor is not None:
            raise ValueError("Expected processor=None when model is a path (both are loaded from it)")
        model, processor = load_clip(os.fspath(model))
    if processor is None:
        raise ValueError("Expected a processor for the CLIP model but got None")
    if len(images) != len(texts):
        raise ValueError(
            f"Expected as many texts as images but got {len(texts)} texts and {len(images)} images"
        )
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    max_len = getattr(
        getattr(getattr(model, "config", None), "text_config", None), "max_position_embeddings", 77
    )
    scores: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            imgs = [im.convert("RGB") for im in images[start : start + batch_size]]
            txts = list(texts[start : start + batch_size])
            pix = processor(images=imgs, return_tensors="pt")["pixel_values"].to(device=device, dtype=dtype)
            tok = processor(text=txts, return_tensors="pt", padding=True, truncation=True, max_length=max_len)
            img_emb = _features(model.get_image_features(pixel_values=pix)).float()
            txt_emb = _features(
                model.get_text_features(
                    input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
                )
            ).float()
            cos = torch.nn.functional.cosine_similarity(img_emb, txt_emb, dim=-1)
            scores.extend((100.0 * cos.clamp(min=0.0)).tolist())
    return scores
