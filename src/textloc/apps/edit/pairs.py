"""Edit-benchmark pairs: a model's own benchmarks (through its profile) or GlyphControl-style prompt files.

A shipped model names its edit benchmarks in its profile (``ModelProfile.edit_benchmarks``, e.g. ``embedded``
and ``embedded-open``) and makes their pairs itself; everything else is a prompt set whose quoted words are
swapped between prompts (``textloc.data.pairs.text_pairs``). Draws are seeded prefixes of one shuffle, so a
larger ``--n`` gives a superset and a resumed benchmark keeps every record it has.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textloc.data.pairs import PromptPair
from textloc.errors import InputError


def model_benchmark(benchmark: str) -> Any:
    """The profile that owns ``benchmark`` as one of its edit benchmarks, or ``None``."""
    from textloc.models.profiles import profiles

    for profile in profiles():
        if benchmark in profile.edit_benchmarks and profile.edit_pairs is not None:
            return profile
    return None


def benchmark_names() -> list[str]:
    """Every model's edit-benchmark names (for help and errors)."""
    from textloc.models.profiles import profiles

    return [name for profile in profiles() for name in profile.edit_benchmarks]


def glyph_files(benchmark: str, split: str = "test") -> list[Path]:
    """The prompt files of ``benchmark``: SimpleBench / CreativeBench (by ``split``) or a user file or folder."""
    from textloc.data.pairs import BENCHMARKS, benchmark_files

    if benchmark in BENCHMARKS:
        if split not in ("test", "validation", "all"):
            raise InputError(f"Expected --split in test, validation, all, but got {split!r}")
        splits = ("validation", "test") if split == "all" else (split,)
        return [f for s in splits for f in benchmark_files(benchmark, s)]
    path = Path(benchmark)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise InputError(f"Expected prompt files (*.txt) in {path}, but found none")
        return files
    if path.is_file():
        return [path]
    names = ", ".join([*benchmark_names(), *BENCHMARKS])
    raise InputError(f"Expected --benchmark {names} or a prompt file/folder, but got {benchmark!r}")


def glyph_bench_pairs(benchmark: str, n: int | None, seed: int, split: str = "test") -> list[PromptPair]:
    """GlyphControl prompts (SimpleBench / CreativeBench, or a user file or folder of ``*.txt``), paired.

    Each prompt's quoted word is swapped for the word of another prompt of the same set (seeded
    derangement, ``data.pairs.text_pairs``); ``n`` pairs are then drawn at random (``sample_pairs``) so every
    frequency bucket is represented. ``split``: ``test`` (the three rarer buckets; the top-1000 bucket is
    localization's validation split), ``validation`` or ``all``.
    """
    from textloc.data.pairs import read_prompts, text_pairs

    prompts = [p for f in glyph_files(benchmark, split) for p in read_prompts(f)]
    return sample_pairs(text_pairs(prompts, None, seed), n, seed)


def sample_pairs(pairs: Sequence[PromptPair], n: int | None, seed: int) -> list[PromptPair]:
    """``n`` pairs drawn at random (seeded), in file order; all if ``n`` is None.

    The draw is a prefix of one seeded shuffle, so a larger ``n`` gives a superset: a resumed benchmark run
    with more pairs keeps every record it already has.
    """
    if n is None or n >= len(pairs):
        return list(pairs)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    return [pairs[i] for i in sorted(order[:n])]


def renderable_pairs(pipe: Any, pairs: Sequence[PromptPair]) -> tuple[list[PromptPair], int]:
    """The pairs whose target text ``pipe`` can render (``check_new_text``), and how many were dropped."""
    from textloc.apps.edit.edit import check_new_text

    kept = []
    for pair in pairs:
        try:
            check_new_text(pipe, pair.target_value)
        except InputError:
            continue
        kept.append(pair)
    return kept, len(pairs) - len(kept)


def bench_pairs(benchmark: str, n: int | None, seed: int, split: str = "test", pipe: Any = None) -> list[PromptPair]:
    """Edit pairs of a benchmark; with ``pipe``, only pairs whose target it can render are drawn from.

    A model's own benchmark (``model_benchmark``) makes ``n`` pairs (its default when ``None``)."""
    profile = model_benchmark(benchmark)
    if profile is not None:
        if n is not None and n < 1:
            raise InputError(f"Expected --n >= 1, but got {n}")
        return list(profile.edit_pairs(benchmark, n, seed))
    pairs = glyph_bench_pairs(benchmark, None, seed, split)
    if pipe is not None:
        pairs, _ = renderable_pairs(pipe, pairs)
    return sample_pairs(pairs, n, seed)


def bench_inputs(benchmark: str, split: str = "test") -> dict[str, Path]:
    """The files whose *content* a benchmark run depends on (its prompt files; none for a model's benchmark)."""
    if model_benchmark(benchmark) is not None:
        return {}
    return {f"prompts/{i:02d}-{path.name}": path for i, path in enumerate(glyph_files(benchmark, split))}
