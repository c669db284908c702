"""Text editing: change the text an image renders and keep everything else, by patching only the localized layers.

The method (the paper's editing application). Generate the source image from ``prompt`` with a seed; build the
target prompt by replacing one quoted span with the new text; generate again with the *same* seed while the
target prompt's text embeddings are injected into the localized cross-attention layers (U-Net) or its
text-token K/V patched into the localized joint-attention blocks (MMDiT) from ``start_step`` on. Every other
layer still reads the source prompt, so layout, colours and style stay; the first ``start_step`` steps are
left alone because the coarse layout is decided there.

This module also holds the benchmark harness that compares the method with three baselines under one set of
metrics (``run_edit_bench``): prompt swap (regenerate with the target prompt, same seed), patching *all* text
layers, and Prompt-to-Prompt word swap (``textloc.apps.p2p``). See docs/editing.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from textloc.core.engine import default_steps, generate
from textloc.core.layers import list_text_layers, model_fingerprint
from textloc.core.plan import PatchPlan
from textloc.core.prefix import PrefixCache
from textloc.data.pairs import PromptPair
from textloc.errors import InputError
from textloc.runs.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, save_image_atomic

#: Start step of the embedded model, in a schedule of ``EMBEDDED_STEPS`` steps (scaled for other step counts).
#: Chosen with ``textloc edit-tune`` (``tune_start_step``) on validation pairs: the step maximising the target
#: OCR exact rate while the background colour is kept in >= 90% of edits (ties: the later step, which keeps
#: more of the source). For the full-score layers 4 + 0 + 1: 32/32 exact at steps 0 and 1, 31/32 at 2 and 3
#: (scripts/reproduce_embedded.sh step 4; docs/editing.md).
EMBEDDED_START_STEP = 1
EMBEDDED_STEPS = 20
#: Start fraction for models with neither a preset nor a tuned value: SDXL's published 4 of 50 steps.
GENERIC_START_FRACTION = 4 / 50
#: Methods of the editing benchmark, in table order.
METHODS = ("ours", "prompt-swap", "patch-all", "p2p")
#: Methods that branch off the source run after ``start_step`` and so reuse its prefix (``prefix.PrefixCache``).
PREFIX_METHODS = ("ours", "patch-all")
#: Columns of the grid image (the paper's editing figure).
GRID_METHODS = ("ours", "prompt-swap", "p2p")
#: For non-embedded models an edit "preserves the background" when SSIM(edited, source) reaches this.
SSIM_KEPT = 0.5

_QUOTED = re.compile(r'"([^"]*)"')


# ------------------------------------------------------------------------------------------------------------
# Target prompts and validation


def quoted_spans(prompt: str) -> list[str]:
    """The quoted strings of ``prompt`` in order (straight double quotes, as every supported tokenizer reads)."""
    return _QUOTED.findall(prompt)


def replace_quoted(prompt: str, new_text: str, span: int = 0) -> str:
    """``prompt`` with its quoted span number ``span`` replaced by ``new_text`` (quotes kept)."""
    matches = list(_QUOTED.finditer(prompt))
    if not matches:
        raise InputError(f"Expected the text to edit in double quotes, but got no quoted text in {prompt!r}")
    if not isinstance(span, int) or not 0 <= span < len(matches):
        raise InputError(
            f"Expected --span in 0..{len(matches) - 1} (the prompt has {len(matches)} quoted span(s)), but got {span}"
        )
    match = matches[span]
    return prompt[: match.start(1)] + new_text + prompt[match.end(1) :]


def is_embedded(pipe: Any) -> bool:
    from textloc.models.embedded.pipeline import EmbeddedTextPipeline

    return isinstance(pipe, EmbeddedTextPipeline)


def check_new_text(pipe: Any, new_text: str) -> str:
    """``new_text`` stripped, after checking that it is non-empty, quotable and renderable by ``pipe``."""
    if not isinstance(new_text, str) or not new_text.strip():
        raise InputError(f"Expected a non-empty new text (--to), but got {new_text!r}")
    text = new_text.strip()
    if '"' in text:
        raise InputError(f"Expected new text without double quotes, but got {text!r}")
    if is_embedded(pipe):
        from textloc.models.embedded.renderer import MAX_CHARS, RENDERABLE

        if len(text) > MAX_CHARS:
            raise InputError(
                f"Expected at most {MAX_CHARS} characters, but got {text!r} ({len(text)}): longer than the model "
                "can render"
            )
        bad = sorted(set(text.upper()) - RENDERABLE)
        if bad:
            raise InputError(f"Expected letters A-Z and spaces only, but got {text!r} (cannot render {bad})")
    return text


# ------------------------------------------------------------------------------------------------------------
# Defaults


def default_start_step(pipe: Any, num_inference_steps: int) -> int:
    """The first patched step: the preset's (scaled to the schedule), the embedded model's tuned one, or 8%."""
    from textloc.models.presets import preset_for

    preset = preset_for(pipe)
    if preset is not None:
        start = round(preset.start_step * num_inference_steps / preset.num_inference_steps)
    elif is_embedded(pipe):
        start = round(EMBEDDED_START_STEP * num_inference_steps / EMBEDDED_STEPS)
    else:
        start = round(GENERIC_START_FRACTION * num_inference_steps)
    return max(0, min(start, num_inference_steps - 1))


def _call_kwargs(pipe: Any, seed: int, num_inference_steps: int | None, guidance_scale: float | None,
                 extra: dict[str, Any]) -> dict[str, Any]:
    """Pipeline kwargs shared by every run of one edit: float output, a fresh generator at ``seed``."""
    kwargs = dict(extra)
    kwargs["output_type"] = "np"
    kwargs["num_inference_steps"] = num_inference_steps or kwargs.get("num_inference_steps") or default_steps(pipe)
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    kwargs["generator"] = torch.Generator().manual_seed(seed)
    return kwargs


def _fresh(kwargs: dict[str, Any], seed: int) -> dict[str, Any]:
    return {**kwargs, "generator": torch.Generator().manual_seed(seed)}


def to_pil(array: np.ndarray) -> Image.Image:
    """HWC float image in [0, 1] -> 8-bit PIL, rounded like diffusers' ``numpy_to_pil``."""
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))


def _first(images: Any) -> np.ndarray:
    return np.asarray(images[0], dtype=np.float32)


# ------------------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Scorer:
    """Reads and scores edits: OCR against the target, pixel metrics against the source, optional CLIP-T."""

    ocr: Any = "rapidocr"  # backend name, an object with ``read(list_of_PIL)``, or None (no OCR)
    clip: str | None = None  # path to CLIP weights for CLIP-T; None -> "n/a"
    embedded: bool = False
    _reader: Any = field(default=None, init=False, repr=False)
    _clip: Any = field(default=None, init=False, repr=False)

    @property
    def reader(self) -> Any:
        if self._reader is None and self.ocr not in (None, "none"):
            from textloc.models.profiles import GENERIC, profile_named

            if isinstance(self.ocr, str):
                self._reader = ((profile_named("embedded") if self.embedded else None) or GENERIC).reader(self.ocr)
            else:
                self._reader = self.ocr
        return self._reader

    def read(self, arrays: Sequence[np.ndarray]) -> list[str | None]:
        if self.reader is None:
            return [None] * len(arrays)
        return list(self.reader.read([to_pil(a) for a in arrays]))

    def score(self, edited: np.ndarray, source: np.ndarray, target_text: str, target_prompt: str,
              read: str | None) -> dict[str, Any]:
        """Metrics of one edited image (float HWC in [0, 1]) against its source image and target text."""
        from textloc.eval.metrics import mse, normalize_text, ocr_word_scores, psnr, ssim

        row: dict[str, Any] = {
            "mse": float(mse(edited, source)),
            "ssim": float(ssim(edited, source)),
            "psnr": _finite(float(psnr(edited, source))),
        }
        if read is not None:
            scores = ocr_word_scores(read, target_text)
            row.update(read=normalize_text(read), f1=float(scores.f1), precision=float(scores.precision),
                       recall=float(scores.recall), exact=bool(scores.exact),
                       edit_distance=int(scores.edit_distance), cer=float(scores.cer))
        row["clip_t"] = self.clip_t(edited, target_prompt)
        if self.embedded:
            from textloc.models.embedded.readers import background_colour, text_colour

            edited_image, source_image = to_pil(edited), to_pil(source)
            edited_bg, source_bg = background_colour(edited_image), background_colour(source_image)
            row["background_kept"] = edited_bg == source_bg
            row["text_colour_kept"] = text_colour(edited_image, edited_bg) == text_colour(source_image, source_bg)
        else:
            row["background_kept"] = row["ssim"] >= SSIM_KEPT
        return row

    def clip_t(self, image: np.ndarray, prompt: str) -> float | None:
        if self.clip is None:
            return None
        from textloc.eval.metrics import clip_t_score

        model, processor = self._clip_model()
        return float(clip_t_score([to_pil(image)], [prompt], model, processor)[0])

    def _clip_model(self) -> tuple[Any, Any]:
        """CLIP weights from the user's path, loaded once (never downloaded)."""
        if self._clip is None:
            from transformers import CLIPModel, CLIPProcessor

            try:
                model = CLIPModel.from_pretrained(str(self.clip), local_files_only=True).eval()
                processor = CLIPProcessor.from_pretrained(str(self.clip), local_files_only=True)
            except (OSError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise InputError(f"Expected CLIP weights (a transformers CLIPModel folder) at {self.clip}: {first}") \
                    from None
            self._clip = (model, processor)
        return self._clip


def _finite(value: float) -> float | None:
    """JSON has no infinity: identical images (PSNR = inf) are stored as null."""
    return None if math.isinf(value) else value


# ------------------------------------------------------------------------------------------------------------
# The edit


@dataclass
class EditResult:
    """One edit: both images (PIL and float arrays), both prompts, the plan, timing and metrics."""

    source_image: Image.Image
    edited_image: Image.Image
    source_array: np.ndarray
    edited_array: np.ndarray
    source_prompt: str
    target_prompt: str
    source_text: str
    target_text: str
    plan: PatchPlan
    seed: int
    num_inference_steps: int
    seconds: float
    source_seconds: float
    fired: dict[str, list[int]]
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the images, JSON-ready (what ``textloc edit`` writes to metrics.json)."""
        return {
            "source_prompt": self.source_prompt, "target_prompt": self.target_prompt,
            "source_text": self.source_text, "target_text": self.target_text, "seed": self.seed,
            "num_inference_steps": self.num_inference_steps, "layers": list(self.plan.layers),
            "start_step": self.plan.start_step, "seconds": self.seconds, "source_seconds": self.source_seconds,
            "fired": self.fired, "metrics": self.metrics,
        }


def edit_text(
    pipe: Any,
    prompt: str,
    new_text: str,
    *,
    layers: str | Sequence[str | int] = "preset",
    start_step: int | None = None,
    seed: int = 0,
    span: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    ocr: Any = "rapidocr",
    clip: str | None = None,
    **kwargs: Any,
) -> EditResult:
    r"""Replace the quoted text number ``span`` of ``prompt``'s image by ``new_text``, keeping the rest.

    Args:
        pipe: a supported pipeline (``textloc.models.loading.load_pipeline``).
        prompt: the source prompt; the text to change is in double quotes.
        new_text: the new text (several words allowed if the model can render them).
        layers: ``"preset"``/``"auto"``, a localization ``summary.json`` path, ``"all"``, or layer names/indices.
        start_step: first patched step; default ``default_start_step(pipe, steps)``.
        seed: the seed of both the source image and the edit.
        span: which quoted span to replace when the prompt has several.
        num_inference_steps / guidance_scale: pipeline settings (default: the pipeline's).
        ocr: OCR backend name or object for the metrics; ``None`` skips OCR.
        clip: CLIP weights path for CLIP-T; ``None`` reports it as unavailable.
        kwargs: further pipeline arguments (``height``, ``negative_prompt`` …); images come back as floats.

    Returns:
        ``EditResult``; ``metrics`` holds the OCR of both images, OCR scores of the edit against the new text
        and MSE / SSIM / PSNR of the edited image against the source.

    Raises:
        InputError: empty or unrenderable ``new_text``, no quoted text, bad ``span``.
        PlanMismatchError / UnknownLayerError: a layer file or names that do not fit the model.
    """
    from textloc.models.presets import choose_layers

    text = check_new_text(pipe, new_text)
    target_prompt = replace_quoted(prompt, text, span)
    source_text = quoted_spans(prompt)[span]
    names = choose_layers(pipe, layers, full_score=True)
    call = _call_kwargs(pipe, seed, num_inference_steps, guidance_scale, kwargs)
    steps = call["num_inference_steps"]
    start = default_start_step(pipe, steps) if start_step is None else start_step
    plan = PatchPlan(layers=list(names), target_prompt=target_prompt, start_step=start, model=model_fingerprint(pipe))
    plan.validate_steps(steps)

    t0 = time.perf_counter()
    prefix = PrefixCache(until_step=start)  # the edit branches off the source run after `start` steps
    source = _first(generate(pipe, prompt, None, prefix=prefix, **_fresh(call, seed)).images)
    t1 = time.perf_counter()
    result = generate(pipe, prompt, plan, prefix=prefix, **_fresh(call, seed))
    seconds = time.perf_counter() - t1
    edited = _first(result.images)

    scorer = Scorer(ocr=ocr, clip=clip, embedded=is_embedded(pipe))
    source_read, edited_read = scorer.read([source, edited])
    metrics = scorer.score(edited, source, text, target_prompt, edited_read)
    metrics["source_read"] = None if source_read is None else _normalize(source_read)
    return EditResult(to_pil(source), to_pil(edited), source, edited, prompt, target_prompt, source_text, text, plan,
                      seed, steps, seconds, t1 - t0, result.fired, metrics)


def _normalize(text: str) -> str:
    from textloc.eval.metrics import normalize_text

    return normalize_text(text)


# ------------------------------------------------------------------------------------------------------------
# Tuning the start step


@dataclass
class TuneResult:
    """Per-candidate exact rate and preservation, and the chosen start step."""

    best: int
    rows: list[dict[str, Any]]
    min_preservation: float
    satisfied: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tune_start_step(
    pipe: Any,
    pairs: Sequence[PromptPair],
    layers: Sequence[str | int],
    candidates: Sequence[int],
    *,
    ocr: Any = "rapidocr",
    min_preservation: float = 0.9,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> TuneResult:
    r"""Pick the start step that renders the target text most often while keeping the background.

    For every candidate, each validation pair's source prompt is edited towards its target (same seed as
    its plain generation). Score: OCR exact rate against ``pair.target_value``; preservation: share of
    edits that keep the source's background colour (embedded model) or reach SSIM >= ``SSIM_KEPT`` (others).
    The best candidate maximises the exact rate among those with preservation >= ``min_preservation``
    (ties: more preservation, then the later step); if none qualifies, the most preserving one is chosen
    and ``satisfied`` is False.
    """
    from tqdm.auto import tqdm

    if not pairs:
        raise InputError("Expected at least one validation pair to tune the start step on")
    if not candidates:
        raise InputError("Expected at least one candidate start step")
    scorer = Scorer(ocr=ocr, embedded=is_embedded(pipe))
    base = _call_kwargs(pipe, 0, num_inference_steps, guidance_scale, {})
    chunks = [list(pairs[i : i + batch_size]) for i in range(0, len(pairs), batch_size)]

    def gens(chunk: list[PromptPair]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(p.seed) for p in chunk]

    # Steps before a candidate's start are the plain source run's: each chunk's are computed once (prefix reuse).
    caches = [PrefixCache(until_step=max(int(c) for c in candidates)) for _ in chunks]
    sources = [np.asarray(generate(pipe, [p.source for p in c], None, prefix=cache, **{**base, "generator": gens(c)})
                          .images) for c, cache in zip(chunks, caches, strict=True)]
    rows = []
    bar = tqdm(total=len(candidates) * len(pairs), desc="edit-tune", disable=not progress, dynamic_ncols=True)
    for start in candidates:
        exact, kept = [], []
        for chunk, source, cache in zip(chunks, sources, caches, strict=True):
            plan = PatchPlan(layers=list(layers), start_step=int(start))
            edited = np.asarray(generate(pipe, [p.source for p in chunk], plan, target_prompt=[p.target for p in chunk],
                                         prefix=cache, **{**base, "generator": gens(chunk)}).images)
            reads = scorer.read(list(edited))
            for pair, e, s, read in zip(chunk, edited, source, reads, strict=True):
                row = scorer.score(e, s, pair.target_value, pair.target, read)
                exact.append(bool(row.get("exact", False)))
                kept.append(bool(row["background_kept"]))
            bar.update(len(chunk))
        rows.append({"start_step": int(start), "exact": float(np.mean(exact)), "preservation": float(np.mean(kept))})
    bar.close()
    ok = [r for r in rows if r["preservation"] >= min_preservation]
    if ok:
        best = max(ok, key=lambda r: (r["exact"], r["preservation"], r["start_step"]))
    else:
        best = max(rows, key=lambda r: (r["preservation"], r["exact"], r["start_step"]))
    return TuneResult(int(best["start_step"]), rows, min_preservation, bool(ok))


# ------------------------------------------------------------------------------------------------------------
# Benchmark pairs


def embedded_bench_pairs(n: int, seed: int, open_prompts: bool = False) -> list[PromptPair]:
    """Embedded prompts with new texts: seen words and never-seen strings.

    Even items take a training word as the target ("seen"), odd items a random string from the reserved class
    that training never draws ("unseen"); the source text is always a training word. Keys say the group.

    ``open_prompts=False`` (benchmark ``embedded``): fully specified prompts (``describe(spec)``); colours and
    font are fixed by the words, so regenerating with the target prompt already keeps them. ``True``
    (``embedded-open``): the prompts name only the text (``a board that reads "CAT"``), as a user who liked
    what the seed drew would write them; colours and font then come from the noise *and* the text, which is
    the case editing exists for.
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
            source = make_prompt(spec, random.Random(seed * 100_003 + i), p_attribute=0.0)
            target_prompt = replace_quoted(source, target)
        else:
            source, target_prompt = describe(spec), describe(replace(spec, text=target))
        pairs.append(PromptPair(f"{'seen' if seen else 'unseen'}-{i:04d}", source, target_prompt, spec.text, target,
                                seed * 100_003 + i))
    return pairs


def glyph_bench_pairs(benchmark: str, n: int | None, seed: int, split: str = "test") -> list[PromptPair]:
    """GlyphControl prompts (SimpleBench / CreativeBench, or a user file or folder of ``*.txt``), paired.

    Each prompt's quoted word is swapped for the word of another prompt of the same set (seeded
    derangement, ``prompts.text_pairs``); ``n`` pairs are then drawn at random (``sample_pairs``) so every
    frequency bucket is represented. ``split``: ``test`` (the three rarer buckets; the top-1000 bucket is
    localization's validation split), ``validation`` or ``all``.
    """
    from textloc.data.pairs import BENCHMARKS, benchmark_files, read_prompts, text_pairs

    if benchmark in BENCHMARKS:
        if split not in ("test", "validation", "all"):
            raise InputError(f"Expected --split in test, validation, all, but got {split!r}")
        splits = ("validation", "test") if split == "all" else (split,)
        files = [f for s in splits for f in benchmark_files(benchmark, s)]
    else:
        path = Path(benchmark)
        if path.is_dir():
            files = sorted(path.glob("*.txt"))
            if not files:
                raise InputError(f"Expected prompt files (*.txt) in {path}, but found none")
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"Expected --benchmark embedded, simplebench, creativebench or a prompt file/folder, "
                             f"but got {benchmark!r}")
    prompts = [p for f in files for p in read_prompts(f)]
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
    kept = []
    for pair in pairs:
        try:
            check_new_text(pipe, pair.target_value)
        except InputError:
            continue
        kept.append(pair)
    return kept, len(pairs) - len(kept)


#: Edit benchmarks of the embedded model: fully specified prompts, and prompts that name only the text.
EMBEDDED_BENCHMARKS = ("embedded", "embedded-open")


def bench_pairs(benchmark: str, n: int | None, seed: int, split: str = "test", pipe: Any = None) -> list[PromptPair]:
    """Edit pairs of a benchmark; with ``pipe``, only pairs whose target it can render are drawn from."""
    if benchmark in EMBEDDED_BENCHMARKS:
        return embedded_bench_pairs(n or 100, seed, open_prompts=benchmark == "embedded-open")
    pairs = glyph_bench_pairs(benchmark, None, seed, split)
    if pipe is not None:
        pairs, _ = renderable_pairs(pipe, pairs)
    return sample_pairs(pairs, n, seed)


# ------------------------------------------------------------------------------------------------------------
# Benchmark harness


@dataclass
class BenchConfig:
    """What determines a benchmark run's records (stored in ``config.json``; a resumed run must match)."""

    model: str
    benchmark: str
    seed: int = 0
    split: str = "test"
    layers: list[str] = field(default_factory=list)
    start_step: int = 0
    steps: int = 20
    guidance: float | None = None
    ocr: str = "rapidocr"
    clip: str | None = None
    p2p_cross: float = 0.8
    p2p_self: float = 0.4

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _method_runner(pipe: Any, method: str, config: BenchConfig, all_layers: list[str]) -> Callable:
    """A function ``(pair, call_kwargs) -> edited float image`` for ``method``."""
    from textloc.apps.p2p import P2PConfig, p2p_edit

    def patched(layers: list[str]) -> Callable:
        def run(pair: PromptPair, call: dict[str, Any], prefix: PrefixCache | None = None) -> np.ndarray:
            plan = PatchPlan(layers=list(layers), target_prompt=pair.target, start_step=config.start_step)
            return _first(generate(pipe, pair.source, plan, prefix=prefix, **call).images)

        return run

    if method == "ours":
        return patched(config.layers)
    if method == "patch-all":
        return patched(all_layers)
    if method == "prompt-swap":
        return lambda pair, call: _first(pipe(pair.target, **call).images)
    if method == "p2p":
        p2p_config = P2PConfig(cross_replace_steps=config.p2p_cross, self_replace_steps=config.p2p_self)
        return lambda pair, call: np.asarray(p2p_edit(pipe, pair.source, pair.target, config=p2p_config,
                                                      **call).edited_image, dtype=np.float32)
    raise InputError(f"Expected methods from {list(METHODS)}, but got {method!r}")


def parse_methods(spec: str | Sequence[str] | None, pipe: Any) -> list[str]:
    """``--methods`` -> method names; by default all, without P2P where the model does not support it."""
    from textloc.apps.p2p import check_supported
    from textloc.errors import UnsupportedModelError

    if spec is None:
        methods = list(METHODS)
        try:
            check_supported(pipe)
        except UnsupportedModelError:
            methods.remove("p2p")
        return methods
    methods = [m.strip() for m in spec.split(",")] if isinstance(spec, str) else list(spec)
    methods = [m for m in methods if m]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise InputError(f"Expected --methods from {','.join(METHODS)}, but got {spec!r}")
    if "p2p" in methods:
        check_supported(pipe)
    return list(dict.fromkeys(methods))


def _read_records(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["key"], r["method"]): r for r in read_jsonl(path)}


def _check_config(out: Path, config: BenchConfig) -> None:
    path = out / "config.json"
    payload = {**asdict(config), "fingerprint": config.fingerprint()}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("fingerprint") != payload["fingerprint"]:
            diff = sorted(k for k in payload if k != "fingerprint" and old.get(k) != payload[k])
            raise InputError(
                f"Expected {out} to hold a run with the same settings to resume, but got one that differs in "
                f"{diff}; use another --out"
            )
        return
    atomic_write_json(path, payload)


def run_edit_bench(
    pipe: Any,
    pairs: Sequence[PromptPair],
    config: BenchConfig,
    out: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    ocr_backend: Any = None,
    extra_call_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Run every method on every pair, appending one record per (pair, method) to ``results.jsonl``.

    A rerun with the same ``config`` skips the (pair, method) records already written, so a killed run
    resumes; adding pairs (larger ``n``) or methods only runs what is new. Afterwards the summary is written:
    ``results.md`` (Markdown table), ``summary.json`` and ``grid.png`` (source | ours | prompt swap | p2p).

    Args:
        ocr_backend: an object with ``read(list_of_PIL)`` used instead of ``config.ocr`` (tests, custom OCR).
        extra_call_kwargs: further pipeline arguments (``height``/``width`` for latent models).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, config)
    results = out / "results.jsonl"
    done = _read_records(results)
    scorer = Scorer(ocr=ocr_backend if ocr_backend is not None else config.ocr, clip=config.clip,
                    embedded=is_embedded(pipe))
    all_layers = [layer.name for layer in list_text_layers(pipe)]
    runners = {m: _method_runner(pipe, m, config, all_layers) for m in methods}
    todo = [(pair, [m for m in methods if (pair.key, m) not in done]) for pair in pairs]
    todo = [(pair, missing) for pair, missing in todo if missing]
    bar = tqdm(total=sum(len(m) for _, m in todo), desc="bench edit", disable=not progress, dynamic_ncols=True)
    base = _call_kwargs(pipe, 0, config.steps, config.guidance, extra_call_kwargs or {})
    PatchPlan(layers=list(config.layers), start_step=config.start_step).validate_steps(base["num_inference_steps"])
    for pair, missing in todo:
        # The edits start from the source's own first `start_step` steps: computed once, here (prefix reuse).
        prefix = PrefixCache(until_step=config.start_step)
        source = _first(generate(pipe, pair.source, None, prefix=prefix, **_fresh(base, pair.seed)).images)
        (source_read,) = scorer.read([source])
        folder = out / "images" / pair.key
        save_image_atomic(to_pil(source), folder / "source.png")
        for method in missing:
            start, hits = time.perf_counter(), prefix.hits
            if method in PREFIX_METHODS:
                edited = runners[method](pair, _fresh(base, pair.seed), prefix)
            else:
                edited = runners[method](pair, _fresh(base, pair.seed))
            seconds = time.perf_counter() - start
            (read,) = scorer.read([edited])
            record = {"key": pair.key, "method": method, "source_prompt": pair.source, "target_prompt": pair.target,
                      "source_text": pair.source_value, "target_text": pair.target_value, "seed": pair.seed,
                      "source_read": None if source_read is None else _normalize(source_read), "seconds": seconds,
                      "prefix_calls_reused": prefix.hits - hits,
                      **scorer.score(edited, source, pair.target_value, pair.target, read)}
            save_image_atomic(to_pil(edited), folder / f"{method}.png")
            append_jsonl(results, [record])
            done[(pair.key, method)] = record
            bar.update(1)
    bar.close()
    keys = {pair.key for pair in pairs}
    records = [r for (key, method), r in done.items() if key in keys and method in methods]
    summary = summarise(records, methods, embedded=is_embedded(pipe))
    summary["config"] = asdict(config)
    summary["n_pairs"] = len(pairs)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "results.md", markdown_table(summary))
    examples = [(p.key, f'"{p.source_value}" -> "{p.target_value}"') for p in pairs[:6]]
    grid = make_grid(out, examples, [m for m in GRID_METHODS if m in methods])
    if grid is not None:
        save_image_atomic(grid, out / "grid.png")
    return summary


# ------------------------------------------------------------------------------------------------------------
# Summary, table and grid


def _mean(values: list[Any]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(records: list[dict[str, Any]], methods: Sequence[str], *, embedded: bool) -> dict[str, Any]:
    """Per-method means (PSNR over finite values: identical images count as ``inf`` and are left out)."""
    rows = {}
    for method in methods:
        rs = [r for r in records if r["method"] == method]
        psnr = [r["psnr"] for r in rs]
        rows[method] = {
            "n": len(rs),
            "mse": _mean([r["mse"] for r in rs]),
            "ssim": _mean([r["ssim"] for r in rs]),
            "psnr": _mean(psnr),
            "psnr_identical": sum(p is None for p in psnr),
            "ocr_f1": _mean([r.get("f1") for r in rs]),
            "exact": _mean([r.get("exact") for r in rs]),
            "edit_distance": _mean([r.get("edit_distance") for r in rs]),
            "cer": _mean([r.get("cer") for r in rs]),
            "clip_t": _mean([r.get("clip_t") for r in rs]),
            "seconds": _mean([r["seconds"] for r in rs]),
            "background_kept": _mean([r.get("background_kept") for r in rs]),
            "text_colour_kept": _mean([r.get("text_colour_kept") for r in rs]),
        }
    return {"methods": rows, "embedded": embedded}


COLUMNS = (
    ("mse", "MSE ↓", "{:.4f}"), ("ssim", "SSIM ↑", "{:.3f}"), ("psnr", "PSNR ↑", "{:.2f}"),
    ("ocr_f1", "OCR F1 ↑", "{:.3f}"), ("exact", "Exact ↑", "{:.3f}"), ("edit_distance", "Edit dist. ↓", "{:.2f}"),
    ("clip_t", "CLIP-T ↑", "{:.3f}"), ("seconds", "s / edit ↓", "{:.2f}"),
)
LABELS = {"ours": "Ours (localized layers)", "prompt-swap": "Prompt swap", "patch-all": "Patch all layers",
          "p2p": "Prompt-to-Prompt"}


def markdown_table(summary: dict[str, Any]) -> str:
    """The editing table (columns of the paper's, plus exact match, edit distance and time)."""
    embedded = [("background_kept", "BG kept ↑", "{:.3f}"), ("text_colour_kept", "Text colour kept ↑", "{:.3f}")]
    columns = list(COLUMNS) + (embedded if summary.get("embedded") else [])
    lines = ["| Method | n | " + " | ".join(c[1] for c in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for method, row in summary["methods"].items():
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            if key == "psnr" and value is None and row["psnr_identical"]:
                cells.append("inf")
            else:
                cells.append("n/a" if value is None else fmt.format(value))
        lines.append(f"| {LABELS.get(method, method)} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def display(image: Image.Image, height: int = 96, max_height: int = 256) -> Image.Image:
    """An image sized for viewing: small renders upscaled by an integer factor (crisp), large ones shrunk."""
    if image.height < height:
        factor = max(1, math.ceil(height / image.height))
        return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    if image.height > max_height:
        return image.resize((round(image.width * max_height / image.height), max_height), Image.LANCZOS)
    return image


def _font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def labelled_row(images: Sequence[Image.Image], labels: Sequence[str], pad: int = 4, label_h: int = 20) -> Image.Image:
    """Images side by side, each with a caption above (used by ``edit``'s side_by_side.png and the grid)."""
    shown = [display(im.convert("RGB")) for im in images]
    width = sum(im.width for im in shown) + pad * (len(shown) + 1)
    height = max(im.height for im in shown) + label_h + 2 * pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for im, label in zip(shown, labels, strict=True):
        draw.text((x, pad), label, fill="black", font=_font())
        canvas.paste(im, (x, pad + label_h))
        x += im.width + pad
    return canvas


def make_grid(out: Path, examples: Sequence[tuple[str, str]], methods: Sequence[str]) -> Image.Image | None:
    """Rows of ``(key, caption)`` examples from ``out/images``: source (captioned with the edit) | the methods."""
    rows = []
    for key, caption in examples:
        folder = out / "images" / key
        paths = [folder / "source.png"] + [folder / f"{m}.png" for m in methods]
        if not all(p.exists() for p in paths):
            continue
        images = [Image.open(p).convert("RGB") for p in paths]
        rows.append(labelled_row(images, [caption] + [LABELS.get(m, m) for m in methods]))
    if not rows:
        return None
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        grid.paste(row, (0, y))
        y += row.height
    return grid
