"""Improved precision and recall of generated images (Kynkäänniemi et al., NeurIPS 2019), plus the features.

Why: a localized LoRA should change *only* the text. Precision and recall between images of the base model
and of the tuned model, on features that ignore the letters, say whether the rest of the picture stayed in
the same distribution (precision: tuned samples look like base samples; recall: the tuned model still covers
what the base model produced).

The metric: each reference feature vector gets a hypersphere whose radius is the distance to its k-th nearest
neighbour among the reference set; the union of those spheres estimates the reference manifold. *Precision* is
the fraction of the evaluated set inside the reference manifold; *recall* the fraction of the reference set
inside the evaluated set's manifold. Identical sets score 1/1, far-apart sets 0/0.

Features:
* :func:`colour_histogram_features` -- a joint RGB histogram: text-free for the embedded model's flat signs
  (the glyph shapes do not matter, only how much of which colour).
* :func:`pixel_features` -- a heavily blurred thumbnail: layout and colour without legible letters.
* :func:`clip_features` -- CLIP image embeddings, when the user has CLIP weights on disk (never downloaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from textloc.errors import InputError


@dataclass(frozen=True)
class PrecisionRecall:
    """Improved precision/recall of ``evaluated`` against ``reference`` features."""

    precision: float
    recall: float
    k: int
    n_reference: int
    n_evaluated: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_matrix(name: str, features: Any) -> torch.Tensor:
    matrix = torch.as_tensor(np.asarray(features, dtype=np.float64))
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise InputError(f"Expected {name} features as a non-empty (n, d) array, but got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise InputError(f"Expected finite {name} features, but got NaN or inf")
    return matrix


def knn_radii(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance of every row to its k-th nearest *other* row (the hypersphere radii of the manifold)."""
    radii = []
    for start in range(0, features.shape[0], chunk):
        distances = torch.cdist(features[start : start + chunk], features)
        # the k+1-th smallest distance skips the point itself (distance 0)
        radii.append(distances.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def manifold_coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor,
                      chunk: int = 1024) -> float:
    """Fraction of ``queries`` inside at least one hypersphere ``(manifold[i], radii[i])`` (boundary included)."""
    inside = 0
    for start in range(0, queries.shape[0], chunk):
        distances = torch.cdist(queries[start : start + chunk], manifold)
        inside += int((distances <= radii[None, :] * (1 + 1e-9) + 1e-12).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(reference: Any, evaluated: Any, k: int = 3) -> PrecisionRecall:
    r"""Improved precision and recall (Kynkäänniemi et al. 2019) of ``evaluated`` against ``reference``.

    Args:
        reference: (n, d) features of the reference images (e.g. the base model's samples).
        evaluated: (m, d) features of the images to judge (e.g. the fine-tuned model's samples).
        k: neighbourhood size of the manifold estimate (the paper uses 3); needs ``k < n`` and ``k < m``.
    """
    ref = _as_matrix("reference", reference)
    ev = _as_matrix("evaluated", evaluated)
    if ref.shape[1] != ev.shape[1]:
        raise InputError(f"Expected features of equal width, but got {ref.shape[1]} and {ev.shape[1]}")
    if not 1 <= k < min(ref.shape[0], ev.shape[0]):
        raise InputError(
            f"Expected 1 <= k < the size of each set ({ref.shape[0]}, {ev.shape[0]}), but got k={k}"
        )
    precision = manifold_coverage(ref, knn_radii(ref, k), ev)
    recall = manifold_coverage(ev, knn_radii(ev, k), ref)
    return PrecisionRecall(precision, recall, k, ref.shape[0], ev.shape[0])


# ----------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------


def _rgb_arrays(images: Sequence[Image.Image]) -> list[np.ndarray]:
    if not images:
        raise InputError("Expected at least one image, but got none")
    return [np.asarray(image.convert("RGB"), dtype=np.float64) for image in images]


def colour_histogram_features(images: Sequence[Image.Image], bins: int = 4) -> np.ndarray:
    """Joint RGB histograms (``bins``\\ :sup:`3` values per image, summing to 1): what colours, not which letters."""
    rows = []
    for array in _rgb_arrays(images):
        quantised = np.minimum((array / 256.0 * bins).astype(int), bins - 1).reshape(-1, 3)
        codes = (quantised[:, 0] * bins + quantised[:, 1]) * bins + quantised[:, 2]
        rows.append(np.bincount(codes, minlength=bins**3) / len(codes))
    return np.stack(rows)


def pixel_features(images: Sequence[Image.Image], size: tuple[int, int] = (3, 8)) -> np.ndarray:
    """Box-filtered ``size`` (height, width) thumbnails in [0, 1], flattened: coarse layout without letters."""
    height, width = size
    rows = [np.asarray(image.convert("RGB").resize((width, height), Image.BOX), dtype=np.float64).ravel() / 255.0
            for image in images]
    if not rows:
        raise InputError("Expected at least one image, but got none")
    return np.stack(rows)


def text_free_features(images: Sequence[Image.Image]) -> np.ndarray:
    """Colour histogram and blurred thumbnail side by side: the default text-free feature of the embedded model."""
    return np.concatenate([colour_histogram_features(images), pixel_features(images)], axis=1)


def clip_features(images: Sequence[Image.Image], clip_path: str | Path, *, batch_size: int = 32,
                  device: str | None = None) -> np.ndarray:
    r"""L2-normalised CLIP image embeddings from a local CLIP folder (``CLIPModel`` + image-processor config).

    Args:
        clip_path: a folder written by ``save_pretrained`` (e.g. a local copy of ``openai/clip-vit-base-patch32``);
            nothing is downloaded.
    """
    from textloc.eval.metrics import load_clip, projected_features  # the one CLIP loader (local folders only)

    model, processor = load_clip(str(Path(clip_path).expanduser()), text=False)
    if device:  # a copy: the cached model stays where it was loaded
        import copy

        model = copy.deepcopy(model).to(device)
    rows = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = [image.convert("RGB") for image in images[start : start + batch_size]]
            pixels = processor(images=chunk, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
            embeds = projected_features(model.get_image_features(pixel_values=pixels))
            rows.append(torch.nn.functional.normalize(embeds.float(), dim=-1).cpu().numpy())
    return np.concatenate(rows).astype(np.float64)


FEATURES = ("text-free", "colour", "pixel", "clip")


def image_features(images: Sequence[Image.Image], kind: str = "text-free", clip_path: str | Path | None = None
                   ) -> np.ndarray:
    """Features of ``kind`` (``FEATURES``); ``clip`` needs ``clip_path``."""
    if kind == "text-free":
        return text_free_features(images)
    if kind == "colour":
        return colour_histogram_features(images)
    if kind == "pixel":
        return pixel_features(images)
    if kind == "clip":
        if clip_path is None:
            raise InputError("Expected --clip PATH (local CLIP weights) for clip features, but got none")
        return clip_features(images, clip_path)
    raise InputError(f"Expected features in {FEATURES}, but got {kind!r}")
