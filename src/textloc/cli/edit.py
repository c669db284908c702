"""``textloc edit``, ``textloc edit-tune`` and ``textloc bench edit``: change rendered text, tune, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
from textloc.runs.io import atomic_write_json

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


def register(app: typer.Typer) -> None:
    @app.command()
    def edit(
        prompt: Annotated[str, typer.Option("--prompt", "-p", help='source prompt with the text in quotes')],
        to: Annotated[str, typer.Option("--to", help="the new text")],
        out: Annotated[Path, typer.Option("--out", "-o", help="output folder")],
        model: ModelOpt = "embedded",
        seed: Annotated[int, seed_option("seed of the source image and of the edit")] = 0,
        layers: LayersOpt = "preset",
        start_step: Annotated[int | None, typer.Option("--start-step", help="first patched step")] = None,
        span: Annotated[int, count_option("--span", "which quoted span to replace (0 = first)", low=0, high=1000)] = 0,
        steps: StepsOpt = None,
        guidance: GuidanceOpt = None,
        ocr: OcrOpt = "rapidocr",
        clip: Annotated[Path | None, typer.Option(help="CLIP weights for CLIP-T (default: not computed)")] = None,
    ) -> None:
        """Change the text an image renders, keeping the rest (patches only the localized layers)."""
        from rich.console import Console
        from rich.table import Table

        from textloc.apps.edit.core import check_new_text, edit_text, labelled_row, replace_quoted
        from textloc.errors import InputError
        from textloc.models.loading import load_pipeline
        from textloc.runs.io import save_image_atomic

        if not to.strip():
            raise InputError(f"Expected a non-empty --to text, but got {to!r}")
        replace_quoted(prompt, to.strip(), span)  # no quotes / bad span: fail before loading a model
        if out.exists() and not out.is_dir():
            raise InputError(f"Expected --out to be a folder, but {out} is a file")
        reader = _ocr_or_none(ocr)
        clip_path = _check_clip(clip)
        pipe = load_pipeline(model)
        check_new_text(pipe, to)
        result = edit_text(pipe, prompt, to, layers=layers, start_step=start_step, seed=seed, span=span,
                           num_inference_steps=steps, guidance_scale=guidance, ocr=reader, clip=clip_path)
        out.mkdir(parents=True, exist_ok=True)
        save_image_atomic(result.source_image, out / "source.png")
        save_image_atomic(result.edited_image, out / "edited.png")
        side = labelled_row([result.source_image, result.edited_image],
                            [f'source "{result.source_text}"', f'edited "{result.target_text}"'])
        save_image_atomic(side, out / "side_by_side.png")
        atomic_write_json(out / "plan.json", result.plan.to_dict())
        atomic_write_json(out / "metrics.json", {"model": model, **result.to_dict()})

        m = result.metrics
        console = Console()
        console.print(f'edit "{result.source_text}" -> "{result.target_text}": {len(result.plan.layers)} layer(s) '
                      f"patched from step {result.plan.start_step} of {result.num_inference_steps}", markup=False)
        table = Table()
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("source_read", "read", "exact", "f1", "edit_distance", "mse", "ssim", "psnr", "clip_t"):
            table.add_row(key, _fmt(m.get(key)))
        table.add_row("seconds (edit)", f"{result.seconds:.2f}")
        console.print(table)
        console.print(f"wrote {out}/source.png, edited.png, side_by_side.png, plan.json, metrics.json")

    @app.command("edit-tune")
    def edit_tune(
        out: Annotated[Path, typer.Option("--out", "-o", help="folder for tune.json")],
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

        from textloc.apps.edit.core import tune_start_step
        from textloc.core.engine import default_steps
        from textloc.data.pairs import load_pairs
        from textloc.errors import InputError
        from textloc.models.loading import load_pipeline
        from textloc.models.presets import choose_layers

        try:
            steps_list = [int(c) for c in candidates.split(",") if c.strip()]
        except ValueError:
            raise InputError(f"Expected --candidates like 0,1,2,4, but got {candidates!r}") from None
        if ocr == "none":
            raise InputError("Expected an OCR backend for tuning (it scores the rendered text), but got none")
        _ocr_or_none(ocr)
        pairs = load_pairs(prompts, n_pairs, seed)
        pipe = load_pipeline(model)
        names = choose_layers(pipe, layers, full_score=True)
        n_steps = steps or default_steps(pipe)
        bad = [c for c in steps_list if not 0 <= c < n_steps]
        if bad or not steps_list:
            raise InputError(f"Expected --candidates in 0..{n_steps - 1}, but got {candidates!r}")
        result = tune_start_step(pipe, pairs, names, steps_list, ocr=ocr, min_preservation=min_preservation,
                                 num_inference_steps=n_steps, guidance_scale=guidance)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "tune.json", {"model": model, "layers": names, "num_inference_steps": n_steps,
                                        "n_pairs": len(pairs), "seed": seed, **result.to_dict()})
        console = Console()
        for row in result.rows:
            console.print(f"  start {row['start_step']:>3}: exact {row['exact']:.3f}  "
                          f"preservation {row['preservation']:.3f}")
        note = "" if result.satisfied else f" (no candidate kept >= {min_preservation:.0%}; most preserving one)"
        console.print(f"best start step: {result.best} of {n_steps}{note}; wrote {out / 'tune.json'}")

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
        from textloc.apps.edit.core import (
            BenchConfig,
            bench_pairs,
            default_start_step,
            parse_methods,
            renderable_pairs,
            run_edit_bench,
        )
        from textloc.apps.p2p import P2PConfig
        from textloc.core.engine import default_steps
        from textloc.errors import InputError
        from textloc.models.loading import load_pipeline
        from textloc.models.presets import choose_layers

        if n is not None and n < 1:
            raise InputError(f"Expected --n >= 1, but got {n}")
        P2PConfig(cross_replace_steps=p2p_cross, self_replace_steps=p2p_self)  # validates the fractions
        reader = _ocr_or_none(ocr)
        clip_path = _check_clip(clip)
        all_pairs = bench_pairs(benchmark, None, seed, split)  # bad files fail before a model loads
        pipe = load_pipeline(model)
        chosen = parse_methods(methods, pipe)
        _, skipped = renderable_pairs(pipe, all_pairs)
        pairs = bench_pairs(benchmark, n, seed, split, pipe=pipe)
        if not pairs:
            raise InputError(f"Expected pairs the model can render, but all {skipped} target texts are unrenderable")
        names = choose_layers(pipe, layers, full_score=True) if {"ours"} & set(chosen) else []
        n_steps = steps or default_steps(pipe)
        config = BenchConfig(model=model, benchmark=benchmark, seed=seed, split=split, layers=names,
                             start_step=default_start_step(pipe, n_steps) if start_step is None else start_step,
                             steps=n_steps, guidance=guidance, ocr=reader or "none", clip=clip_path,
                             p2p_cross=p2p_cross, p2p_self=p2p_self)
        extra = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
        summary = run_edit_bench(pipe, pairs, config, out, methods=chosen, extra_call_kwargs=extra)
        if skipped:
            typer.echo(f"left out {skipped} pair(s) of the benchmark whose target text the model cannot render")
        typer.echo((out / "results.md").read_text(), nl=False)  # plain: a Markdown table must not be wrapped
        typer.echo(f"n={summary['n_pairs']} pairs; wrote {out}/results.md, summary.json, results.jsonl, grid.png")

