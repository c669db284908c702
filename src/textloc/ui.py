"""A local web app (Gradio) for generating text images, editing their text and generating safely.

``build_app(pipe)`` is the testable core: it takes an already-loaded pipeline (loaded once, at startup, by
``textloc ui``) and returns a ``gr.Blocks``. Every control maps onto the public Python API -- Generate calls the
pipeline (wrapped in :class:`textloc.apps.safety.SafeTextPipeline` in safe mode), Edit calls
:func:`textloc.apps.edit.edit_text` -- so the app adds no behaviour of its own beyond validation and display.

Bad input never reaches the user as a traceback: every ``TextlocError`` (and any unexpected exception) is shown
as a readable message in the page's status line and as a warning toast, and the server keeps running.
Model calls are serialised (one lock, one Gradio concurrency group) because patch hooks are installed on the
shared pipeline for the duration of a run.

Gradio is an optional dependency (``pip install "textloc[ui]"``); importing this module does not need it, only
:func:`build_app` and :func:`launch` do, and they fail with a one-line ``InputError`` saying how to install it.
"""

from __future__ import annotations

import atexit
import inspect
import json
import logging
import math
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from textloc.errors import InputError, TextlocError

log = logging.getLogger(__name__)

#: Shown in the prompt box on startup: the embedded model's prompt format.
EXAMPLE_PROMPT = 'a red sign with white serif letters that says "CAT"'
#: Small renders are upscaled (integer factor, NEAREST) to at least this height so the letters can be seen.
DISPLAY_HEIGHT = 144
INSTALL_HINT = 'The web app needs gradio; install it with: pip install "textloc[ui]"'


def require_gradio() -> Any:
    """The ``gradio`` module, or a one-line ``InputError`` that says how to install it."""
    try:
        import gradio
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return gradio


def display_image(image: Image.Image, height: int = DISPLAY_HEIGHT) -> Image.Image:
    """``image`` upscaled by an integer factor with NEAREST so tiny renders stay crisp; large ones unchanged."""
    if image.height >= height:
        return image
    factor = max(1, math.ceil(height / image.height))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _quote(text: str | None) -> str:
    """OCR output shown in Markdown: quoted, with an explicit marker for "nothing read"."""
    if text is None:
        return "n/a (OCR off)"
    return _code(text) if text else "*(nothing read)*"


def _md_escape(text: str) -> str:
    """Text from the user shown inside Markdown without being interpreted as Markdown."""
    for char in "\\`*_{}[]<>#|":
        text = text.replace(char, "\\" + char)
    return text


def _code(text: str) -> str:
    """``text`` as a Markdown code span (inside one, only backticks are special, so they are replaced)."""
    return f"`{text.replace('`', chr(39))}`" if text else "` `"


def _error_md(err: BaseException) -> str:
    if isinstance(err, TextlocError):
        return f"⚠ **{type(err).__name__}**: {_md_escape(str(err))}"
    return f"⚠ **Unexpected error ({type(err).__name__})**: {_md_escape(str(err))} -- see the server log"


class UIState:
    """What the app keeps between requests: the pipeline, its lock, the OCR reader and the output folder."""

    def __init__(self, pipe: Any, ocr: Any = "rapidocr") -> None:
        self.pipe = pipe
        self.lock = threading.Lock()
        self.out = Path(tempfile.mkdtemp(prefix="textloc-ui-"))
        atexit.register(shutil.rmtree, self.out, True)
        self._ocr_spec = ocr
        self._ocr: Any = None
        self._detector: Any = None
        self.steps, self.guidance = _pipeline_defaults(pipe)
        self.accepts_callback = _accepts(pipe, "callback_on_step_end")
        self.preset_error = _preset_error(pipe)

    @property
    def ocr(self) -> Any:
        """The OCR reader, built once (its engine loads on the first read, not at startup)."""
        if self._ocr is None and self._ocr_spec not in (None, "none"):
            if isinstance(self._ocr_spec, str):
                from textloc.eval.ocr import get_ocr_backend

                try:
                    self._ocr = get_ocr_backend(self._ocr_spec)
                except ValueError as err:
                    raise InputError(str(err)) from None
            else:
                self._ocr = self._ocr_spec
        return self._ocr

    @property
    def detector(self) -> Any:
        """One ``OfflineDetector`` for every safe-mode request (its word lists load once)."""
        if self._detector is None:
            from textloc.apps.safety import OfflineDetector

            self._detector = OfflineDetector()
        return self._detector

    def folder(self) -> Path:
        """A fresh folder for one request's downloads (names stay ``source.png`` etc., never overwritten)."""
        path = self.out / uuid.uuid4().hex[:12]
        path.mkdir(parents=True)
        return path


def _accepts(pipe: Any, name: str) -> bool:
    try:
        return name in inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return False


def _pipeline_defaults(pipe: Any) -> tuple[int, float]:
    """Steps and guidance scale of the pipeline's own ``__call__`` defaults (20 / 3.0 for the embedded model)."""
    try:
        parameters = inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return 20, 3.0
    steps = getattr(parameters.get("num_inference_steps"), "default", 20)
    guidance = getattr(parameters.get("guidance_scale"), "default", 3.0)
    return (steps if isinstance(steps, int) else 20), (float(guidance) if isinstance(guidance, int | float) else 3.0)


def _preset_error(pipe: Any) -> str | None:
    """Why ``layers="preset"`` does not fit ``pipe`` (no published preset, no shipped localization), or None."""
    from textloc.models.presets import choose_layers

    try:
        choose_layers(pipe, "preset")
    except TextlocError as err:
        return str(err)
    return None


def _progress_callback(progress: Any, steps: int, what: str) -> Callable[..., dict]:
    """A ``callback_on_step_end`` that reports each denoising step to Gradio's progress bar.

    A run restarts the step counter; an edit has two or three runs (source, optional recording, edit).
    """
    runs = {"n": 0}

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        if step == 0:
            runs["n"] += 1
        progress((step + 1) / max(steps, 1), desc=f"{what} (run {runs['n']}): step {step + 1}/{steps}")
        return kwargs

    return callback


def _int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    if value is None or value == "":
        raise InputError(f"Expected a whole number for {name}, but got nothing")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"Expected a whole number for {name}, but got {value!r}") from None
    if not number.is_integer():
        raise InputError(f"Expected a whole number for {name}, but got {value}")
    number = int(number)
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise InputError(f"Expected {name} {bounds}, but got {number}")
    return number


def _check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"Expected a prompt, but the prompt is empty; try e.g. {EXAMPLE_PROMPT}")
    return prompt.strip()


def _call_kwargs(state: UIState, seed: Any, steps: Any, guidance: Any, progress: Any, what: str) -> dict[str, Any]:
    """Validated pipeline arguments (seeded generator, steps, guidance, progress callback when supported)."""
    import torch

    seed_value = _int(seed, "the seed", 0, 2**63 - 1)
    steps_value = _int(steps, "the number of steps", 1, 1000)
    try:
        guidance_value = float(guidance)
    except (TypeError, ValueError):
        raise InputError(f"Expected a number for the guidance scale, but got {guidance!r}") from None
    if not math.isfinite(guidance_value) or guidance_value < 0:
        raise InputError(f"Expected a guidance scale >= 0, but got {guidance}")
    kwargs: dict[str, Any] = {"num_inference_steps": steps_value, "guidance_scale": guidance_value,
                              "generator": torch.Generator().manual_seed(seed_value)}
    if state.accepts_callback and progress is not None:
        kwargs["callback_on_step_end"] = _progress_callback(progress, steps_value, what)
    return kwargs


def _text_notes(pipe: Any, prompt: str) -> list[str]:
    """Warnings about the prompt's quoted text (none to edit later, or not renderable by this model)."""
    from textloc.apps.edit import check_new_text, quoted_spans

    spans = quoted_spans(prompt)
    if not spans:
        return ['The prompt has no text in double quotes, so there is nothing to edit; write e.g. '
                '`that says "CAT"`.']
    notes = []
    for text in spans:
        try:
            check_new_text(pipe, text)
        except TextlocError as err:
            notes.append(f"Quoted text may not render: {_md_escape(str(err))}")
    return notes


def _safety_md(report: Any) -> str:
    """What safe mode detected and replaced, as Markdown."""
    if report is None:
        return ""
    if not report.flagged:
        rendered = ", ".join(_code(s.text) for s in report.spans) or "*(no rendered text found)*"
        return f"**Safe mode**: nothing harmful in the rendered text ({rendered}); plain generation."
    lines = ["**Safe mode replaced harmful text** (only the localized layers saw the replacement):", ""]
    for finding, replacement in zip(report.findings, report.replacements, strict=False):
        why = ", ".join([f"score {finding.verdict.score:.2f}", *finding.verdict.reasons])
        lines.append(f"- {_code(finding.text)} → {_code(replacement.replacement)} "
                     f"(replacement: {replacement.source} policy; detector {_md_escape(report.detector)}: "
                     f"{_md_escape(why)})")
    lines += ["", f"Protected prompt: {_code(report.safe_prompt)}", "",
              f"Patched layers: {len(report.layers)} · fired: {'yes' if report.fired else 'no'}"]
    lines += [f"\nNote: {_md_escape(note)}" for note in report.notes]
    return "\n".join(lines)


def _metrics_md(result: Any) -> str:
    """The edit's metrics: OCR of both images, fidelity to the source, time, and what was patched."""
    m = result.metrics
    exact = m.get("exact")
    lines = [
        "| | source | edited |",
        "|---|---|---|",
        f"| prompt text | {_code(result.source_text)} | {_code(result.target_text)} |",
        f"| OCR reads | {_quote(m.get('source_read'))} | {_quote(m.get('read'))} |",
        "",
        f"**PSNR** to the source: {_fmt(m.get('psnr'), 3)} dB · **SSIM**: {_fmt(m.get('ssim'), 3)} · "
        f"**MSE**: {_fmt(m.get('mse'), 3)}",
        "",
        f"**OCR vs. new text**: exact {_fmt(exact)} · CER {_fmt(m.get('cer'), 3)} · "
        f"background kept: {_fmt(m.get('background_kept'))}",
        "",
        f"**Seconds**: edit {result.seconds:.2f} s (source {result.source_seconds:.2f} s) · "
        f"**start step** {result.plan.start_step} of {result.num_inference_steps} · "
        f"**layers patched**: {len(result.plan.layers)}",
    ]
    return "\n".join(lines)


def _save_png(image: Image.Image, path: Path) -> str:
    image.save(path, format="PNG")
    return str(path)


def build_app(pipe: Any, *, model_name: str = "embedded", ocr: Any = "rapidocr", prompt: str = EXAMPLE_PROMPT,
              steps: int | None = None, guidance: float | None = None) -> Any:
    r"""The web app around an already-loaded pipeline.

    Args:
        pipe: a pipeline textloc supports (``textloc.models.loading.load_pipeline``), loaded once by the caller.
        model_name: shown in the page header.
        ocr: OCR backend name, an object with ``read(images)``, or ``None`` (the metrics then say n/a).
        prompt: the prompt the page starts with.
        steps / guidance: initial slider values (default: the pipeline's own defaults).

    Returns:
        A ``gr.Blocks``; ``.queue().launch(...)`` serves it (``launch`` does that).
    """
    gr = require_gradio()
    from textloc.apps.edit import default_start_step, edit_text, quoted_spans, replace_quoted

    state = UIState(pipe, ocr)
    steps = steps or state.steps
    guidance = state.guidance if guidance is None else guidance
    layer_choices = ["all", "preset"] if state.preset_error else ["preset", "all"]
    first_quote = (quoted_spans(prompt) or [""])[0]
    size = getattr(pipe, "native_size", None)
    size_note = f", {size[0]}×{size[1]} px" if size else ""

    def fail(err: BaseException) -> str:
        if not isinstance(err, TextlocError):
            log.exception("textloc ui: unexpected error")
        gr.Warning(f"{type(err).__name__}: {err}")  # a toast, in case the status line is scrolled away
        return _error_md(err)

    def on_prompt(text: str, current: str) -> Any:
        spans = quoted_spans(text or "")
        return gr.update(value=current if current in spans else (spans[0] if spans else ""))

    def on_generate(text: str, seed: Any, n_steps: Any, scale: Any, safe: bool, layers: str,
                    progress: Any = gr.Progress()) -> tuple:  # Gradio injects the progress tracker
        keep = gr.update()
        try:
            text = _check_prompt(text)
            kwargs = _call_kwargs(state, seed, n_steps, scale, progress, "Generating")
            notes = _text_notes(pipe, text)
            folder = state.folder()
            report = None
            with state.lock:
                progress(0, desc="Generating")
                t0 = time.perf_counter()
                if safe:
                    from textloc.apps.safety import SafeTextPipeline

                    safe_pipe = SafeTextPipeline(pipe, layers=(layers or "").strip() or "preset",
                                                 detector=state.detector)
                    output = safe_pipe(text, **kwargs)
                    report = output.report
                else:
                    output = pipe(text, **kwargs)
                seconds = time.perf_counter() - t0
            image = output.images[0]
            if not isinstance(image, Image.Image):
                from textloc.apps.edit import to_pil

                image = to_pil(image)
            files = [_save_png(image, folder / "generated.png")]
            if report is not None:
                (folder / "safety_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
                files.append(str(folder / "safety_report.json"))
            status = f"✓ Generated in {seconds:.2f} s (seed {kwargs['generator'].initial_seed()})."
            if notes:
                status += "\n\n" + "\n\n".join(f"Note: {note}" for note in notes)
            return display_image(image), _safety_md(report), files, status
        except Exception as err:  # shown in the page; the server keeps running
            return keep, keep, keep, fail(err)

    def on_edit(text: str, seed: Any, n_steps: Any, scale: Any, safe: bool, old: str, new: str, layers: str,
                start: Any, progress: Any = gr.Progress()) -> tuple:
        keep = gr.update()
        try:
            text = _check_prompt(text)
            spans = quoted_spans(text)
            if not spans:
                raise InputError('Expected the text to edit in double quotes in the prompt, e.g. that says "CAT"')
            old = (old or "").strip()
            if old not in spans:
                shown = ", ".join(f'"{s}"' for s in spans)
                raise InputError(f"Expected the text to replace to be one of the prompt's quoted texts ({shown}), "
                                 f"but got {old!r}")
            span = spans.index(old)
            kwargs = _call_kwargs(state, seed, n_steps, scale, progress, "Editing")
            start_step = None if start in (None, "") else _int(start, "the start step", 0)  # blank: default
            layer_spec = (layers or "").strip() or "preset"
            if safe:
                from textloc.apps.edit import check_new_text
                from textloc.apps.safety import check_prompt
                from textloc.models.profiles import profile_for

                target = replace_quoted(text, check_new_text(pipe, new or ""), span)
                for which, candidate in (("prompt", text), ("new text", target)):
                    report = check_prompt(candidate, state.detector, profile=profile_for(pipe))
                    if report.flagged:
                        words = ", ".join(f'"{f.text}"' for f in report.findings)
                        raise InputError(f"Safe mode is on and the {which} contains harmful text ({words}); "
                                         "turn safe mode off or choose another text")
            ocr_reader = state.ocr
            seed_value, steps_value = kwargs.pop("generator").initial_seed(), kwargs.pop("num_inference_steps")
            guidance_value = kwargs.pop("guidance_scale")
            with state.lock:
                progress(0, desc="Editing")
                result = edit_text(pipe, text, new or "", layers=layer_spec, start_step=start_step, seed=seed_value,
                                   span=span, num_inference_steps=steps_value, guidance_scale=guidance_value,
                                   ocr=ocr_reader, **kwargs)
            folder = state.folder()
            files = [_save_png(result.source_image, folder / "source.png"),
                     _save_png(result.edited_image, folder / "edited.png")]
            result.plan.to_json(folder / "plan.json")
            (folder / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
            files += [str(folder / "plan.json"), str(folder / "metrics.json")]
            start_note = f", patched from step {result.plan.start_step}"
            status = (f"✓ Edited {_code(result.source_text)} → {_code(result.target_text)} "
                      f"in {result.seconds:.2f} s{start_note}.")
            return (display_image(result.source_image), display_image(result.edited_image), _metrics_md(result),
                    files, status)
        except Exception as err:  # shown in the page; the server keeps running
            return keep, keep, keep, keep, fail(err)

    def start_label(n_steps: int) -> str:
        return f"Start step: first patched step (default {default_start_step(pipe, n_steps)} of {n_steps} steps)"

    def on_steps(n_steps: Any) -> Any:
        """A new schedule length resets the start step to that schedule's default (the old one may not fit)."""
        try:
            n = _int(n_steps, "the number of steps", 1, 1000)
        except InputError:
            return gr.update()
        return gr.update(value=default_start_step(pipe, n), label=start_label(n))

    default_start = default_start_step(pipe, steps)
    preset_note = (f"\n\n*Layers*: `preset` is not available for this model ({_md_escape(state.preset_error)}); "
                   "`all` is selected instead." if state.preset_error else "")
    with gr.Blocks(title="textloc", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# textloc: edit the text in generated images\n"
            f"Model: **{_md_escape(model_name)}** ({type(pipe).__name__}{size_note}). Put the text to render in "
            f"double quotes. Edits patch only the localized attention layers, so the rest of the image stays."
            f"{preset_note}"
        )
        with gr.Row():
            with gr.Column(scale=2):
                prompt_box = gr.Textbox(value=prompt, label="Prompt", lines=2, elem_id="prompt",
                                        placeholder=EXAMPLE_PROMPT)
                with gr.Row():
                    seed_box = gr.Number(value=0, label="Seed", precision=0, minimum=0, elem_id="seed")
                    steps_box = gr.Slider(1, max(50, steps), value=steps, step=1, label="Steps", elem_id="steps")
                    guidance_box = gr.Slider(0.0, 15.0, value=guidance, step=0.5, label="Guidance scale",
                                             elem_id="guidance")
                safe_box = gr.Checkbox(value=False, label="Safe mode: replace harmful words in the rendered text",
                                       elem_id="safe-mode")
                generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
            with gr.Column(scale=3):
                generated = gr.Image(label="Generated", type="pil", format="png", interactive=False,
                                     elem_id="generated-image")
                safety_md = gr.Markdown(elem_id="safety-report")
                generated_files = gr.File(label="Downloads (native size)", file_count="multiple",
                                          interactive=False, elem_id="generated-files")
        gen_status = gr.Markdown(elem_id="generate-status")

        gr.Markdown("## Edit the text")
        with gr.Row():
            with gr.Column(scale=2):
                old_box = gr.Textbox(value=first_quote, label="Text to replace (from the prompt's quotes)",
                                     elem_id="old-text")
                new_box = gr.Textbox(label="New text", placeholder="e.g. DOG", elem_id="new-text")
                layers_box = gr.Dropdown(
                    choices=layer_choices, value=layer_choices[0], allow_custom_value=True, label="Layers",
                    info="preset: the localized layers · all: every text layer · or type a localization "
                         "summary.json path", elem_id="layers")
                start_box = gr.Number(value=default_start, precision=0, minimum=0, elem_id="start-step",
                                      label=start_label(steps))
                edit_btn = gr.Button("Edit", variant="primary", elem_id="edit-btn")
                edit_status = gr.Markdown(elem_id="edit-status")
            with gr.Column(scale=3):
                with gr.Row():
                    source_img = gr.Image(label="Source", type="pil", format="png", interactive=False,
                                          elem_id="source-image")
                    edited_img = gr.Image(label="Edited", type="pil", format="png", interactive=False,
                                          elem_id="edited-image")
                metrics_md = gr.Markdown(elem_id="metrics")
                edit_files = gr.File(label="Downloads: images (native size), patch plan, metrics",
                                     file_count="multiple", interactive=False, elem_id="edit-files")

        steps_box.change(on_steps, steps_box, start_box, queue=False, show_progress="hidden")
        prompt_box.change(on_prompt, [prompt_box, old_box], old_box, queue=False, show_progress="hidden")
        generate_btn.click(on_generate, [prompt_box, seed_box, steps_box, guidance_box, safe_box, layers_box],
                           [generated, safety_md, generated_files, gen_status], concurrency_id="model",
                           concurrency_limit=1)
        edit_btn.click(on_edit, [prompt_box, seed_box, steps_box, guidance_box, safe_box, old_box, new_box,
                                 layers_box, start_box], [source_img, edited_img, metrics_md, edit_files, edit_status],
                       concurrency_id="model", concurrency_limit=1)
    demo.textloc_state = state  # for tests and debugging: the output folder, the lock
    return demo


def launch(pipe: Any, *, model_name: str = "embedded", host: str = "127.0.0.1", port: int | None = 7860,
           ocr: Any = "rapidocr", block: bool = True) -> Any:
    """Serve ``build_app(pipe)`` on ``host:port`` (loopback by default); blocks until Ctrl+C unless ``block=False``.

    Raises:
        InputError: gradio missing, or the port cannot be used.
    """
    require_gradio()
    demo = build_app(pipe, model_name=model_name, ocr=ocr)
    try:
        demo.queue(default_concurrency_limit=1).launch(
            server_name=host, server_port=port, inbrowser=False, show_error=True, quiet=False,
            prevent_thread_lock=not block, ssr_mode=False,
        )
    except OSError as err:
        raise InputError(f"Cannot serve on {host}:{port} ({err}); pass another --port") from None
    return demo
