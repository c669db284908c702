"""Prompt pairs for the embedded model that differ in exactly one attribute, with ground truth.

``text``: the quoted string differs (targets: seen words or never-seen strings); ``style``: the font;
``colour``: the text colour; ``background``: the background colour. Every other attribute is written into
both prompts, so the pair's only difference is the one under study.
"""

from __future__ import annotations

import random
from dataclasses import replace

from textloc.data.pairs import PromptPair
from textloc.errors import InputError
from textloc.models.embedded import renderer
from textloc.models.embedded.tokenizer import describe
from textloc.models.embedded.words import TRAIN_WORDS

ATTRIBUTES = ("text", "style", "colour", "background")


def _other_text(rng: random.Random, current: str) -> str:
    while True:
        text = rng.choice(TRAIN_WORDS) if rng.random() < 0.5 else renderer.random_string(rng)
        if text != current and len(text) == len(current):
            return text


def attribute_pairs(attribute: str, n: int, seed: int) -> list[PromptPair]:
    """``n`` pairs for ``attribute``; the source text is a seen word or a random string (3-6 letters)."""
    if attribute not in ATTRIBUTES:
        raise InputError(f"Expected --attribute in {list(ATTRIBUTES)}, but got {attribute!r}")
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        text = rng.choice(TRAIN_WORDS) if rng.random() < 0.5 else renderer.random_string(rng)
        spec = renderer.random_spec(rng, text)
        if attribute == "text":
            target = replace(spec, text=_other_text(rng, spec.text))
            values = (spec.text, target.text)
        elif attribute == "style":
            target = replace(spec, font=rng.choice([f for f in renderer.FONTS if f != spec.font]))
            values = (spec.font, target.font)
        elif attribute == "colour":
            options = [c for c in renderer.legible_text_colours(spec.background) if c != spec.text_colour]
            target = replace(spec, text_colour=rng.choice(options))
            values = (spec.text_colour, target.text_colour)
        else:
            options = [c for c in renderer.COLOURS if c != spec.background and spec.text_colour in
                       renderer.legible_text_colours(c)]
            target = replace(spec, background=rng.choice(options))
            values = (spec.background, target.background)
        pairs.append(PromptPair(f"e{i:04d}", describe(spec), describe(target), *values, seed * 100_003 + i))
    return pairs
