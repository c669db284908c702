"""Pipeline calls of one edit: the same settings and a fresh generator at the same seed for every run.

An edit compares two runs (the source and the patched one) that must differ only in the patch; these helpers
build the shared keyword arguments once and hand each run its own generator, so no run consumes another's
noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from textloc.core.engine import default_steps


def call_kwargs(pipe: Any, seed: int, num_inference_steps: int | None, guidance_scale: float | None,
                extra: dict[str, Any]) -> dict[str, Any]:
    """Pipeline kwargs shared by every run of one edit: float output, a fresh generator at ``seed``."""
    kwargs = dict(extra)
    kwargs["output_type"] = "np"
    kwargs["num_inference_steps"] = num_inference_steps or kwargs.get("num_inference_steps") or default_steps(pipe)
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    kwargs["generator"] = torch.Generator().manual_seed(seed)
    return kwargs


def fresh(kwargs: dict[str, Any], seed: int) -> dict[str, Any]:
    """``kwargs`` with a new generator at ``seed`` (each run starts from the same noise)."""
    return {**kwargs, "generator": torch.Generator().manual_seed(seed)}


def to_pil(array: np.ndarray) -> Image.Image:
    """HWC float image in [0, 1] -> 8-bit PIL, rounded like diffusers' ``numpy_to_pil``."""
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))


def first_image(images: Any) -> np.ndarray:
    """The first image of a pipeline output as float32 HWC."""
    return np.asarray(images[0], dtype=np.float32)
