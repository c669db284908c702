"""The embedded U-Net model's profile: the facts applications read instead of checking its class.

Registered on import (``textloc.models.profiles`` imports this module lazily).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textloc.models.embedded import benchpairs, renderer
from textloc.models.embedded.finetuning import TRAINING
from textloc.models.profiles import ModelProfile, RenderLimits, register_profile

#: The tuned first patched step of an edit: step 1 of 20 (``textloc edit-tune`` on 32 validation pairs with the
#: full-score layers 4 + 0 + 1: 32/32 exact at steps 0 and 1, the later step wins ties; docs/editing.md).
EDIT_START_STEP = (1, 20)
LOCALIZATION = Path(__file__).with_name("localized.json")
#: The web app's clickable examples: prompts in the model's training grammar, new text within its limits.
EXAMPLES = (
    ('a red sign with white serif letters that says "CAT"', "DOG"),
    ('an orange sign with black letters that says "HELLO"', "BYE"),
    ('a blue sign with yellow mono letters that says "OPEN"', "SHUT"),
    ('a green sign with white sans letters that says "STOP"', "GO"),
)
LIMITS = RenderLimits(
    max_chars=renderer.MAX_CHARS,
    charset=frozenset(renderer.RENDERABLE),
    case="upper",
    description=f"up to {renderer.MAX_CHARS} letters A-Z and spaces on a {renderer.HEIGHT}x{renderer.WIDTH} px sign",
)


def _matches(pipe: Any) -> bool:
    from textloc.models.embedded.pipeline import EmbeddedTextPipeline

    return isinstance(pipe, EmbeddedTextPipeline)


def _pairs(source: str, n: int | None, seed: int, attribute: str) -> list[Any]:
    from textloc.models.embedded.pairs import attribute_pairs

    return attribute_pairs(attribute, n or 32, seed)


def attribute_reader(attribute: str) -> Any:
    """Pixel readers for attributes beyond text: ``reader(images, pairs) -> values`` (see ``apps.localize``)."""
    from textloc.models.embedded.readers import attribute_reader as make

    return make(attribute)


def colours(image: Any) -> tuple[str | None, str | None]:
    """(background colour, text colour) names read from the pixels of a sign."""
    from textloc.models.embedded import readers

    background = readers.background_colour(image)
    return background, readers.text_colour(image, background)


def rendered_text(prompt: str) -> list[str]:
    """The strings the model renders for ``prompt``, exactly as its tokenizer hands them to the text encoder."""
    from textloc.models.embedded.tokenizer import rendered_strings

    return rendered_strings(prompt)


def encode_image(pipe: Any, pixels: Any) -> Any:
    """Pixel space: the denoiser's "latents" are the image itself in [-1, 1] (image inversion)."""
    return pixels


def _load(directory: Any = None) -> Any:
    from textloc.models.loading import load_embedded

    return load_embedded(directory)


PROFILE = register_profile(
    ModelProfile(
        name="embedded",
        load=_load,
        matches=_matches,
        render_limits=LIMITS,
        ocr_charset="ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        edit_start_step=EDIT_START_STEP,
        localization=LOCALIZATION,
        sizes=((renderer.HEIGHT, renderer.WIDTH),),
        max_steps=1000,
        pair_sources=("embedded",),
        pairs=_pairs,
        attribute_reader=attribute_reader,
        colours=colours,
        rendered_text=rendered_text,
        training=TRAINING,
        edit_benchmarks=benchpairs.BENCHMARKS,
        edit_pairs=benchpairs.edit_pairs,
        examples=EXAMPLES,
        encode_image=encode_image,
    )
)
