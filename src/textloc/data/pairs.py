"""Prompt sources and (source, target) prompt pairs.

Benchmarks: GlyphControl's SimpleBench and CreativeBench (MIT). They are *not* copied into textloc; they are
read from ``$TEXTLOC_BENCHMARKS`` or a ``shared/benchmarks/glyphcontrol`` folder next to (or above) the
working directory, or from any file a user passes. Each has four frequency buckets; as in the paper the
top-1000 bucket is the *validation* split (used for localization) and the other three are the *test* split.

A pair keeps the source prompt's template and swaps its quoted text for a different one (a seeded
derangement of the texts in the same file), so only the text differs.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from textloc.data.quotes import Span, spans
from textloc.errors import InputError

BENCHMARKS = ("simplebench", "creativebench")
_BUCKETS = ("top_1000", "1000_10000", "10000_100000", "100000_plus")


@dataclass(frozen=True)
class PromptPair:
    """A source prompt and a target prompt that differ only in one attribute (by default the quoted text)."""

    key: str
    source: str
    target: str
    source_value: str
    target_value: str
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def _first_text(prompt: str) -> Span | None:
    """The prompt's first non-empty quoted span (``textloc.data.quotes``), the text a pair swaps."""
    return next((span for span in spans(prompt) if span.text), None)


def benchmark_root() -> Path:
    """The GlyphControl benchmark folder (``paper/SimpleBench`` …), found without any download."""
    candidates = []
    if os.environ.get("TEXTLOC_BENCHMARKS"):
        candidates.append(Path(os.environ["TEXTLOC_BENCHMARKS"]))
    here = Path.cwd().resolve()
    for parent in (here, *here.parents):
        candidates += [parent / "shared" / "benchmarks" / "glyphcontrol", parent.parent / "shared" / "benchmarks"
                       / "glyphcontrol"]
    for candidate in candidates:
        if (candidate / "paper").is_dir():
            return candidate
    raise InputError(
        "GlyphControl benchmark files not found; set TEXTLOC_BENCHMARKS to the folder holding paper/SimpleBench "
        "or pass a prompt file"
    )


def benchmark_files(name: str, split: str = "validation") -> list[Path]:
    """Prompt files of a benchmark split: ``validation`` = the top-1000 bucket, ``test`` = the other three."""
    if name not in BENCHMARKS:
        raise InputError(f"Unknown benchmark {name!r}; expected one of {list(BENCHMARKS)} or a prompt file")
    folder = benchmark_root() / "paper" / ("SimpleBench" if name == "simplebench" else "CreativeBench")
    files = sorted(folder.glob("*.txt"))
    buckets = {b: [f for f in files if f"unigram_{b}_" in f.name] for b in _BUCKETS}
    chosen = buckets["top_1000"] if split == "validation" else [f for b in _BUCKETS[1:] for f in buckets[b]]
    if not chosen:
        raise InputError(f"No {split} prompt files for {name} in {folder}")
    return chosen


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty lines of a prompt file; every prompt must quote the text to render."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Prompt file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"Prompt file {path} is empty")
    for number, prompt in enumerate(prompts, 1):
        if _first_text(prompt) is None:
            raise InputError(f"{path}:{number}: no quoted text in prompt {prompt!r}")
    return prompts


def derangement(n: int, rng: random.Random) -> list[int]:
    """A random permutation with no fixed point (so every target differs from its source)."""
    if n < 2:
        raise InputError(f"Expected at least 2 prompts to pair, but got {n}")
    while True:
        order = list(range(n))
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return order


def text_pairs(prompts: list[str], n: int | None, seed: int) -> list[PromptPair]:
    """Pair each prompt's quoted text with another prompt's (seeded derangement), keeping the template."""
    rng = random.Random(seed)
    texts = [_first_text(p).text for p in prompts]  # type: ignore[union-attr]
    order = derangement(len(prompts), rng)
    pairs = []
    for i, j in enumerate(order):
        if texts[j] == texts[i]:
            continue
        source = prompts[i]
        span = _first_text(source)
        assert span is not None
        target = source[: span.start] + texts[j] + source[span.end :]
        pairs.append(PromptPair(f"p{i:04d}", source, target, texts[i], texts[j], seed * 100_003 + i))
    return pairs[:n] if n else pairs


def load_pairs(spec: str, n: int | None, seed: int, attribute: str = "text") -> list[PromptPair]:
    """Pairs from ``spec``: ``embedded``, ``simplebench``, ``creativebench`` (validation split) or a file."""
    if spec == "embedded":
        from textloc.models.embedded.pairs import attribute_pairs

        return attribute_pairs(attribute, n or 32, seed)
    if attribute != "text":
        raise InputError(f"--attribute {attribute} needs --prompts embedded (the renderer knows the attributes)")
    if spec in BENCHMARKS:
        prompts = [p for f in benchmark_files(spec, "validation") for p in read_prompts(f)]
    elif spec.lower() in ("glyphcontrol",) or (not Path(spec).exists() and "/" not in spec and "." not in spec):
        raise InputError(f"Unknown benchmark {spec!r}; expected embedded, {', '.join(BENCHMARKS)} or a prompt file")
    else:
        prompts = read_prompts(spec)
    return text_pairs(prompts, n, seed)
