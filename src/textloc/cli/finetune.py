"""``textloc finetune`` and ``textloc bench finetune``: thin shells over ``textloc.apps.finetune``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from textloc.cli.options import (
    ModelOpt,
    OcrOpt,
    bench_group,
    choice_option,
    count_option,
    number_option,
    out_dir_option,
    seed_option,
    steps_option,
)
from textloc.errors import InputError

console = Console(width=None if sys.stdout.isatty() else 200)


def finetune_command(
    out: Annotated[Path, out_dir_option("run folder (LoRA, checkpoint/, log, samples)")],
    model: ModelOpt = "embedded",
    layers: Annotated[str, typer.Option(
        help="preset | auto | all-cross-attn | random-K | PATH/summary.json | names or indices, comma-separated"
    )] = "preset",
    data: Annotated[str, typer.Option(
        help="synthetic | synthetic:SCENARIO (serif, mono, long, letters-QXZJ, or "
        "font=..,letters=..,len=N-M,words=2) | "
        "FOLDER of images + .txt captions | FILE.jsonl"
    )] = "synthetic",
    rank: Annotated[int, count_option("--rank", "LoRA rank", high=1024)] = 4,
    alpha: Annotated[float | None, number_option("--alpha", "LoRA alpha (default: = rank)", 0, 1e6,
                                                 low_open=True)] = None,
    lr: Annotated[float, number_option("--lr", "learning rate (AdamW, constant)", 0, 1, low_open=True)] = 1e-4,
    steps: Annotated[int, count_option("--steps", "total training steps", high=10_000_000)] = 500,
    batch_size: Annotated[int, count_option("--batch-size", "batch size per process", high=4096)] = 8,
    mixed_precision: Annotated[str, choice_option("--mixed-precision", "no | fp16 | bf16",
                                                  ("no", "fp16", "bf16"))] = "no",
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume", help="continue from OUT/checkpoint/ (a pickle checkpoint.pt is never loaded)"
    )] = True,
    seed: Annotated[int, seed_option("seed (adapter init, data, noise, random-K layers)")] = 0,
    target: Annotated[str, choice_option("--target", "attn (all attention projections) | text_kv (text K/V only)",
                                         ("attn", "text_kv"))] = "attn",
    checkpoint_every: Annotated[int, count_option("--checkpoint-every", "checkpoint every N steps (0: at the end only)",
                                                  low=0, high=10_000_000)] = 100,
    sample_every: Annotated[int, count_option("--sample-every", "sample grid every N steps (0: never)", low=0,
                                              high=10_000_000)] = 250,
    caption_dropout: Annotated[float, number_option("--caption-dropout", "fraction of empty prompts (for guidance)",
                                                    0, 1, high_open=True)] = 0.1,
    device: Annotated[str | None, typer.Option(help="cpu to force the CPU (default: accelerate's choice)")] = None,
) -> None:
    """Train a LoRA on only the chosen text layers; writes pytorch_lora_weights.safetensors (diffusers format)."""
    from textloc.apps.finetune import finetune
    from textloc.models.loading import load_pipeline

    pipe = load_pipeline(model)
    result = finetune(pipe, layers, data, out, rank=rank, alpha=alpha, lr=lr, steps=steps, batch_size=batch_size,
                      mixed_precision=mixed_precision, resume=resume, seed=seed, checkpoint_every=checkpoint_every,
                      sample_every=sample_every, target=target, caption_dropout=caption_dropout, device=device)
    table = Table(title=f"finetune {model} -> {out}")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("layers", f"{len(result.layers)}: " + ", ".join(result.layers)),
        ("adapted modules", str(len(result.target_modules))),
        ("trainable params", f"{result.trainable_params:,} ({result.trainable_share:.3%} of the denoiser)"),
        ("steps", f"{result.steps} (resumed from {result.resumed_from})" if result.resumed_from else str(result.steps)),
        ("final loss", "–" if result.final_loss is None else f"{result.final_loss:.4f}"),
        ("step time", "–" if result.step_time_s is None else f"{result.step_time_s * 1000:.1f} ms"),
        ("data", _data_line(result.data)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    console.print(f"wrote {result.lora_path}; load it with pipe.load_lora_weights({str(out)!r})")


def _data_line(report: dict) -> str:
    usable = "rendered on the fly" if report["usable"] < 0 else f"{report['usable']} usable"
    skipped = []
    for key, label in (("corrupt_images", "corrupt"), ("missing_captions", "without caption"),
                       ("bad_records", "bad records")):
        if report[key]:
            skipped.append(f"{len(report[key])} {label}")
    return f"{report['source']}: {usable}" + (f", skipped {', '.join(skipped)}" if skipped else "")


def bench_finetune_command(
    out: Annotated[Path, out_dir_option("folder for results.json, results.md and grids")],
    model: ModelOpt = "embedded",
    scenario: Annotated[str, typer.Option(
        help="serif | mono | long | letters-QXZJ | all | font=..,letters=..,len=N-M,words=1|2"
    )] = "serif",
    steps: Annotated[int, count_option("--steps", "training steps per arm (same budget for all)",
                                       high=10_000_000)] = 300,
    layers_localized: Annotated[str, typer.Option(
        help="the localized layers: preset | PATH/summary.json | names or indices"
    )] = "preset",
    random_seeds: Annotated[str, typer.Option(help="seeds of the random layer sets, comma-separated")] = "0,1",
    n_test: Annotated[int, count_option("--n-test", "held-out test prompts", high=100_000)] = 50,
    rank: Annotated[int, count_option("--rank", "LoRA rank", high=1024)] = 4,
    lr: Annotated[float, number_option("--lr", "learning rate", 0, 1, low_open=True)] = 1e-4,
    batch_size: Annotated[int, count_option("--batch-size", "batch size", high=4096)] = 8,
    seed: Annotated[int, seed_option("training and sampling seed")] = 0,
    ocr: OcrOpt = "rapidocr",
    features: Annotated[str, typer.Option(help="precision/recall features: text-free | colour | pixel | clip")] = (
        "text-free"
    ),
    clip: Annotated[Path | None, typer.Option(help="local CLIP folder (for --features clip)")] = None,
    sample_steps: Annotated[int, steps_option("denoising steps of the test samples", flag="--sample-steps")] = 20,
    device: Annotated[str | None, typer.Option(help="cpu to force the CPU (default: accelerate's choice)")] = None,
) -> None:
    """Localized vs all-cross-attention vs random-layer LoRA under one budget (embedded model scenarios)."""
    from textloc.apps.finetune import bench_finetune
    from textloc.models.loading import load_pipeline

    try:
        seeds = [int(s) for s in random_seeds.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"Expected --random-seeds as comma-separated integers, but got {random_seeds!r}") from None
    load_pipeline(model)  # fail fast (missing weights …) before any training
    payload = bench_finetune(lambda: load_pipeline(model), scenario, steps, out, layers_localized=layers_localized,
                             random_seeds=seeds, n_test=n_test, rank=rank, lr=lr, batch_size=batch_size, seed=seed,
                             ocr=ocr, features=features, clip_path=clip, sample_steps=sample_steps, device=device)
    table = Table(title=f"bench finetune: {payload['scenario']['name']}, {steps} steps")
    for column in ("variant", "share", "exact", "CER", "bg", "text colour", "precision", "recall", "step ms"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in payload["rows"]:
        def fmt(key: str, scale: float = 1.0, spec: str = ".3f", row: dict = row) -> str:
            return "–" if row.get(key) is None else format(row[key] * scale, spec)

        table.add_row(row["variant"], f"{row['trainable_share']:.3%}", fmt("exact"), fmt("cer"),
                      fmt("background_acc"), fmt("text_colour_acc"), fmt("precision"), fmt("recall"),
                      fmt("step_time_s", 1000, ".1f"))
    console.print(table)
    console.print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'comparison.png'}")


def register(app: typer.Typer) -> None:
    """Add ``finetune`` and ``bench finetune`` to ``app``."""
    app.command("finetune")(finetune_command)
    bench_group(app).command("finetune")(bench_finetune_command)
