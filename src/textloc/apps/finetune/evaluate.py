"""Scoring a tuned pipeline on held-out cases: the same prompts and noise for base and tuned models.

Why apart from the benchmark: generating with fixed-seed chunks and scoring by the shared rules
(``eval.scoring.text_scores`` for OCR readings, the model profile's pixel reader for colours) is what any
comparison of adapters needs, with or without the benchmark's arms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image


def generate_images(pipe: Any, prompts: Sequence[str], *, seed: int = 0, steps: int = 20, guidance_scale: float = 3.0,
                    batch_size: int = 25) -> list[Image.Image]:
    """Images for ``prompts`` in fixed-seed chunks, so base and tuned models are compared on the same noise."""
    pipe.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        generator = torch.Generator().manual_seed(seed + start)
        images += pipe(list(prompts[start : start + batch_size]), num_inference_steps=steps, generator=generator,
                       guidance_scale=guidance_scale).images
    return images


def score_signs(cases: Sequence[Any], images: Sequence[Image.Image], reader: Any, profile: Any) -> dict[str, Any]:
    """Mean exact match / CER of the OCR reading against each case's text (``eval.scoring.text_scores``) and
    background / text-colour accuracy read by ``profile.colours`` (``None`` where the model has no reader)."""
    from textloc.eval.scoring import text_scores

    texts = reader.read(list(images))
    exact = cer = background = text_colour = 0.0
    for case, image, text in zip(cases, images, texts, strict=True):
        score = text_scores(text, case.text)
        exact += score.exact
        cer += score.cer
        if profile.colours is not None:
            bg, fg = profile.colours(image)
            background += bg == case.background
            text_colour += fg == case.text_colour
    n = max(1, len(cases))
    has_colours = profile.colours is not None
    return {"exact": exact / n, "cer": cer / n, "background_acc": background / n if has_colours else None,
            "text_colour_acc": text_colour / n if has_colours else None}
