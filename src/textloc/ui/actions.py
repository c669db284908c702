"""What the buttons do: validate the page's inputs, call the public API, and return everything the page shows.

Each action returns one outcome object holding *every* output of its part of the page, so the page replaces
all of them at once and nothing from an earlier request can stay on screen (issue #18). Errors are raised,
not formatted: ``textloc.ui.app`` turns them into the status line (``render.error_md``).

* Generate calls the pipeline, or ``textloc.apps.safety.pipeline.SafeTextPipeline`` in safe mode; a flagged
  prompt hands its *protected* prompt (what was rendered) to Edit, so Edit never starts from the harmful word.
* Edit calls ``textloc.apps.edit.edit.edit_text`` and judges it with ``textloc.apps.edit.verdict.verdict_of``.

No Gradio here: the actions are tested directly, without a browser.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from textloc.errors import InputError, TextlocError
from textloc.ui import render
from textloc.ui.state import UIState

#: Shown in the prompt box on startup: the embedded model's prompt format.
EXAMPLE_PROMPT = 'a red sign with white serif letters that says "CAT"'
#: ``progress(fraction, description)``
Progress = Callable[[float, str], None]
#: Seeds the dice button draws (any seed up to 2**63 - 1 may be typed).
RANDOM_SEED_MAX = 2**31 - 1


@dataclass
class GenerateOutcome:
    """Everything the Generate half shows, plus what it hands to Edit."""

    image: Image.Image
    safety_md: str
    files: list[str]
    status_md: str
    #: the prompt Edit starts from: the protected prompt after safe mode replaced text, else the prompt
    edit_prompt: str
    #: the text to replace in ``edit_prompt`` (its first quoted text)
    old_text: str


@dataclass
class EditOutcome:
    """Everything the Edit half shows: the side-by-side image (also a file), metrics, downloads, verdict."""

    side_by_side: Image.Image
    side_by_side_file: str
    metrics_md: str
    files: list[str]
    status_md: str
    missed: bool
    verdict: dict[str, Any] = field(default_factory=dict)


def random_seed() -> int:
    """A fresh seed for the dice button."""
    return secrets.randbelow(RANDOM_SEED_MAX + 1)


def to_int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """A whole number from a page field, or an ``InputError`` naming the field."""
    if value is None or value == "":
        raise InputError(f"Expected a whole number for {name}, but got nothing")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"Expected a whole number for {name}, but got {value!r}") from None
    if not math.isfinite(number) or not number.is_integer():
        raise InputError(f"Expected a whole number for {name}, but got {value}")
    number = int(number)
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise InputError(f"Expected {name} {bounds}, but got {number}")
    return number


def check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"Expected a prompt, but the prompt is empty; try e.g. {EXAMPLE_PROMPT}")
    return prompt.strip()


@dataclass(frozen=True)
class Settings:
    """The validated seed, steps and guidance shared by Generate and Edit."""

    seed: int
    steps: int
    guidance: float


def settings(state: UIState, seed: Any, steps: Any, guidance: Any) -> Settings:
    seed_value = to_int(seed, "the seed", 0, 2**63 - 1)
    steps_value = to_int(steps, "the number of steps", 1, state.model.profile.max_steps)
    try:
        guidance_value = float(guidance)
    except (TypeError, ValueError):
        raise InputError(f"Expected a number for the guidance scale, but got {guidance!r}") from None
    if not math.isfinite(guidance_value) or guidance_value < 0:
        raise InputError(f"Expected a guidance scale >= 0, but got {guidance}")
    return Settings(seed_value, steps_value, guidance_value)


def _layer_spec(layers: Any) -> str:
    return (layers or "").strip() if isinstance(layers, str) else "preset"


def _text_notes(pipe: Any, prompt: str) -> list[str]:
    """Warnings about the prompt's quoted text (none to edit later, or not renderable by this model)."""
    from textloc.apps.edit.edit import check_new_text, quoted_spans

    spans = quoted_spans(prompt)
    if not spans:
        return ['The prompt has no text in double quotes, so there is nothing to edit; write e.g. '
                '`that says "CAT"`.']
    notes = []
    for text in spans:
        try:
            check_new_text(pipe, text)
        except TextlocError as err:
            notes.append(f"Quoted text may not render: {render.md_escape(render.for_page(str(err)))}")
    return notes


def _save_png(image: Image.Image, path: Path) -> str:
    image.save(path, format="PNG")
    return str(path)


def _step_progress(progress: Progress | None, steps: int, what: str) -> Callable[..., dict] | None:
    """A ``callback_on_step_end`` that reports each denoising step, or None without a progress display."""
    if progress is None:
        return None

    def callback(_pipe: Any, step: int, _timestep: Any, kwargs: dict) -> dict:
        progress((step + 1) / max(steps, 1), f"{what}: step {step + 1}/{steps}")
        return kwargs

    return callback


def generate(state: UIState, prompt: Any, seed: Any, steps: Any, guidance: Any, safe: bool, layers: Any,
             progress: Progress | None = None) -> GenerateOutcome:
    """Generate one image (through ``SafeTextPipeline`` in safe mode) and say what happened."""
    import torch

    from textloc.apps.edit.calls import to_pil
    from textloc.apps.edit.edit import quoted_spans

    text = check_prompt(prompt)
    run = settings(state, seed, steps, guidance)
    model = state.model
    notes = _text_notes(model.pipe, text)
    kwargs: dict[str, Any] = {"num_inference_steps": run.steps, "guidance_scale": run.guidance,
                              "generator": torch.Generator().manual_seed(run.seed)}
    callback = _step_progress(progress, run.steps, "Generating") if model.accepts_callback else None
    if callback is not None:
        kwargs["callback_on_step_end"] = callback
    report = None
    with state.lock:
        t0 = time.perf_counter()
        if safe:
            from textloc.apps.safety.pipeline import SafeTextPipeline

            safe_pipe = SafeTextPipeline(model.pipe, layers=_layer_spec(layers) or "preset",
                                         detector=state.detector)
            output = safe_pipe(text, **kwargs)
            report = output.report
        else:
            output = model.pipe(text, **kwargs)
        seconds = time.perf_counter() - t0
    image = output.images[0]
    if not isinstance(image, Image.Image):
        image = to_pil(image)
    folder = state.folder()
    files = [_save_png(image, folder / "generated.png")]
    if report is not None:
        (folder / "safety_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        files.append(str(folder / "safety_report.json"))
    edit_prompt = report.safe_prompt if report is not None and report.flagged else text
    status = f"✓ Generated in {seconds:.2f} s (seed {run.seed})."
    if report is not None and report.flagged:
        status += " Safe mode replaced harmful text; Edit starts from the protected prompt."
    if notes:
        status += "\n\n" + "\n\n".join(f"Note: {note}" for note in notes)
    return GenerateOutcome(render.display_image(image), render.safety_md(report), files, status, edit_prompt,
                           (quoted_spans(edit_prompt) or [""])[0])


def _check_safe(state: UIState, prompt: str, target: str) -> None:
    """In safe mode, refuse an edit whose prompt or new text the detector flags (the same check as Generate)."""
    from textloc.apps.safety.check import check_prompt as safety_check

    for which, candidate in (("prompt", prompt), ("new text", target)):
        report = safety_check(candidate, state.detector, profile=state.model.profile)
        if report.flagged:
            words = ", ".join(f'"{f.text}"' for f in report.findings)
            raise InputError(f"Safe mode is on and the {which} contains harmful text ({words}); "
                             "generate with safe mode first (Edit then starts from the protected prompt), "
                             "or choose another text")


def edit(state: UIState, prompt: Any, seed: Any, steps: Any, guidance: Any, safe: bool, old: Any, new: Any,
         layers: Any, start: Any, progress: Progress | None = None) -> EditOutcome:
    """Edit the quoted text ``old`` of ``prompt``'s image to ``new``; the verdict decides ✓ or ✗."""
    from textloc.apps.edit.edit import check_new_text, edit_text, quoted_spans, replace_quoted
    from textloc.apps.edit.verdict import verdict_of
    from textloc.runs.grids import auto_scale, image_grid

    text = check_prompt(prompt)
    spans = quoted_spans(text)
    if not spans:
        raise InputError('Expected the text to edit in double quotes in the prompt, e.g. that says "CAT"')
    old = (old or "").strip()
    if old not in spans:
        shown = ", ".join(f'"{s}"' for s in spans)
        raise InputError(f"Expected the text to replace to be one of the prompt's quoted texts ({shown}), "
                         f"but got {old!r}")
    span = spans.index(old)
    run = settings(state, seed, steps, guidance)
    start_step = None if start in (None, "") else to_int(start, "the start step", 0)  # blank: the default
    layer_spec = _layer_spec(layers) or state.model.default_layers()
    model = state.model
    new_text = check_new_text(model.pipe, new or "", old)
    if safe:
        _check_safe(state, text, replace_quoted(text, new_text, span))
    reader = state.ocr

    def on_step(phase: str, step: int, total: int) -> None:
        if progress is not None:
            progress(step / max(total, 1), f"{'Source' if phase == 'source' else 'Edit'}: step {step}/{total}")

    with state.lock:
        result = edit_text(model.pipe, text, new_text, layers=layer_spec, start_step=start_step, seed=run.seed,
                           span=span, num_inference_steps=run.steps, guidance_scale=run.guidance, ocr=reader,
                           on_step=on_step)
    verdict = verdict_of(result.metrics, target_text=result.target_text, start_step=result.plan.start_step,
                         num_inference_steps=result.num_inference_steps,
                         default_layers=layer_spec in ("preset", "auto"),
                         colours_judged=model.profile.colours is not None)
    pair = [result.source_image, result.edited_image]
    side = image_grid([pair], labels=[[f'source "{result.source_text}"', f'edited "{result.target_text}"']],
                      scale=auto_scale(pair, render.DISPLAY_HEIGHT), pad=4, label_height=20)
    folder = state.folder()
    files = [_save_png(result.source_image, folder / "source.png"),
             _save_png(result.edited_image, folder / "edited.png"),
             _save_png(side, folder / "side_by_side.png")]
    result.plan.to_json(folder / "plan.json")
    metrics = {"model": model.name, **result.to_dict(), "verdict": verdict.to_dict()}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    files += [str(folder / "plan.json"), str(folder / "metrics.json")]
    return EditOutcome(side, files[2], render.metrics_md(result, verdict), files,
                       render.edit_status_md(result, verdict), verdict.missed, verdict.to_dict())
