"""How a localization run reads and scores one patched image (text by OCR, other attributes by pixel readers).

One home for the per-image record fields, shared by the layer sweep (``sweep.py``) and head localization
(``heads.py``): readers come from the model's profile, scores from :mod:`textloc.eval.scoring`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from textloc.data.pairs import PromptPair
from textloc.errors import InputError
from textloc.eval.scoring import image_scores, normalize_text, text_scores
from textloc.models.profiles import ModelProfile

ATTRIBUTES = ("text", "style", "colour", "background")

Reader = Callable[[Sequence[Any], Sequence[PromptPair]], list[str]]


def score_text(image: Any, read: str, pair: PromptPair, source_image: Any) -> dict[str, Any]:
    """OCR scores of one patched image against the target text and the source text, plus preservation."""
    target = text_scores(read, pair.target_value)
    return {
        "read": normalize_text(read),
        "exact": bool(target.exact),
        "f1": float(target.f1),
        "precision": float(target.precision),
        "recall": float(target.recall),
        "cer": float(target.cer),
        "edit_distance": int(target.edit_distance),
        "source_exact": bool(text_scores(read, pair.source_value).exact),
        **image_scores(image, source_image).as_dict(),
    }


def score_attribute(image: Any, read: str, pair: PromptPair, source_image: Any) -> dict[str, Any]:
    """A pixel reader's value against the target's and the source's attribute value, plus preservation."""
    return {
        "read": read,
        "exact": read == pair.target_value,
        "f1": float(read == pair.target_value),
        "source_exact": read == pair.source_value,
        **image_scores(image, source_image).as_dict(),
    }


def make_reader(attribute: str, ocr: str, profile: ModelProfile) -> Reader:
    """The reader for ``attribute``: the profile's OCR backend for text, its pixel reader for the others."""
    if attribute not in ATTRIBUTES:
        raise InputError(f"Expected --attribute in {', '.join(ATTRIBUTES)}, but got {attribute!r}")
    if attribute == "text":
        backend = profile.reader(ocr)
        return lambda images, _pairs: backend.read(list(images))
    if profile.attribute_reader is None:
        raise InputError(f"--attribute {attribute} needs a model with pixel readers for it (the embedded model); "
                         f"the {profile.name} model has none")
    return profile.attribute_reader(attribute)
