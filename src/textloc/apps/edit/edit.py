"""The edit: change the text an image renders and keep everything else, by patching only the localized layers.

The method (the paper's editing application). Generate the source image from ``prompt`` with a seed; build the
target prompt by replacing one quoted span with the new text; generate again with the *same* seed while the
target prompt's text embeddings are injected into the localized cross-attention layers (U-Net) or its
text-token K/V patched into the localized joint-attention blocks (MMDiT) from ``start_step`` on. Every other
layer still reads the source prompt, so layout, colours and style stay; the first ``start_step`` steps are
left alone because the coarse layout is decided there (and are served from the source run: prefix reuse).

What the model can draw, which reader reads it and which start step it was tuned to come from its profile
(``textloc.models.profiles.profile_for``); quoted text is found by ``textloc.data.quotes``, the one parser.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from textloc.apps.edit.calls import call_kwargs, first_image, fresh, to_pil
from textloc.apps.edit.scoring import Scorer
from textloc.apps.edit.start import default_start_step
from textloc.core.engine import generate
from textloc.core.layers import model_fingerprint
from textloc.core.plan import PatchPlan
from textloc.core.prefix import PrefixCache
from textloc.errors import InputError

#: ``on_step(phase, step, total)``: ``phase`` is ``"source"`` or ``"edit"``; ``step`` counts from 1.
StepCallback = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------------------------------------
# Target prompts and validation


def quoted_spans(prompt: str) -> list[str]:
    """The quoted texts of ``prompt`` in order (``textloc.data.quotes``, the one parser)."""
    from textloc.data.quotes import quoted_texts

    return quoted_texts(prompt)


def replace_quoted(prompt: str, new_text: str, span: int = 0) -> str:
    """``prompt`` with its quoted span number ``span`` replaced by ``new_text`` (quotes kept)."""
    from textloc.data.quotes import replace_span, spans

    found = spans(prompt)
    if not found:
        raise InputError(f"Expected the text to edit in double quotes, but got no quoted text in {prompt!r}")
    if isinstance(span, bool) or not isinstance(span, int) or not 0 <= span < len(found):
        raise InputError(
            f"Expected --span in 0..{len(found) - 1} (the prompt has {len(found)} quoted span(s)), but got {span}"
        )
    return replace_span(prompt, span, new_text)


def _plain_text(new_text: Any) -> str:
    if not isinstance(new_text, str) or not new_text.strip():
        raise InputError(f"Expected a non-empty new text (--to), but got {new_text!r}")
    text = new_text.strip()
    if '"' in text:
        raise InputError(f"Expected new text without double quotes, but got {text!r}")
    return text


def check_new_text(pipe: Any, new_text: str, source_text: str | None = None) -> str:
    """``new_text`` stripped, after checking that it is non-empty, quotable and within the model's render limits
    (``profile.render_limits``); with ``source_text``, also that it differs from it as the model draws both."""
    from textloc.models.profiles import profile_for

    text = _plain_text(new_text)
    limits = profile_for(pipe).render_limits if pipe is not None else None
    if limits is not None:
        limits.check(text, what="the new text (--to)")
    if source_text is not None:
        same = text == source_text.strip()
        if limits is not None:
            same = same or limits.apply_case(text) == limits.apply_case(source_text.strip())
        if same:
            raise InputError(f"--to {text!r} is the text the prompt already renders ({source_text!r}); "
                             "choose a different text")
    return text


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
    #: whether the source came from an earlier run (``source=``) instead of being generated here
    source_reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Everything but the images, JSON-ready (what ``textloc edit`` writes to metrics.json)."""
        return {
            "source_prompt": self.source_prompt, "target_prompt": self.target_prompt,
            "source_text": self.source_text, "target_text": self.target_text, "seed": self.seed,
            "num_inference_steps": self.num_inference_steps, "layers": list(self.plan.layers),
            "start_step": self.plan.start_step, "seconds": self.seconds, "source_seconds": self.source_seconds,
            "source_reused": self.source_reused, "fired": self.fired, "metrics": self.metrics,
        }


def _step_callback(pipe: Any, on_step: StepCallback | None, phase: str, total: int) -> dict[str, Any]:
    """``callback_on_step_end`` reporting ``phase`` progress, where the pipeline takes one (else nothing)."""
    if on_step is None:
        return {}
    try:
        accepts = "callback_on_step_end" in inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        accepts = False
    if not accepts:
        return {}

    def callback(_pipe: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        on_step(phase, min(int(step) + 1, total), total)
        return callback_kwargs

    return {"callback_on_step_end": callback}


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
    source: np.ndarray | None = None,
    on_step: StepCallback | None = None,
    **kwargs: Any,
) -> EditResult:
    r"""Replace the quoted text number ``span`` of ``prompt``'s image by ``new_text``, keeping the rest.

    Args:
        pipe: a supported pipeline (``textloc.models.loading.load_pipeline``).
        prompt: the source prompt; the text to change is in double quotes.
        new_text: the new text (several words allowed if the model can render them). The same text as the
            source reproduces the source image bit for bit (the CLI refuses it as a no-op).
        layers: ``"preset"``/``"auto"``, a localization ``summary.json`` path, ``"all"``, or layer names/indices.
        start_step: first patched step; default ``default_start_step(pipe, steps)``.
        seed: the seed of both the source image and the edit.
        span: which quoted span to replace when the prompt has several.
        num_inference_steps / guidance_scale: pipeline settings (default: the pipeline's).
        ocr: OCR backend name (read through the model's profile) or object; ``None`` skips OCR.
        clip: CLIP weights path for CLIP-T; ``None`` reports it as unavailable.
        source: the float HWC source image of an earlier run with the same prompt, seed and settings; it is not
            generated again and the edit runs every step itself (no prefix to branch off).
        on_step: ``on_step(phase, step, total)`` after every denoising step (progress display).
        kwargs: further pipeline arguments (``height``, ``negative_prompt`` …); images come back as floats.

    Returns:
        ``EditResult``; ``metrics`` holds the OCR of both images, OCR scores of the edit against the new text,
        MSE / SSIM / PSNR of the edited image against the source and whether background and text colour were
        kept (``apps.edit.scoring``).

    Raises:
        InputError: empty or unrenderable ``new_text``, no quoted text, bad ``span``.
        PlanMismatchError / UnknownLayerError: a layer file or names that do not fit the model.
    """
    from textloc.models.presets import choose_layers
    from textloc.models.profiles import profile_for

    text = check_new_text(pipe, new_text)
    target_prompt = replace_quoted(prompt, text, span)
    source_text = quoted_spans(prompt)[span]
    names = choose_layers(pipe, layers, full_score=True)
    call = call_kwargs(pipe, seed, num_inference_steps, guidance_scale, kwargs)
    steps = call["num_inference_steps"]
    start = default_start_step(pipe, steps) if start_step is None else start_step
    plan = PatchPlan(layers=list(names), target_prompt=target_prompt, start_step=start, model=model_fingerprint(pipe))
    plan.validate_steps(steps)

    t0 = time.perf_counter()
    if source is None:
        prefix: PrefixCache | None = PrefixCache(until_step=start)  # the edit branches off the source run
        run = {**fresh(call, seed), **_step_callback(pipe, on_step, "source", steps)}
        source = first_image(generate(pipe, prompt, None, prefix=prefix, **run).images)
    else:
        prefix = None
        source = np.asarray(source, dtype=np.float32)
    t1 = time.perf_counter()
    run = {**fresh(call, seed), **_step_callback(pipe, on_step, "edit", steps)}
    result = generate(pipe, prompt, plan, prefix=prefix, **run)
    seconds = time.perf_counter() - t1
    edited = first_image(result.images)
    if source.shape != edited.shape:
        raise InputError(f"Expected the reused source image to have the edit's shape {edited.shape}, but it has "
                         f"{source.shape}")

    scorer = Scorer(profile=profile_for(pipe), ocr=ocr, clip=clip)
    source_read, edited_read = scorer.read([source, edited])
    metrics = scorer.score(edited, source, text, target_prompt, edited_read)
    metrics["source_read"] = None if source_read is None else _normalize(source_read)
    return EditResult(to_pil(source), to_pil(edited), source, edited, prompt, target_prompt, source_text, text, plan,
                      seed, steps, seconds, t1 - t0, result.fired, metrics, source_reused=prefix is None)


def _normalize(text: str) -> str:
    from textloc.eval.scoring import normalize_text

    return normalize_text(text)
