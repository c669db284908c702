"""``textloc edit``, ``textloc edit-tune`` and ``textloc bench edit``: change rendered text, tune, compare.

Every option is checked before a model loads or a file is written; input errors exit with code 2 (one line,
``textloc.cli.app``). ``textloc edit`` exits with code 3 when the edit missed (``apps.edit.verdict``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from textloc.cli.options import (
    GuidanceOpt,
    HeightOpt,
    LayersOpt,
    ModelOpt,
    OcrOrNoneOpt,
    PromptsOpt,
    StepsOpt,
    WidthOpt,
    bench_group,
    count_option,
    number_option,
    out_dir_option,
    seed_option,
)

OcrOpt = OcrOrNoneOpt  # checked before a model loads (textloc.cli.options)


def _ocr_or_none(ocr: str) -> str | None:
    """Check the OCR backend name before loading a model (fail fast); ``none`` turns OCR off."""
    if ocr == "none":
        return None
    from textloc.eval.ocr import get_ocr_backend

    get_ocr_backend(ocr)
    return ocr


def _check_clip(clip: Path | None) -> str | None:
    from textloc.errors import InputError

    if clip is None:
        return None
    if not clip.exists():
        raise InputError(f"Expected --clip to be a folder or file of CLIP weights, but {clip} does not exist")
    return str(clip)


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _check_steps(steps: int | None) -> None:
    from textloc.errors import InputError

    if steps is not None and steps < 1:
        raise InputError(f"Expected --steps >= 1, but got {steps}")


def _tune_inputs(prompts: str) -> dict[str, Path]:
    """The prompt files whose *content* an edit-tune run depends on (none for a model's own pair source)."""
    from textloc.apps.edit.pairs import glyph_files
    from textloc.data.pairs import BENCHMARKS

    if prompts in BENCHMARKS:
        return {f"prompts/{i:02d}-{f.name}": f for i, f in enumerate(glyph_files(prompts, "validation"))}
    return {"prompts": Path(prompts)} if Path(prompts).is_file() else {}


class _EditProgress:
    """A rich progress display of the source and edit runs (on stderr, only on a terminal)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress

        console = Console(stderr=True)
        self.progress = Progress(console=console, transient=True, disable=not console.is_terminal)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _EditProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, phase: str, step: int, total: int) -> None:
        if phase not in self.tasks:
            label = "source image" if phase == "source" else "edit"
            self.tasks[phase] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[phase], completed=step)


def _edit_image(*, image: Path, to: str, out: Path, model: str, prompt: str | None, old_text: str | None,
                layers: str, start_step: int | None, span: int, steps: int | None, guidance: float | None, ocr: str,
                renoise: int, blend: bool, source_dir: Path | None, allow_miss: bool) -> None:
    """``textloc edit --image``: invert a real image, reconstruct it and patch it (``apps.edit.image_edit``)."""
    from textloc.apps.edit import outputs
    from textloc.apps.edit.edit import check_new_text, quoted_spans, replace_quoted
    from textloc.apps.edit.image_edit import edit_image
    from textloc.apps.edit.invert import image_array
    from textloc.apps.edit.verdict import MISS_EXIT_CODE, verdict_of
    from textloc.core.layers import model_fingerprint
    from textloc.errors import InputError
    from textloc.models.loading import load_pipeline
    from textloc.models.profiles import profile_for
    from textloc.runs.grids import auto_scale, image_grid

    # 1. Check every option before a model loads.
    if source_dir is not None:
        raise InputError("--source-dir reuses a generated source; it does not apply with --image")
    text = check_new_text(None, to)
    if prompt is not None:
        replace_quoted(prompt, text, span)
        check_new_text(None, text, quoted_spans(prompt)[span])
    if old_text is not None:
        check_new_text(None, text, old_text)
    if prompt is None and old_text is None and ocr == "none":
        raise InputError("Give --text (what the image shows) or --prompt when --ocr is none")
    _check_steps(steps)
    outputs.check_out(out)
    picture = image_array(image, None)  # unreadable file: one line, nothing loaded
    reader = _ocr_or_none(ocr)

    # 2. Load, edit, judge, write everything or nothing.
    pipe = load_pipeline(model)
    profile = profile_for(pipe)
    with _EditProgress() as progress:
        result = edit_image(pipe, picture, text, text=old_text, prompt=prompt, span=span, layers=layers,
                            start_step=start_step, num_inference_steps=steps, guidance_scale=guidance,
                            renoise=renoise, blend=blend, ocr=reader, on_step=progress)
    n_steps = result.inversion.num_inference_steps
    verdict = verdict_of(result.metrics, target_text=result.target_text, start_step=result.plan.start_step,
                         num_inference_steps=n_steps, default_layers=layers in ("preset", "auto"),
                         colours_judged=profile.colours is not None)
    row = [result.source_image, result.reconstruction_image, result.edited_image]
    side = image_grid([row], labels=[[f'source "{result.source_text}"', "reconstruction",
                                      f'edited "{result.target_text}"']],
                      scale=auto_scale(row), pad=4, label_height=20)
    config = outputs.edit_config(model=model, model_fingerprint=model_fingerprint(pipe), prompt=result.prompt,
                                 seed=0, steps=n_steps, guidance=result.inversion.guidance_scale, to=text, span=span,
                                 layers=list(result.plan.layers), start_step=result.plan.start_step)
    config.update(image=str(image), renoise=renoise, blend=blend)
    outputs.write_edit_folder(out, {
        "source.png": result.source_image, "reconstruction.png": result.reconstruction_image,
        "edited.png": result.edited_image, "side_by_side.png": side, "plan.json": result.plan.to_dict(),
        "metrics.json": {"model": model, **result.to_dict(), "verdict": verdict.to_dict()},
        outputs.CONFIG_NAME: config,
    })
    m = result.metrics
    typer.echo(f'edit "{result.source_text}" -> "{result.target_text}" of {image}: reconstruction PSNR '
               f'{_fmt(m["reconstruction"]["psnr"])} dB, read {_fmt(m.get("read"))}, exact {_fmt(m.get("exact"))}, '
               f'PSNR vs source {_fmt(m["psnr"])} dB')
    typer.echo(f"wrote {out}/source.png, reconstruction.png, edited.png, side_by_side.png, plan.json, metrics.json")
    typer.echo(verdict.line())
    if verdict.missed:
        typer.echo(verdict.miss_message())
        if not allow_miss:
            raise typer.Exit(code=MISS_EXIT_CODE)


def register(app: typer.Typer) -> None:
    @app.command()
    def edit(
        to: Annotated[str, typer.Option("--to", help="the new text")],
        out: Annotated[Path, typer.Option("--out", "-o", help="output folder (new, empty or an earlier edit's)")],
        model: ModelOpt = "embedded",
        seed: Annotated[int, seed_option("seed of the source image and of the edit")] = 0,
        layers: LayersOpt = "preset",
        start_step: Annotated[int | None, typer.Option("--start-step", help="first patched step")] = None,
        span: Annotated[int, count_option("--span", "which quoted span to replace (0 = first)", low=0, high=1000)] = 0,
        steps: StepsOpt = None,
        guidance: GuidanceOpt = None,
        ocr: OcrOpt = "rapidocr",
        clip: Annotated[Path | None, typer.Option(help="CLIP weights for CLIP-T (default: not computed)")] = None,
        source_dir: Annotated[Path | None, typer.Option(
            "--source-dir", help="reuse the source image of an earlier edit's --out (same prompt, seed, steps, model)"
        )] = None,
        allow_miss: Annotated[bool, typer.Option("--allow-miss", help="exit 0 even when the edit missed")] = False,
        prompt: Annotated[str | None, typer.Option(
            "--prompt", "-p", help='source prompt with the text in quotes (with --image: optional)')] = None,
        image: Annotated[Path | None, typer.Option(
            "--image", help="edit this (real) image: inverted to the model's noise, then patched")] = None,
        old_text: Annotated[str | None, typer.Option(
            "--text", help="with --image: the text the image shows (default: read by OCR)")] = None,
        renoise: Annotated[int, count_option(
            "--renoise", "with --image: fixed-point iterations per inversion step (0 = plain inversion)",
            low=0, high=20)] = 0,
        blend: Annotated[bool, typer.Option(
            "--blend/--no-blend", help="keep the source outside the text mask from the localized layers' attention"
        )] = False,
    ) -> None:
        """Change the text an image renders, keeping the rest (patches only the localized layers).

        With --image IMG the image is inverted (DDIM/Euler, optional ReNoise refinement) and the patch runs from
        its noise; the prompt is --prompt or 'a sign that says "OLD"' with OLD from --text or OCR.

        Prints a verdict: the OCR reading of the new text, whether the background and the text colour were
        kept. Exit codes: 0 the edit worked (or --allow-miss); 2 bad input; 3 the edit missed (text not read
        exactly, or background or text colour not kept; the outputs are still written).
        """
        from rich.console import Console
        from rich.table import Table

        from textloc.apps.edit import outputs
        from textloc.apps.edit.edit import check_new_text, edit_text, quoted_spans, replace_quoted
        from textloc.apps.edit.verdict import MISS_EXIT_CODE, verdict_of
        from textloc.core.engine import default_steps
        from textloc.core.layers import model_fingerprint
        from textloc.models.loading import load_pipeline
        from textloc.models.profiles import profile_for
        from textloc.runs.grids import auto_scale, image_grid

        if image is not None:
            _edit_image(image=image, to=to, out=out, model=model, prompt=prompt, old_text=old_text, layers=layers,
                        start_step=start_step, span=span, steps=steps, guidance=guidance, ocr=ocr, renoise=renoise,
                        blend=blend, source_dir=source_dir, allow_miss=allow_miss)
            return
        if prompt is None:
            from textloc.errors import InputError

            raise InputError("Expected --prompt (the source prompt with the text in quotes) or --image")
        # 1. Check every option before a model loads.
        text = check_new_text(None, to)
        replace_quoted(prompt, text, span)  # no quotes / bad span
        source_text = quoted_spans(prompt)[span]
        check_new_text(None, text, source_text)  # the same text: nothing to edit
        _check_steps(steps)
        outputs.check_out(out)
        saved = outputs.check_source_dir(source_dir) if source_dir is not None else None
        reader = _ocr_or_none(ocr)
        clip_path = _check_clip(clip)

        # 2. Load the model; check what only the model knows (render limits, case, steps, a reused source).
        pipe = load_pipeline(model)
        profile = profile_for(pipe)
        check_new_text(pipe, text, source_text)
        n_steps = profile.check_steps(steps or default_steps(pipe))
        fingerprint = model_fingerprint(pipe)
        source = None
        if saved is not None:
            current = {"model": model, "model_fingerprint": fingerprint, "prompt": prompt, "seed": seed,
                       "steps": n_steps, "guidance": guidance}
            source = outputs.load_source(source_dir, saved, current)

        # 3. Edit (with progress), judge, write everything or nothing.
        with _EditProgress() as progress:
            result = edit_text(pipe, prompt, text, layers=layers, start_step=start_step, seed=seed, span=span,
                               num_inference_steps=n_steps, guidance_scale=guidance, ocr=reader, clip=clip_path,
                               source=source, on_step=progress)
        verdict = verdict_of(result.metrics, target_text=result.target_text, start_step=result.plan.start_step,
                             num_inference_steps=n_steps, default_layers=layers in ("preset", "auto"),
                             colours_judged=profile.colours is not None)
        pair = [result.source_image, result.edited_image]
        side = image_grid([pair], labels=[[f'source "{result.source_text}"', f'edited "{result.target_text}"']],
                          scale=auto_scale(pair), pad=4, label_height=20)
        config = outputs.edit_config(model=model, model_fingerprint=fingerprint, prompt=prompt, seed=seed,
                                     steps=n_steps, guidance=guidance, to=text, span=span,
                                     layers=list(result.plan.layers), start_step=result.plan.start_step)
        if source_dir is not None:
            config["source_dir"] = str(source_dir)
        outputs.write_edit_folder(out, {
            "source.png": result.source_image, "edited.png": result.edited_image, "side_by_side.png": side,
            outputs.SOURCE_ARRAY: result.source_array, "plan.json": result.plan.to_dict(),
            "metrics.json": {"model": model, **result.to_dict(), "verdict": verdict.to_dict()},
            outputs.CONFIG_NAME: config,
        })

        m = result.metrics
        console = Console()
        reused = f" (source reused from {source_dir})" if source_dir is not None else ""
        console.print(f'edit "{result.source_text}" -> "{result.target_text}": {len(result.plan.layers)} layer(s) '
                      f"patched from step {result.plan.start_step} of {result.num_inference_steps}{reused}",
                      markup=False)
        table = Table()
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("source_read", "read", "exact", "f1", "edit_distance", "mse", "ssim", "psnr", "clip_t",
                    "background_kept", "text_colour_kept"):
            table.add_row(key, _fmt(m.get(key)))
        table.add_row("seconds (edit)", f"{result.seconds:.2f}")
        console.print(table)
        # one line each (never wrapped), so a script can grep the verdict
        console.print(f"wrote {out}/source.png, edited.png, side_by_side.png, plan.json, metrics.json", markup=False,
                      soft_wrap=True)
        console.print(verdict.line(), markup=False, soft_wrap=True)
        if verdict.missed:
            console.print(verdict.miss_message(), markup=False, soft_wrap=True)
            if not allow_miss:
                raise typer.Exit(code=MISS_EXIT_CODE)

    @app.command("edit-tune")
    def edit_tune(
        out: Annotated[Path, typer.Option("--out", "-o", help="run folder for tune.json; same settings resume")],
        model: ModelOpt = "embedded",
        layers: LayersOpt = "preset",
        prompts: PromptsOpt = "embedded",
        n_pairs: Annotated[int, count_option("--n-pairs", "validation pairs", high=100_000)] = 64,
        seed: Annotated[int, seed_option("pairing and noise seed")] = 1,
        candidates: Annotated[str, typer.Option(help="comma-separated start steps to try")] = "0,1,2,3,4,6,8",
        steps: StepsOpt = None,
        guidance: GuidanceOpt = None,
        min_preservation: Annotated[float, typer.Option("--min-preservation",
                                                        help="required background preservation rate")] = 0.9,
        ocr: OcrOpt = "rapidocr",
    ) -> None:
        """Choose the edit start step on validation pairs (max OCR exact rate, background kept)."""
        from rich.console import Console

        from textloc.apps.edit.tune import tune_start_step
        from textloc.core.engine import default_steps
        from textloc.core.layers import model_fingerprint
        from textloc.errors import InputError
        from textloc.models.loading import load_pipeline
        from textloc.models.presets import choose_layers
        from textloc.models.profiles import load_pairs, profile_for
        from textloc.runs.folder import RunFolder

        try:
            steps_list = list(dict.fromkeys(int(c) for c in candidates.split(",") if c.strip()))
        except ValueError:
            raise InputError(f"Expected --candidates like 0,1,2,4, but got {candidates!r}") from None
        if ocr == "none":
            raise InputError("Expected an OCR backend for tuning (it scores the rendered text), but got none")
        if n_pairs < 1:
            raise InputError(f"Expected --n-pairs >= 1, but got {n_pairs}")
        if not 0.0 <= min_preservation <= 1.0:
            raise InputError(f"Expected --min-preservation in [0, 1], but got {min_preservation}")
        _check_steps(steps)
        _ocr_or_none(ocr)
        pairs = load_pairs(prompts, n_pairs, seed)
        pipe = load_pipeline(model)
        names = choose_layers(pipe, layers, full_score=True)
        n_steps = profile_for(pipe).check_steps(steps or default_steps(pipe))
        bad = [c for c in steps_list if not 0 <= c < n_steps]
        if bad or not steps_list:
            raise InputError(f"Expected --candidates in 0..{n_steps - 1}, but got {candidates!r}")
        config = {"model": model, "model_fingerprint": model_fingerprint(pipe), "layers": names, "prompts": prompts,
                  "n_pairs": n_pairs, "seed": seed, "num_inference_steps": n_steps, "guidance": guidance, "ocr": ocr}
        inputs = _tune_inputs(prompts)
        console = Console()
        with RunFolder(out, command="edit-tune", config=config, inputs=inputs) as run:
            done = {int(r["start_step"]): r for r in run.records()}
            result = tune_start_step(pipe, pairs, names, steps_list, ocr=ocr, min_preservation=min_preservation,
                                     num_inference_steps=n_steps, guidance_scale=guidance, done=done,
                                     on_row=run.append)
            run.write_json("tune.json", {"model": model, "layers": names, "num_inference_steps": n_steps,
                                         "n_pairs": len(pairs), "seed": seed, **result.to_dict()})
        for row in result.rows:
            console.print(f"  start {row['start_step']:>3}: exact {row['exact']:.3f}  "
                          f"preservation {row['preservation']:.3f}")
        note = "" if result.satisfied else f" (no candidate kept >= {min_preservation:.0%}; most preserving one)"
        console.print(f"best start step: {result.best} of {n_steps}{note}; wrote {out / 'tune.json'}", markup=False)

    bench = bench_group(app)

    @bench.command("edit")
    def bench_edit(
        out: Annotated[Path, out_dir_option("run folder; a run with the same settings resumes")],
        model: ModelOpt = "embedded",
        benchmark: Annotated[str, typer.Option(
            help="embedded | embedded-open (prompts name only the text) | simplebench | creativebench | FILE/folder"
        )] = (
            "embedded"
        ),
        n: Annotated[int | None, count_option("--n", "number of edit pairs (default: all; embedded: 100)")] = None,
        seed: Annotated[int, seed_option("pairing and noise seed")] = 0,
        split: Annotated[str, typer.Option(help="GlyphControl split: test | validation | all")] = "test",
        layers: LayersOpt = "preset",
        start_step: Annotated[int | None, typer.Option("--start-step", help="first patched step")] = None,
        steps: StepsOpt = None,
        guidance: GuidanceOpt = None,
        methods: Annotated[str | None, typer.Option(help="comma-separated: ours,prompt-swap,patch-all,p2p")] = None,
        ocr: OcrOpt = "rapidocr",
        clip: Annotated[Path | None, typer.Option(help="CLIP weights for CLIP-T (default: n/a)")] = None,
        p2p_cross: Annotated[float, number_option("--p2p-cross", "P2P cross-attention replace fraction", 0, 1)] = 0.8,
        p2p_self: Annotated[float, number_option("--p2p-self", "P2P self-attention replace fraction", 0, 1)] = 0.4,
        height: HeightOpt = None,
        width: WidthOpt = None,
    ) -> None:
        """Compare text editing methods: MSE/SSIM/PSNR vs source, OCR F1/exact vs target, CLIP-T, time."""
        from textloc.apps.edit.bench import BenchConfig, parse_methods, run_edit_bench
        from textloc.apps.edit.pairs import bench_inputs, bench_pairs, renderable_pairs
        from textloc.apps.edit.start import default_start_step
        from textloc.apps.p2p import P2PConfig
        from textloc.core.engine import default_steps
        from textloc.errors import InputError
        from textloc.models.loading import load_pipeline
        from textloc.models.presets import choose_layers
        from textloc.models.profiles import profile_for

        if n is not None and n < 1:
            raise InputError(f"Expected --n >= 1, but got {n}")
        _check_steps(steps)
        P2PConfig(cross_replace_steps=p2p_cross, self_replace_steps=p2p_self)  # validates the fractions
        reader = _ocr_or_none(ocr)
        clip_path = _check_clip(clip)
        all_pairs = bench_pairs(benchmark, None, seed, split)  # bad files fail before a model loads
        inputs = bench_inputs(benchmark, split)
        pipe = load_pipeline(model)
        profile = profile_for(pipe)
        profile.check_size(height, width)
        chosen = parse_methods(methods, pipe)
        _, skipped = renderable_pairs(pipe, all_pairs)
        pairs = bench_pairs(benchmark, n, seed, split, pipe=pipe)
        if not pairs:
            raise InputError(f"Expected pairs the model can render, but all {skipped} target texts are unrenderable")
        names = choose_layers(pipe, layers, full_score=True) if {"ours"} & set(chosen) else []
        n_steps = profile.check_steps(steps or default_steps(pipe))
        config = BenchConfig(model=model, benchmark=benchmark, seed=seed, split=split, layers=names,
                             start_step=default_start_step(pipe, n_steps) if start_step is None else start_step,
                             steps=n_steps, guidance=guidance, ocr=reader or "none", clip=clip_path,
                             p2p_cross=p2p_cross, p2p_self=p2p_self, height=height, width=width)
        summary = run_edit_bench(pipe, pairs, config, out, methods=chosen, inputs=inputs)
        if skipped:
            typer.echo(f"left out {skipped} pair(s) of the benchmark whose target text the model cannot render")
        typer.echo((out / "results.md").read_text(), nl=False)  # plain: a Markdown table must not be wrapped
        typer.echo(f"n={summary['n_pairs']} pairs; wrote {out}/results.md, summary.json, results.jsonl, grid.png")
