"""The page: Gradio components and events around ``textloc.ui.actions``; ``build_app`` and ``launch``.

Wiring rules that keep the page honest (issue #18):

* every button first clears the results and messages it will replace (and, for Generate, the previous edit,
  which no longer belongs to the new image), then runs; a failure leaves a message and no stale result;
* messages are plain language (``render.error_md``), never an exception class name;
* model calls -- Generate, Edit and a model switch -- share one queue slot (``concurrency_id="model"``), because
  patch hooks live on the one shared pipeline for a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from textloc.errors import InputError, TextlocError
from textloc.ui import actions, render
from textloc.ui.state import UIState, offered_models, shipped_loaders

log = logging.getLogger(__name__)

INSTALL_HINT = 'The web app needs gradio; install it with: pip install "textloc[ui]"'
#: Seconds an error toast stays (the status line keeps the message until the next action).
TOAST_S = 6
MODEL_QUEUE = {"concurrency_id": "model", "concurrency_limit": 1}


def require_gradio() -> Any:
    """The ``gradio`` module, or a one-line ``InputError`` that says how to install it."""
    try:
        import gradio
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return gradio


def _loaders(model_name: str, models: Mapping[str, Callable[[], Any]] | None) -> dict[str, Callable[[], Any]]:
    """The picker's candidates: ``models`` as given, else the shipped models plus the one already loaded."""
    if models is not None:
        loaders = dict(models)
    else:
        loaders = shipped_loaders()
    if model_name not in loaders:
        from textloc.models.loading import load_pipeline

        loaders = {model_name: lambda: load_pipeline(model_name), **loaders}
    return loaders


def build_app(pipe: Any, *, model_name: str = "embedded", ocr: Any = "rapidocr", prompt: str | None = None,
              steps: int | None = None, guidance: float | None = None,
              models: Mapping[str, Callable[[], Any]] | None = None) -> Any:
    r"""The web app around an already-loaded pipeline.

    Args:
        pipe: a pipeline textloc supports (``textloc.models.loading.load_pipeline``), loaded once by the caller.
        model_name: its name in the model picker and the header.
        ocr: OCR backend name (read through the model's profile), an object with ``read(images)``, or ``None``.
        prompt: the prompt the page starts with (default: the model's first example).
        steps / guidance: initial slider values (default: the pipeline's own defaults).
        models: the picker's models as ``name -> loader()``; default the shipped models (``embedded``,
            ``embedded-mmdit``). Each one but ``pipe``'s is loaded once now and released: only those that load
            are offered, and a selection loads its model then (releasing the current one).

    Returns:
        A ``gr.Blocks``; ``.queue().launch(...)`` serves it (``launch`` does that).
    """
    gr = require_gradio()
    from textloc.apps.edit.edit import quoted_spans

    state = UIState(pipe, model_name, offered_models(_loaders(model_name, models), model_name), ocr)
    model = state.model
    steps = steps or model.steps
    guidance = model.guidance if guidance is None else guidance
    prompt = prompt or model.examples()[0][0]

    def fail(err: BaseException) -> str:
        if not isinstance(err, TextlocError):
            log.exception("textloc ui: unexpected error")
        # a short-lived toast, in case the status line is scrolled away (the status line says it too)
        gr.Warning(render.error_text(err), duration=TOAST_S)
        return render.error_md(err)

    def progress_of(tracker: Any) -> actions.Progress:
        return lambda fraction, desc: tracker(fraction, desc=desc)

    def start_label(n_steps: int) -> str:
        return f"Start step: first patched step (default {state.model.start_step(n_steps)} of {n_steps} steps)"

    def follow_quote(text: str, current: str) -> Any:
        spans = quoted_spans(text or "")
        return gr.update(value=current if current in spans else (spans[0] if spans else ""))

    def on_steps(n_steps: Any) -> Any:
        """A new schedule length resets the start step to that schedule's default (the old one may not fit)."""
        try:
            n = actions.to_int(n_steps, "the number of steps", 1, state.model.profile.max_steps)
        except InputError:
            return gr.update()
        return gr.update(value=state.model.start_step(n), label=start_label(n))

    # -- clearing: what a new action makes stale -----------------------------------------------------------
    edit_cleared = (None, gr.update(value=None, interactive=False), "", None, "")
    generate_cleared = (None, "", None, "")

    def clear_generate() -> tuple:
        return (*generate_cleared, *edit_cleared)

    def clear_edit(gen_status: str) -> tuple:
        return ("" if (gen_status or "").startswith("⚠") else gr.update(), *edit_cleared)

    def on_generate(text: str, seed: Any, n_steps: Any, scale: Any, safe: bool, layers: str,
                    progress: Any = gr.Progress()) -> tuple:  # Gradio injects the progress tracker
        try:
            out = actions.generate(state, text, seed, n_steps, scale, safe, layers, progress_of(progress))
        except Exception as err:  # shown in the page; the server keeps running
            return (None, "", None, fail(err), gr.update(), gr.update())
        return (out.image, out.safety_md, out.files, out.status_md, out.edit_prompt, out.old_text)

    def on_edit(text: str, seed: Any, n_steps: Any, scale: Any, safe: bool, old: str, new: str, layers: str,
                start: Any, progress: Any = gr.Progress()) -> tuple:
        try:
            out = actions.edit(state, text, seed, n_steps, scale, safe, old, new, layers, start,
                               progress_of(progress))
        except Exception as err:  # shown in the page; the server keeps running
            return (*edit_cleared[:-1], fail(err))
        return (out.side_by_side, gr.update(value=out.side_by_side_file, interactive=True), out.metrics_md,
                out.files, out.status_md)

    def on_model(name: str) -> tuple:
        """Load the chosen model (releasing the current one) and reset everything that depended on the old one."""
        try:
            with state.lock:
                loaded = state.select(name)
            status = f"✓ Loaded **{render.md_escape(loaded.name)}**."
        except Exception as err:
            loaded, status = state.model, fail(err)
        return (*model_updates(loaded, settings=True), *generate_cleared[:-1], status, *edit_cleared)

    def on_load() -> tuple:
        """A page opened (or reloaded) after a model switch shows the model the server holds, not the first one."""
        return model_updates(state.model, settings=state.model.name != model_name)

    def model_updates(loaded: Any, settings: bool) -> tuple:
        """What depends on the model: picker, header, Layers box, examples, and (``settings``) the sliders."""
        n = loaded.steps
        keep = gr.update()
        return (
            gr.update(value=loaded.name),
            render.model_md(loaded.name, loaded.pipe, loaded.profile, loaded.preset_error),
            gr.update(choices=loaded.layer_choices(), value=loaded.default_layers()),
            gr.update(value=n, maximum=max(50, n)) if settings else keep,
            gr.update(value=loaded.guidance) if settings else keep,
            gr.update(value=loaded.start_step(n), label=start_label(n)) if settings else keep,
            gr.Dataset(samples=loaded.examples()),
        )

    first_quote = (quoted_spans(prompt) or [""])[0]
    with gr.Blocks(title="textloc", analytics_enabled=False) as demo:
        gr.Markdown("# textloc: edit the text in generated images")
        with gr.Row():
            model_box = gr.Dropdown(choices=state.model_names, value=model.name, label="Model", scale=1,
                                    interactive=len(state.model_names) > 1, elem_id="model",
                                    info="the models that load here; a new choice is loaded on selection")
            model_md = gr.Markdown(render.model_md(model.name, model.pipe, model.profile, model.preset_error),
                                   elem_id="model-info")
        new_box = gr.Textbox(label="New text", placeholder="e.g. DOG", elem_id="new-text", render=False)
        with gr.Row():
            with gr.Column(scale=2):
                prompt_box = gr.Textbox(value=prompt, label="Prompt", lines=2, elem_id="prompt",
                                        placeholder=actions.EXAMPLE_PROMPT)
                with gr.Row(equal_height=True):
                    seed_box = gr.Number(value=0, label="Seed", precision=0, minimum=0, elem_id="seed", scale=3)
                    dice_btn = gr.Button("Random seed", elem_id="random-seed", scale=1, size="sm")
                with gr.Row():
                    steps_box = gr.Slider(1, max(50, steps), value=steps, step=1, label="Steps", elem_id="steps")
                    guidance_box = gr.Slider(0.0, 15.0, value=guidance, step=0.5, label="Guidance scale",
                                             elem_id="guidance")
                safe_box = gr.Checkbox(value=False, label="Safe mode: replace harmful words in the rendered text",
                                       elem_id="safe-mode")
                generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                examples = gr.Examples(examples=model.examples(), inputs=[prompt_box, new_box],
                                       label="Examples: click one to fill in the prompt and the new text",
                                       elem_id="examples")
            with gr.Column(scale=3):
                generated = gr.Image(label="Generated", type="pil", format="png", interactive=False,
                                     buttons=["download", "fullscreen"], elem_id="generated-image")
                gen_status = gr.Markdown(elem_id="generate-status")
                safety_md = gr.Markdown(elem_id="safety-report")
                generated_files = gr.File(label="Downloads (native size)", file_count="multiple",
                                          interactive=False, elem_id="generated-files")

        gr.Markdown("## Edit the text")
        with gr.Row():
            with gr.Column(scale=2):
                edit_prompt_box = gr.Textbox(
                    value=prompt, label="Prompt of the image to edit", lines=2, elem_id="edit-prompt",
                    info="follows the prompt above; after safe mode replaced text, the protected prompt")
                old_box = gr.Textbox(value=first_quote, label="Text to replace (from the prompt's quotes)",
                                     elem_id="old-text")
                new_box.render()
                layers_box = gr.Dropdown(
                    choices=model.layer_choices(), value=model.default_layers(), allow_custom_value=True,
                    label="Layers", elem_id="layers",
                    info="the localized layers by name, every text layer, or a localization summary.json path")
                start_box = gr.Number(value=model.start_step(steps), precision=0, minimum=0, elem_id="start-step",
                                      label=start_label(steps))
                edit_btn = gr.Button("Edit", variant="primary", elem_id="edit-btn")
                edit_status = gr.Markdown(elem_id="edit-status")
            with gr.Column(scale=3):
                # no floating label: it would hide the image's own "source" caption
                side_img = gr.Image(label="Source and edited, side by side", show_label=False, type="pil",
                                    format="png", interactive=False, buttons=["download", "fullscreen"],
                                    elem_id="side-by-side")
                side_download = gr.DownloadButton("Download the side-by-side image (PNG)", interactive=False,
                                                  elem_id="side-by-side-download", size="sm")
                metrics_md = gr.Markdown(elem_id="metrics")
                edit_files = gr.File(label="Downloads: images (native size), side by side, patch plan, metrics",
                                     file_count="multiple", interactive=False, elem_id="edit-files")

        gen_outputs = [generated, safety_md, generated_files, gen_status]
        edit_outputs = [side_img, side_download, metrics_md, edit_files, edit_status]
        steps_box.change(on_steps, steps_box, start_box, queue=False, show_progress="hidden")
        prompt_box.change(lambda text: text, prompt_box, edit_prompt_box, queue=False, show_progress="hidden")
        edit_prompt_box.change(follow_quote, [edit_prompt_box, old_box], old_box, queue=False,
                               show_progress="hidden")
        dice_btn.click(actions.random_seed, None, seed_box, queue=False, show_progress="hidden")
        generate_btn.click(clear_generate, None, gen_outputs + edit_outputs, queue=False, show_progress="hidden") \
            .then(on_generate, [prompt_box, seed_box, steps_box, guidance_box, safe_box, layers_box],
                  gen_outputs + [edit_prompt_box, old_box], **MODEL_QUEUE)
        edit_btn.click(clear_edit, gen_status, [gen_status] + edit_outputs, queue=False, show_progress="hidden") \
            .then(on_edit, [edit_prompt_box, seed_box, steps_box, guidance_box, safe_box, old_box, new_box,
                            layers_box, start_box], edit_outputs, **MODEL_QUEUE)
        model_box.input(on_model, model_box,
                        [model_box, model_md, layers_box, steps_box, guidance_box, start_box, examples.dataset,
                         *gen_outputs, *edit_outputs], **MODEL_QUEUE)
        demo.load(on_load, None, [model_box, model_md, layers_box, steps_box, guidance_box, start_box,
                                  examples.dataset], queue=False, show_progress="hidden")
    demo.textloc_state = state  # for tests and debugging: the loaded model, the output folder, the lock
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
