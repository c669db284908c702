"""``textloc bench finetune``: localized vs all-cross-attention vs random layer sets under one LoRA budget.

Why: "a LoRA on the localized layers spells as well as one on every cross-attention layer, and keeps the rest
of the image" is a claim to measure, not to assume. Each arm trains a fresh copy of the base on the same
synthetic scenario with the same budget; all are tested on held-out strings of that scenario (drawn from the
renderer's reserved class, never seen in training) with the same noise, and scored with the shared rules:
OCR text scores (``eval.scoring.text_scores``), background / text colour read by the model profile's pixel
reader, and precision / recall of tuned vs base samples (``eval.fidelity``).

The scenario and its test cases come from the training recipe of the model whose renderer draws the data
(``ModelProfile.training``), so this module never imports a model package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from textloc.apps.finetune.data import SYNTHETIC, parse_scenario
from textloc.apps.finetune.evaluate import generate_images, score_signs
from textloc.apps.finetune.lora import resolve_layer_spec
from textloc.apps.finetune.train import finetune
from textloc.errors import InputError
from textloc.runs.folder import RunFolder
from textloc.runs.grids import auto_scale, chunk, image_grid
from textloc.runs.tables import markdown_table

COMMAND = "bench finetune"


@dataclass
class BenchVariant:
    """One arm of the benchmark: a layer set to put the LoRA on."""

    name: str
    layers: list[str]
    layer_seed: int = 0


def bench_variants(pipe: Any, localized: str | Sequence[str], random_seeds: Sequence[int]) -> list[BenchVariant]:
    """Localized layers, all text layers, and random layer sets of the localized set's size."""
    chosen = resolve_layer_spec(pipe, localized if isinstance(localized, str) else list(localized))
    variants = [BenchVariant("localized", chosen),
                BenchVariant("all-cross-attn", resolve_layer_spec(pipe, "all-cross-attn"))]
    for seed in random_seeds:
        variants.append(BenchVariant(f"random-{len(chosen)}-seed{seed}",
                                     resolve_layer_spec(pipe, f"random-{len(chosen)}", seed), seed))
    return variants


def _grid(images: Sequence[Image.Image], cols: int) -> Image.Image:
    return image_grid(chunk(list(images), cols), scale=auto_scale(images, 128))


def bench_finetune(
    load_base: Callable[[], Any],
    scenario: str,
    steps: int,
    out_dir: str | Path,
    *,
    layers_localized: str | Sequence[str] = "preset",
    random_seeds: Sequence[int] = (0, 1),
    n_test: int = 50,
    rank: int = 4,
    lr: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    ocr: Any = "rapidocr",
    features: str = "text-free",
    clip_path: str | Path | None = None,
    sample_steps: int = 20,
    guidance_scale: float = 3.0,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Train LoRAs with one budget on the localized, all, and random layer sets; score each against the base.

    Args:
        load_base: returns a *fresh* base pipeline (each arm trains its own copy in place).
        scenario: a scenario name or ``key=value`` scenario of the synthetic data's renderer; training uses
            ``synthetic:SCENARIO`` and the test uses ``n_test`` held-out strings of the same scenario.
        steps, rank, lr, batch_size, seed: the shared training budget.
        layers_localized: the localized layers (``preset`` or a ``summary.json`` path, names, indices).
        random_seeds: one random layer set of the localized size per seed.
        ocr: an OCR backend name (read with the base model's profile reader) or an object with ``read(images)``.
        features: ``fidelity.FEATURES`` kind for precision/recall of tuned vs base samples.

    Returns:
        The results (also written as ``results.json`` and ``results.md``, with sample grids, in ``out_dir``).
    """
    from textloc.eval.fidelity import image_features, precision_recall
    from textloc.models.profiles import profile_for

    scene = parse_scenario(scenario)
    if n_test < 5:
        raise InputError(f"Expected --n-test >= 5 (precision/recall needs k=3 neighbours), but got {n_test}")
    cases = scene.test_cases(n_test)
    prompts = [case.prompt for case in cases]
    generate = dict(seed=seed + 777, steps=sample_steps, guidance_scale=guidance_scale)
    settings = {"scenario": scene.to_dict(), "steps": steps, "rank": rank, "lr": lr, "batch_size": batch_size,
                "seed": seed, "n_test": n_test, "features": features, "device": device or "auto"}
    localized = layers_localized if isinstance(layers_localized, str) else list(layers_localized)
    inputs = {"layers": Path(localized)} if isinstance(localized, str) and Path(localized).is_file() else {}
    config = {**settings, "layers_localized": localized, "random_seeds": list(random_seeds),
              "sample_steps": sample_steps, "guidance_scale": guidance_scale,
              "ocr": ocr if isinstance(ocr, str) else type(ocr).__name__}

    base = load_base()
    profile = profile_for(base)
    reader = profile.reader(ocr) if isinstance(ocr, str) else ocr
    variants = bench_variants(base, layers_localized, random_seeds)
    with RunFolder(out_dir, command=COMMAND, config=config, inputs=inputs) as run:
        out = run.path
        base_images = generate_images(base, prompts, **generate)
        base_features = image_features(base_images, features, clip_path)
        rows: list[dict[str, Any]] = [{"variant": "base", "layers": [], "trainable_params": 0,
                                       "trainable_share": 0.0, **score_signs(cases, base_images, reader, profile)}]
        grids = {"base": base_images[:8]}
        del base
        for variant in tqdm(variants, desc="bench finetune", disable=not progress):
            pipe = load_base()
            result = finetune(pipe, variant.layers, f"{SYNTHETIC}:{scene.name}", out / variant.name, rank=rank,
                              lr=lr, steps=steps, batch_size=batch_size, seed=seed, resume=False, checkpoint_every=0,
                              sample_every=0, device=device, progress=progress, sample_steps=sample_steps)
            images = generate_images(pipe, prompts, **generate)
            fidelity = precision_recall(base_features, image_features(images, features, clip_path), k=3)
            run.save_image(f"{variant.name}/test_samples.png", _grid(images[:16], 4))
            grids[variant.name] = images[:8]
            rows.append({
                "variant": variant.name, "layers": variant.layers, "layer_seed": variant.layer_seed,
                "trainable_params": result.trainable_params, "trainable_share": result.trainable_share,
                **score_signs(cases, images, reader, profile), "precision": fidelity.precision,
                "recall": fidelity.recall, "step_time_s": result.step_time_s,
                "peak_memory_bytes": result.peak_memory_bytes, "activation_bytes": result.activation_bytes,
                "final_loss": result.final_loss,
            })
            del pipe
        payload = {**settings, "rows": rows}
        run.write_json("results.json", payload)
        run.write_text("results.md", bench_markdown(payload))
        run.save_image("comparison.png", _grid([im for images in grids.values() for im in images],
                                               len(grids["base"])))
    return payload


def bench_markdown(payload: dict[str, Any]) -> str:
    """The benchmark as a Markdown table (one row per arm; the base row has no training columns)."""
    scene = payload["scenario"]
    headers = ["variant", "layers", "trainable params", "share", "exact", "CER", "background", "text colour",
               "precision", "recall", "step time (ms)", "peak memory (MB)", "activations (MB)"]
    formats = [None, None, "{:,}", "{:.3%}", "{:.3f}", "{:.3f}", "{:.3f}", "{:.3f}", "{:.3f}", "{:.3f}", "{:.1f}",
               "{:.1f}", "{:.1f}"]

    def scaled(row: dict[str, Any], key: str, factor: float) -> float | None:
        return None if row.get(key) is None else row[key] * factor

    rows = [[row["variant"], len(row["layers"]), row["trainable_params"], row["trainable_share"], row["exact"],
             row["cer"], row.get("background_acc"), row.get("text_colour_acc"), row.get("precision"),
             row.get("recall"), scaled(row, "step_time_s", 1000), scaled(row, "peak_memory_bytes", 2**-20),
             scaled(row, "activation_bytes", 2**-20)] for row in payload["rows"]]
    lines = [
        f"# Localized LoRA benchmark: scenario `{scene['name']}`",
        "",
        f"{scene['description']}. {payload['steps']} steps, rank {payload['rank']}, lr {payload['lr']}, "
        f"batch {payload['batch_size']}, seed {payload['seed']}; {payload['n_test']} held-out test prompts. "
        f"Precision/recall: tuned vs base samples on `{payload['features']}` features (k=3).",
        "",
        markdown_table(headers, rows, formats=formats),
        "Layers per variant:",
        "",
    ]
    lines += [f"- **{row['variant']}**: {', '.join(row['layers'])}" for row in payload["rows"] if row["layers"]]
    lines += ["", "Grid `comparison.png`: one row per variant (base first) over the same first test prompts and "
              "noise. Peak memory: CUDA allocator peak, or on the CPU the sampled RSS increase (noisy); "
              "activations: bytes autograd keeps for backward in one step (exact).", ""]
    return "\n".join(lines)
