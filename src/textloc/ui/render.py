"""What the web app shows: images scaled for the eye, Markdown for results, and errors a person can read.

Everything here is a pure function of its inputs (no Gradio, no pipeline), so the wording is tested without a
browser. Two rules live here because the page must never break them (issue #18):

* an error is shown with a plain-language title and its message, never an exception class name;
* an edit is marked ✓ only when its verdict did not miss; a missed edit shows ✗, what missed and what to try,
  so "✓ Edited" never stands beside "background kept: no".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from PIL import Image

from textloc.errors import (
    InputError,
    LLMError,
    ModelLoadError,
    OCRUnavailableError,
    PlanMismatchError,
    PlanNeverFiredError,
    StepWindowError,
    TextlocError,
    UnknownBackendError,
    UnknownLayerError,
    UnsupportedModelError,
)

#: Small renders are upscaled (integer factor, NEAREST) to at least this height so the letters can be seen.
DISPLAY_HEIGHT = 144

#: Plain-language titles of the errors a user can cause, most specific first (looked up along the MRO).
ERROR_TITLES: dict[type[BaseException], str] = {
    UnknownBackendError: "Unknown option",
    InputError: "Please check the input",
    PlanMismatchError: "These layers do not fit this model",
    UnknownLayerError: "The model has no such layer",
    StepWindowError: "The start step does not fit the number of steps",
    PlanNeverFiredError: "The patch did not take effect",
    ModelLoadError: "The model could not be loaded",
    UnsupportedModelError: "This model is not supported",
    OCRUnavailableError: "OCR is not available here",
    LLMError: "The language model could not be used",
    TextlocError: "The request could not be done",
}
UNEXPECTED_TITLE = "Something went wrong inside textloc"

#: Shared messages name command-line options; the page names its own controls instead.
_FLAG_LABELS = {
    "--to": "New text", "--steps": "Steps", "--start-step": "Start step", "--layers": "Layers",
    "--seed": "Seed", "--span": "Text to replace", "--guidance": "Guidance scale",
}
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)")


def display_image(image: Image.Image, height: int = DISPLAY_HEIGHT) -> Image.Image:
    """``image`` upscaled by an integer factor with NEAREST so tiny renders stay crisp; large ones unchanged."""
    if image.height >= height:
        return image
    factor = max(1, math.ceil(height / image.height))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def for_page(text: str) -> str:
    """A message written for the command line, with its option names replaced by the page's control names."""
    return _FLAG.sub(lambda m: f"“{_FLAG_LABELS[m.group(1)]}”" if m.group(1) in _FLAG_LABELS else m.group(1), text)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def md_escape(text: str) -> str:
    """Text from the user shown inside Markdown without being interpreted as Markdown."""
    for char in "\\`*_{}[]<>#|":
        text = text.replace(char, "\\" + char)
    return text


def code(text: str) -> str:
    """``text`` as a Markdown code span (inside one, only backticks are special, so they are replaced)."""
    return f"`{text.replace('`', chr(39))}`" if text else "` `"


def quote(text: str | None) -> str:
    """OCR output shown in Markdown: quoted, with an explicit marker for "nothing read"."""
    if text is None:
        return "n/a (OCR off)"
    return code(text) if text else "*(nothing read)*"


def error_title(err: BaseException) -> str:
    """The plain-language title of ``err`` (no class names): the first match along its class hierarchy."""
    for cls in type(err).__mro__:
        if cls in ERROR_TITLES:
            return ERROR_TITLES[cls]
    return UNEXPECTED_TITLE


def error_text(err: BaseException) -> str:
    """One plain line for a toast: title and message; an unexpected error points at the server log."""
    message = for_page(str(err).strip()) or "no details"
    if not isinstance(err, TextlocError):
        return f"{UNEXPECTED_TITLE}: {message}. The details are in the server log."
    return f"{error_title(err)}: {message}"


def error_md(err: BaseException) -> str:
    """The status-line Markdown of an error."""
    message = md_escape(for_page(str(err).strip())) or "no details"
    if not isinstance(err, TextlocError):
        return f"⚠ **{UNEXPECTED_TITLE}**: {message}. The details are in the server log."
    return f"⚠ **{error_title(err)}**: {message}"


def layers_md(names: Sequence[str], fired: dict[str, list[int]] | None = None) -> str:
    """The patched layers by name (and, with ``fired``, the steps each one ran at), as a Markdown list."""
    if not names:
        return "*(no layers)*"
    lines = []
    for name in names:
        steps = (fired or {}).get(name)
        if fired is None:
            lines.append(f"- {code(name)}")
        elif steps:
            lines.append(f"- {code(name)}: patched at {len(steps)} step(s)")
        else:
            lines.append(f"- {code(name)}: **never patched**")
    return "\n".join(lines)


def safety_md(report: Any) -> str:
    """What safe mode detected and replaced, the protected prompt (what was rendered) and the patched layers."""
    if report is None:
        return ""
    if not report.flagged:
        rendered = ", ".join(code(s.text) for s in report.spans) or "*(no rendered text found)*"
        return f"**Safe mode**: nothing harmful in the rendered text ({rendered}); plain generation."
    lines = ["**Safe mode replaced harmful text** (only the localized layers saw the replacement):", ""]
    for finding, replacement in zip(report.findings, report.replacements, strict=False):
        why = ", ".join([f"score {finding.verdict.score:.2f}", *finding.verdict.reasons])
        shown = code(replacement.replacement) if replacement.replacement else "*(emptied)*"
        lines.append(f"- {code(finding.text)} → {shown} (replacement: {replacement.source} policy; detector "
                     f"{md_escape(report.detector)}: {md_escape(why)})")
    lines += ["", f"**Protected prompt** (what was rendered; Edit starts from it): {code(report.safe_prompt)}", "",
              f"**Status**: {md_escape(report.status)}", "", f"**Patched layers** ({len(report.layers)}):",
              layers_md(report.layers, report.fired)]
    lines += [f"\nNote: {md_escape(note)}" for note in report.notes]
    return "\n".join(lines)


def verdict_md(verdict: Any) -> str:
    """The edit's verdict line: ✓ with every judged part, or ✗ with what missed and what to try."""
    parts = "; ".join(md_escape(p) for p in verdict.parts())
    if not verdict.missed:
        return f"✓ **The edit worked**: {parts}."
    tries = "; or ".join(md_escape(for_page(s)) for s in verdict.suggestions())
    misses = "; ".join(md_escape(m) for m in verdict.misses())
    return f"✗ **The edit missed**: {misses}.\n\n**Try** {tries}."


def edit_status_md(result: Any, verdict: Any, note: str = "") -> str:
    """The status line under Edit: the verdict first (✓ only when nothing missed), then what ran."""
    head = verdict_md(verdict)
    what = (f"{code(result.source_text)} → {code(result.target_text)} in {result.seconds:.2f} s, "
            f"{len(result.plan.layers)} layer(s) patched from step {result.plan.start_step} of "
            f"{result.num_inference_steps}.")
    return "\n\n".join(s for s in (head, what, note) if s)


def metrics_md(result: Any, verdict: Any) -> str:
    """The edit's numbers: OCR of both images, fidelity to the source, the verdict's parts, the layers by name."""
    m = result.metrics
    lines = [
        "| | source | edited |",
        "|---|---|---|",
        f"| prompt text | {code(result.source_text)} | {code(result.target_text)} |",
        f"| OCR reads | {quote(m.get('source_read'))} | {quote(m.get('read'))} |",
        "",
        f"**PSNR** to the source: {fmt(m.get('psnr'), 3)} dB · **SSIM**: {fmt(m.get('ssim'), 3)} · "
        f"**MSE**: {fmt(m.get('mse'), 3)}",
        "",
        f"**OCR vs. new text**: exact {fmt(m.get('exact'))} · CER {fmt(m.get('cer'), 3)} · "
        f"background kept: {fmt(verdict.background_kept)} · text colour kept: {fmt(verdict.text_colour_kept)}",
        "",
        f"**Seconds**: edit {result.seconds:.2f} s (source {result.source_seconds:.2f} s) · "
        f"**start step** {result.plan.start_step} of {result.num_inference_steps}",
        "",
        f"**Layers patched** ({len(result.plan.layers)}):",
        layers_md(result.plan.layers, result.fired),
    ]
    return "\n".join(lines)


def model_md(name: str, pipe: Any, profile: Any, preset_error: str | None) -> str:
    """The header line about the loaded model: name, pipeline, size, what it can render, layer availability."""
    size = getattr(pipe, "native_size", None)
    size_note = f", {size[0]}×{size[1]} px" if size else ""
    limits = profile.render_limits.description
    text = (f"Model: **{md_escape(name)}** ({type(pipe).__name__}{size_note}; renders {md_escape(limits)}). "
            "Put the text to render in double quotes. Edits patch only the localized attention layers, so the "
            "rest of the image stays.")
    if preset_error:
        text += (f"\n\n*Layers*: no localized layers are known for this model ({md_escape(for_page(preset_error))});"
                 " `all` is selected instead.")
    return text
