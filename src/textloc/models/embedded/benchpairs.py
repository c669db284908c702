"""Edit-benchmark pairs of the embedded model: its own world's prompts with new texts, seen and never seen.

They live with the model (not with the editing application) because only the model's package knows its
renderer, its training words and its prompt grammar; ``textloc bench edit`` reaches them through the model's
profile (``ModelProfile.edit_pairs``), by benchmark name.
"""

from __future__ import annotations

import random
from dataclasses import replace

from textloc.data.pairs import PromptPair
from textloc.errors import InputError

#: Edit benchmarks of the embedded model: fully specified prompts, and prompts that name only the text.
BENCHMARKS = ("embedded", "embedded-open")
#: Pairs drawn when the user gives no ``--n``.
DEFAULT_N = 100


def bench_pairs(n: int, seed: int, open_prompts: bool = False) -> list[PromptPair]:
    """Embedded prompts with new texts: seen words and never-seen strings.

    Even items take a training word as the target ("seen"), odd items a random string from the reserved class
    that training never draws ("unseen"); the source text is always a training word. Keys say the group.

    ``open_prompts=False`` (benchmark ``embedded``): fully specified prompts (``describe(spec)``); colours and
    font are fixed by the words, so regenerating with the target prompt already keeps them. ``True``
    (``embedded-open``): the prompts name only the text (``a board that reads "CAT"``), as a user who liked
    what the seed drew would write them; colours and font then come from the noise *and* the text, which is
    the case editing exists for. The target prompt is the same template with the new text: ``make_prompt``
    draws its wording from its own seeded generator, independently of the text.
    """
    from textloc.models.embedded import renderer
    from textloc.models.embedded.tokenizer import describe, make_prompt
    from textloc.models.embedded.words import TRAIN_WORDS

    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        spec = renderer.random_spec(rng, rng.choice(TRAIN_WORDS))
        seen = i % 2 == 0
        while True:
            target = rng.choice(TRAIN_WORDS) if seen else renderer.random_string(rng)
            if target != spec.text and (seen or renderer.is_reserved(target)):
                break
        if open_prompts:
            wording = seed * 100_003 + i
            source = make_prompt(spec, random.Random(wording), p_attribute=0.0)
            target_prompt = make_prompt(replace(spec, text=target), random.Random(wording), p_attribute=0.0)
        else:
            source, target_prompt = describe(spec), describe(replace(spec, text=target))
        pairs.append(PromptPair(f"{'seen' if seen else 'unseen'}-{i:04d}", source, target_prompt, spec.text, target,
                                seed * 100_003 + i))
    return pairs


def edit_pairs(benchmark: str, n: int | None, seed: int) -> list[PromptPair]:
    """The pairs of ``benchmark`` (one of ``BENCHMARKS``); ``n`` defaults to ``DEFAULT_N``."""
    if benchmark not in BENCHMARKS:
        raise InputError(f"Expected an embedded edit benchmark in {list(BENCHMARKS)}, but got {benchmark!r}")
    return bench_pairs(DEFAULT_N if n is None else n, seed, open_prompts=benchmark == "embedded-open")
