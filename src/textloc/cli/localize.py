"""``textloc localize``: the product's main job, as a command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from textloc.cli.options import GuidanceOpt, ModelOpt, StepsOpt


def register(app: typer.Typer) -> None:
    @app.command()
    def localize(
        out: Annotated[Path, typer.Option("--out", "-o", help="run folder; a compatible run there is resumed")],
        model: ModelOpt = "embedded",
        prompts: Annotated[str, typer.Option(help="embedded | simplebench | creativebench | prompt FILE")] = "embedded",
        attribute: Annotated[str, typer.Option(help="text | style | colour | background")] = "text",
        n_pairs: Annotated[int, typer.Option("--n-pairs", help="validation pairs")] = 32,
        seed: Annotated[int, typer.Option(help="pairing and noise seed")] = 0,
        steps: StepsOpt = None,
        guidance: GuidanceOpt = None,
        start_step: Annotated[int, typer.Option("--start-step", help="first patched step")] = 0,
        branches: Annotated[str, typer.Option(help="CFG branches to patch: both | cond")] = "both",
        ocr: Annotated[str, typer.Option(help="OCR backend: rapidocr | tesseract | easyocr")] = "rapidocr",
        fraction: Annotated[float, typer.Option(help="chosen set must reach this fraction of all-layers")] = 0.9,
        chunk_size: Annotated[int, typer.Option("--chunk-size", help="pairs per batch (memory cap)")] = 8,
        clip: Annotated[Path | None, typer.Option(help="local CLIP folder for CLIP-T (never downloaded)")] = None,
        height: Annotated[int | None, typer.Option(help="image height for latent models")] = None,
        width: Annotated[int | None, typer.Option(help="image width for latent models")] = None,
    ) -> None:
        """Find the smallest set of layers whose patching renders the target text (report + summary.json)."""
        from rich.console import Console

        from textloc.apps.localize.sweep import LocalizeConfig
        from textloc.apps.localize.sweep import localize as run_localize
        from textloc.data.pairs import load_pairs
        from textloc.errors import InputError
        from textloc.eval.ocr import get_ocr_backend
        from textloc.models.loading import load_pipeline

        if not 0 < fraction <= 1:
            raise InputError(f"Expected 0 < --fraction <= 1, but got {fraction}")
        if attribute == "text":
            try:
                get_ocr_backend(ocr)  # fail fast, before loading a model, if the backend is unknown
            except ValueError as err:
                raise InputError(str(err)) from None
        pairs = load_pairs(prompts, n_pairs, seed, attribute)
        config = LocalizeConfig(model=model, prompts=prompts, attribute=attribute, n_pairs=n_pairs, seed=seed,
                                steps=steps, guidance=guidance, start_step=start_step, branches=branches, ocr=ocr,
                                fraction=fraction, chunk_size=chunk_size, clip=str(clip) if clip else None)
        if clip is not None and not clip.exists():
            raise InputError(f"Expected --clip to be a local CLIP folder, but {clip} does not exist")
        pipe = load_pipeline(model)
        extra = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
        result = run_localize(pipe, pairs, config, out=out, **extra)
        s = result.summary
        console = Console()
        console.print(f"chosen layers ({len(s['chosen_layers'])}, {s['chosen_share']:.3%} of the denoiser):")
        for name, index in zip(s["chosen_layers"], s["chosen_indices"], strict=True):
            console.print(f"  {index:>3}  {name}")
        curve = ", ".join(f"{p['k']}→{p['exact']:.2f}" for p in s["curve"])
        console.print(f"curve (k best layers → exact-match rate): {curve}")
        console.print(f"report: {out / 'report.html'}")
