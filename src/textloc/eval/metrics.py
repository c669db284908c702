"""CLIP-T, and the CLIP loader every feature uses; the text and image scores live in :mod:`textloc.eval.scoring`.

CLIP-T (:func:`clip_t_score`) = ``100 * max(0, cos(image embedding, text embedding))``, as torchmetrics'
CLIPScore. CLIP weights are loaded in one place, :func:`load_clip`, from a local folder only (nothing is
downloaded); ``eval.fidelity`` uses it for image features.

The names ``normalize_text``, ``words``, ``ocr_word_scores`` (= ``scoring.text_scores``), ``mse``, ``psnr``,
``ssim`` and ``to_float_image`` are re-exported from :mod:`textloc.eval.scoring` for callers not yet switched.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from textloc.errors import InputError
from textloc.eval.scoring import mse, normalize_text, psnr, ssim, to_float_image, words
from textloc.eval.scoring import text_scores as ocr_word_scores

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "normalize_text",
    "words",
    "ocr_word_scores",
    "to_float_image",
    "mse",
    "psnr",
    "ssim",
    "clip_t_score",
    "load_clip",
    "projected_features",
]

# --------------------------------------------------------------------------------------------------
# CLIP-T
# --------------------------------------------------------------------------------------------------


def projected_features(out: Any) -> torch.Tensor:
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
def load_clip(path: str | os.PathLike[str], *, text: bool = True) -> tuple[Any, Any]:
    """``(CLIPModel in eval mode, processor)`` from a local folder (never the hub), cached per path.

    ``text=True`` loads a ``CLIPProcessor`` (tokenizer + image processor, for CLIP-T); ``text=False`` only the
    image processor (image features need no tokenizer files). A folder that does not hold a CLIP model is an
    ``InputError`` in one line.
    """
    from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise InputError(f"Expected a local CLIP model folder with config.json, but got {folder}")
    try:
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
        processor = (CLIPProcessor if text else AutoImageProcessor).from_pretrained(str(folder),
                                                                                    local_files_only=True)
    except (OSError, ValueError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise InputError(f"Could not load CLIP from {folder}: {first}") from None
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
            img_emb = projected_features(model.get_image_features(pixel_values=pix)).float()
            txt_emb = projected_features(
                model.get_text_features(
                    input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
                )
            ).float()
            cos = torch.nn.functional.cosine_similarity(img_emb, txt_emb, dim=-1)
            scores.extend((100.0 * cos.clamp(min=0.0)).tolist())
    return scores
