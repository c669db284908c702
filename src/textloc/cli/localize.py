"""``textloc localize``: the product's main job, as a command.

Every option is checked before the model loads, and everything the loaded model decides (its step limit, its
sizes, its reader) before the run folder is created: a bad input writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from textloc.cli.options import (
    GuidanceOpt,
    HeightOpt,
    ModelOpt,
    OcrOpt,
    PromptsOpt,
    SeedOpt,
    StepsOpt,
    WidthOpt,
    choice_option,
    count_option,
    number_option,
    out_dir_option,
)

ATTRIBUTES = ("text", "style", "colour", "background")
SEARCHES = ("adaptive", "exhaustive")  # textloc.apps.localize.sweep.SEARCHES (not imported: --help stays fast)
UNTIL = ("chosen", "full")


def parse_layers(value: str) -> list[str | int]:
    """``--heads 4,up_blocks.0.attentions.1.transformer_blocks.0.attn2``: indices or module paths."""
    from textloc.errors import InputError

    refs: list[str | int] = [int(v) if v.strip().isdigit() else v.strip() for v in value.split(",") if v.strip()]
    if not refs:
        raise InputError(f"Expected --heads LAYER[,LAYER...], but got {value!r}")
    return refs


def register(app: typer.Typer) -> None:
    @app.command()
    def localize(
        out: Annotated[Path, out_dir_option("run folder; a compatible run there is resumed")],
        model: ModelOpt = "embedded",
        prompts: PromptsOpt = "embedded",
        attribute: Annotated[str, typer.Option(help="text | style | colour | background")] = "text",
        n_pairs: Annotated[int, count_option("--n-pairs", "validation pairs", high=100_000)] = 32,
        seed: SeedOpt = 0,
        steps: StepsOpt = None,
        guidance: GuidanceOpt = None,
        start_step: Annotated[int, count_option("--start-step", "first patched step", low=0, high=1000)] = 0,
        branches: Annotated[str, typer.Option(help="CFG branches to patch: both | cond")] = "both",
        ocr: OcrOpt = "rapidocr",
        fraction: Annotated[float, number_option("--fraction", "chosen set must reach this fraction of all-layers",
                                                 0.0, 1.0, low_open=True)] = 0.9,
        chunk_size: Annotated[int, count_option("--chunk-size", "pairs per batch (memory cap)", high=4096)] = 8,
        clip: Annotated[Path | None, typer.Option(help="local CLIP folder for CLIP-T (never downloaded)")] = None,
        height: HeightOpt = None,
        width: WidthOpt = None,
        search: Annotated[str, choice_option("--search", "adaptive (racing, the default) | exhaustive (every layer "
                                             "on every pair)", SEARCHES)] = "adaptive",
        delta: Annotated[float, number_option("--delta", "adaptive: probability that any confidence bound misses",
                                              0.0, 1.0, low_open=True, high_open=True)] = 0.05,
        until: Annotated[str, choice_option("--until", "adaptive: curve until the chosen set | the full-score set",
                                            UNTIL)] = "chosen",
        heads: Annotated[str | None, typer.Option(help="localize the attention heads of these layers instead "
                                                       "(LAYER[,LAYER...], indices or module paths)")] = None,
    ) -> None:
        """Find the smallest set of layers whose patching renders the target text (report + summary.json)."""
        from rich.console import Console

        from textloc.apps.localize.heads import HeadLocalizer
        from textloc.apps.localize.sweep import LocalizeConfig, Localizer
        from textloc.cli.options import check_for_model
        from textloc.core.plan import BRANCHES
        from textloc.errors import InputError
        from textloc.models.loading import load_pipeline
        from textloc.models.profiles import load_pairs

        if attribute not in ATTRIBUTES:
            raise InputError(f"Expected --attribute in {', '.join(ATTRIBUTES)}, but got {attribute!r}")
        if branches not in BRANCHES:
            raise InputError(f"Expected --branches in {', '.join(BRANCHES)}, but got {branches!r}")
        if clip is not None and not clip.is_dir():
            raise InputError(f"Expected --clip to be a local CLIP folder, but {clip} is not a folder")
        head_layers = parse_layers(heads) if heads is not None else None
        pairs = load_pairs(prompts, n_pairs, seed, attribute)
        config = LocalizeConfig(model=model, prompts=prompts, attribute=attribute, n_pairs=n_pairs, seed=seed,
                                steps=steps, guidance=guidance, start_step=start_step, branches=branches, ocr=ocr,
                                fraction=fraction, chunk_size=chunk_size, clip=str(clip) if clip else None,
                                search=search, delta=delta, until=until)
        config.rule()  # a bad rule fails before the model loads
        pipe = load_pipeline(model)
        check_for_model(pipe, steps=steps, height=height, width=width)
        extra = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
        console = Console()
        if head_layers is not None:
            s = HeadLocalizer(pipe, pairs, config, out, head_layers, call_kwargs=extra).run().summary
            for layer in s["layers"]:
                ranking = ", ".join(f"{r['head']}:{r['exact']:.2f}" for r in layer["ranking"])
                console.print(f"layer {layer['index']} ({layer['layer']}, exact {layer['layer_score']:.2f}): heads "
                              f"{', '.join(map(str, layer['chosen_heads']))} reach it; ranking {ranking}")
            console.print(f"generations: {s['generations']} (exhaustive: {s['generations_exhaustive']})")
            console.print(f"report: {out / 'report.html'}")
            return
        result = Localizer(pipe, pairs, config, out, call_kwargs=extra).run()  # validates before writing
        s = result.summary
        console.print(f"chosen layers ({len(s['chosen_layers'])}, {s['chosen_share']:.3%} of the denoiser):")
        for name, index in zip(s["chosen_layers"], s["chosen_indices"], strict=True):
            console.print(f"  {index:>3}  {name}")
        curve = ", ".join(f"{p['k']}→{p['exact']:.2f}" for p in s["curve"])
        console.print(f"curve (k best layers → exact-match rate): {curve}")
        console.print(f"generations: {s['generations']} (exhaustive: {s['generations_exhaustive']}); "
                      f"dropped early: {len(s['dropped_after'])} of {s['n_layers']} layers")
        console.print(f"report: {out / 'report.html'}")
